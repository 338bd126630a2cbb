"""OpenAI's presence and frequency penalties and logit_bias: the sampling op against the formula,
the engine's greedy tokens against a whole forward per token with the penalties applied by hand
(eager and compiled, beside requests that ask none), and the server's fields through the openai
client, malformed ones refused."""
from collections import Counter

import httpx
import pytest
import torch
from live_server import LiveServer
from test_engine import tiny_model

from wikigpt.decoding.engine import Engine, Request
from wikigpt.decoding.load import load_model
from wikigpt.decoding.sampling import SamplingParams, knobs_row, sample_tokens


def penalised_greedy(model, prompt: list[int], n: int, params: SamplingParams) -> list[int]:
    """The greedy reply under OpenAI's definition, one whole forward per token: logit - frequency x
    count - presence x (count > 0), counted over the reply only, plus the bias."""
    reply = []
    for _ in range(n):
        with torch.no_grad():
            logits, _ = model(torch.tensor([prompt + reply]))
        row = logits[0, -1, :model.cfg.vocab_size].float()
        for token, count in Counter(reply).items():
            row[token] -= params.frequency_penalty * count + params.presence_penalty
        for token, bias in (params.logit_bias or {}).items():
            row[token] += bias
        reply.append(row.argmax().item())
    return reply


def test_the_penalties_lower_a_logit_by_its_count_and_once_for_being_there():
    logits = torch.zeros(4, 16)
    logits[:, 7], logits[:, 9] = 5.0, 4.0
    counts = torch.zeros(4, 16)
    counts[:, 7] = 3  # id 7 is in each reply three times
    rows = [SamplingParams(temperature=0, repetition_penalty=1.0, frequency_penalty=0.2),  # 5 - 0.6 > 4
            SamplingParams(temperature=0, repetition_penalty=1.0, frequency_penalty=0.4),  # 5 - 1.2 < 4
            SamplingParams(temperature=0, repetition_penalty=1.0, presence_penalty=1.1),  # 5 - 1.1 < 4
            SamplingParams(temperature=0, repetition_penalty=1.0, frequency_penalty=0.2, presence_penalty=0.5)]  # 3.9
    knobs = torch.tensor([knobs_row(p) for p in rows])
    picks = sample_tokens(logits, 16, torch.zeros(4, 16, dtype=torch.bool), knobs, None, counts=counts)
    assert picks.tolist() == [7, 9, 9, 9]
    lifted = knobs.clone()
    lifted[:, 4:] = -lifted[:, 4:]  # negative penalties raise what is there already
    logits[:, 7] = 3.5  # 3.5 + 0.6 > 4
    assert sample_tokens(logits, 16, torch.zeros(4, 16, dtype=torch.bool), lifted, None, counts=counts).tolist() \
        == [7, 7, 7, 7]
    assert sample_tokens(logits, 16, torch.zeros(4, 16, dtype=torch.bool), knobs, None).tolist() == [9] * 4  # none


class Always:
    """A CopySource that puts all its mass on one id."""

    def __init__(self, token: int):
        self.token = token

    def prior(self, reply):
        return {self.token: 1.0}


@pytest.mark.parametrize("compile", [False, True])
def test_each_request_gets_its_own_penalties_and_bias_beside_requests_asking_none(compile):
    """Greedy replies equal to a whole forward per token with the penalties applied by hand, in one
    batch with a request that asks none (its reply is the plain greedy one); a slot's counts start
    again for its next request; a -100 bias bans an id even from a copy that would always pick it."""
    model = tiny_model()
    plain = SamplingParams(temperature=0, repetition_penalty=1.0)
    asks = [SamplingParams(temperature=0, repetition_penalty=1.0, frequency_penalty=1.5, presence_penalty=0.5),
            plain,
            SamplingParams(temperature=0, repetition_penalty=1.0, frequency_penalty=-0.8, presence_penalty=-0.4),
            SamplingParams(temperature=0, repetition_penalty=1.0, logit_bias={5: 100}, frequency_penalty=0.3)]  # an int
    prompts = [[3, 14, 15, 92], [6, 5, 35], [8, 9, 7, 9, 3], [2, 7, 1]]
    engine = Engine(model, n_slots=4, compile=compile)
    assert engine.compiled == compile

    def run(params_list):
        reqs = [Request(p, 12, params) for p, params in zip(prompts, params_list)]
        for r in reqs:
            engine.add(r)
        while engine.active:
            engine.step()
        return [r.tokens for r in reqs]

    got = run(asks)
    for prompt, params, tokens in zip(prompts, asks, got):
        assert tokens == penalised_greedy(model, prompt, 12, params)
    assert got[1] == list(model.generate(prompts[1], 12, temperature=0))
    assert got[0] != list(model.generate(prompts[0], 12, temperature=0))  # the penalties changed something
    assert max(Counter(got[2]).values()) > max(Counter(got[0]).values())  # negative ones repeat more
    assert got[3] == [5] * 12  # a +100 bias: the first token (from the prompt's logits) too
    assert run(asks) == got  # the same slots again: counts from zero, not the last request's
    assert engine.compiled == compile  # (a compiled step that fell back to eager would say so)

    copied = Request([3, 14, 15], 6, SamplingParams(temperature=0, copy=0.9), copy_from=Always(11))
    banned = Request([3, 14, 15], 6, SamplingParams(temperature=0, copy=0.9, logit_bias={11: -100.0}),
                     copy_from=Always(11))
    for r in (copied, banned):
        engine.add(r)
    while engine.active:
        engine.step()
    assert copied.tokens == [11] * 6 and 11 not in banned.tokens


def test_a_reply_before_the_prompts_end_counts_and_sample_py_passes_it_on_at_each_window(monkeypatch):
    """sample.py goes on past the context in windows, each a new request whose prompt holds the reply
    so far: the penalties count that reply (not only this window's part), as the formula does."""
    import sample

    model = tiny_model()
    params = SamplingParams(temperature=0, repetition_penalty=1.0, frequency_penalty=0.9, presence_penalty=0.3)
    prompt = [3, 14, 15, 9]
    earlier = list(model.generate(prompt, 8, temperature=0))  # a reply begun before: what the model likes here
    req = Request(prompt + earlier, 10, params, reply_before=earlier)
    engine = Engine(model, n_slots=1)
    engine.add(req)
    while engine.active:
        engine.step()

    def reference(counted: list[int]) -> list[int]:  # the formula, counting `counted` and the new tokens
        new = []
        for _ in range(10):
            with torch.no_grad():
                row = model(torch.tensor([prompt + earlier + new]))[0][0, -1, :300].float()
            for token, count in Counter(counted + new).items():
                row[token] -= params.frequency_penalty * count + params.presence_penalty
            new.append(row.argmax().item())
        return new
    assert req.tokens == reference(earlier) != reference([])  # (the earlier tokens change the reply)
    calls = []
    real = sample.generate
    monkeypatch.setattr(sample, "generate", lambda *a, **k: calls.append(list(k["reply_before"])) or real(*a, **k))
    out = list(sample.continuation(model, [1, 2, 3], 150, params))  # 150 tokens through a 64-token context
    assert len(calls) >= 3 and calls[0] == [] and all(c == out[:len(c)] and c for c in calls[1:])


def test_the_engine_refuses_a_bias_on_an_id_outside_the_vocabulary():
    engine = Engine(tiny_model(), n_slots=1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.add(Request([1, 2], 3, SamplingParams(logit_bias={300: 1.0})))
    assert SamplingParams(logit_bias={1: 101.0}).problems() == ["logit_bias[1] must be between -100 and 100, got 101.0"]
    assert SamplingParams(frequency_penalty=2.5).problems() == ["frequency_penalty must be between -2.0 and 2.0, got 2.5"]


@pytest.fixture(scope="module")
def served(tiny_ckpt):
    import openai
    s = LiveServer(tiny_ckpt)
    yield s.url, openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    s.stop()


def test_the_servers_penalties_and_bias_are_openais(served, tiny_ckpt):
    """Through the openai client: the greedy reply with penalties and a bias is the one the formula
    gives (whole forward per token), on /v1/completions, streamed or not."""
    _, client = served
    model, tok, _ = load_model(tiny_ckpt, "cpu")
    prompt = [tok.doc_sep] + tok.encode("Article 3 is about")
    banned = list(model.generate(prompt, 1, temperature=0))[0]  # the greedy first token, ruled out
    params = SamplingParams(temperature=0, repetition_penalty=1.0, frequency_penalty=1.2, presence_penalty=0.4,
                            logit_bias={banned: -100.0})
    expected = tok.decode(penalised_greedy(model, prompt, 10, params))
    for stream in (False, True):
        r = client.completions.create(model="t", prompt="Article 3 is about", max_tokens=10, temperature=0,
                                      frequency_penalty=1.2, presence_penalty=0.4, logit_bias={str(banned): -100},
                                      extra_body={"repetition_penalty": 1.0}, stream=stream)
        text = "".join(c.choices[0].text for c in r) if stream else r.choices[0].text
        assert text == expected
    assert not expected.startswith(tok.decode([banned]))


def test_tokenize_gives_the_ids_that_logit_bias_takes(served, tiny_ckpt):
    """vLLM's /tokenize and /detokenize: a text's ids, which a +100 bias then forces, and back."""
    url, client = served
    _, tok, _ = load_model(tiny_ckpt, "cpu")
    r = httpx.post(url + "/tokenize", json={"prompt": "Article 3"}, timeout=30).json()
    assert r == {"count": len(tok.encode("Article 3")), "max_model_len": 32, "tokens": tok.encode("Article 3")}
    assert httpx.post(url + "/detokenize", json={"tokens": r["tokens"]}, timeout=30).json() == {"prompt": "Article 3"}
    assert httpx.post(url + "/detokenize", json={"tokens": []}, timeout=30).json() == {"prompt": ""}  # (vLLM's too)
    forced = r["tokens"][-1]
    reply = client.completions.create(model="t", prompt="hi", max_tokens=3, temperature=0,
                                      logit_bias={str(forced): 100}).choices[0].text
    assert reply == tok.decode([forced] * 3)


@pytest.mark.parametrize("path,body,message", [
    ("/tokenize", {"prompt": 5}, "'prompt' must be a string"),
    ("/tokenize", {"prompt": "x" * (16 * 32 + 1)}, "characters (limit 512"),  # 16 a token of its 32
    ("/detokenize", {"tokens": "hi"}, "tokens must be a list of token ids, got 'hi'"),
    ("/detokenize", {"tokens": [1, -1]}, "tokens holds -1"),
    ("/detokenize", {"tokens": [1] * 33}, "tokens is 33 tokens, more than the model's context leaves room for (32)"),
])
def test_malformed_tokenize_requests_get_a_400(served, path, body, message):
    url, _ = served
    r = httpx.post(url + path, json=body, timeout=30)
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


BAD = [
    ({"logit_bias": "junk"}, "'logit_bias' must be an object of token ids to biases"),
    ({"logit_bias": {"hello": 5}}, "'logit_bias' keys must be token ids of this model's tokenizer"),
    ({"logit_bias": {"99999999": 5}}, "'logit_bias' keys must be token ids"),
    ({"logit_bias": {"-3": 5}}, "'logit_bias' keys must be token ids"),
    ({"logit_bias": {"5": "x"}}, "'logit_bias' values must be numbers"),
    ({"logit_bias": {"5": 1000}}, "'logit_bias' values must be between -100 and 100, got 1000 for 5"),
    ({"logit_bias": {str(i): 1 for i in range(301)}}, "may bias at most 300 token ids"),
    ({"logit_bias": {"5": 10**400}}, "'logit_bias' values must be between -100 and 100, got 1000"),  # float() overflowed: a 500
    ({"logit_bias": {"9" * 5000: 1}}, "'logit_bias' keys must be token ids"),  # int() refused 4,300+ digits: a 500
    ({"presence_penalty": 3}, "'presence_penalty' must be between -2.0 and 2.0"),
    ({"frequency_penalty": "x"}, "'frequency_penalty' must be a number"),
]


@pytest.mark.parametrize("fields,message", BAD, ids=[m for _, m in BAD])
def test_malformed_penalty_fields_get_a_400_and_the_server_keeps_serving(served, fields, message):
    url, client = served
    for path, body in (("/v1/completions", {"prompt": "hi"}), ("/v1/chat/completions",
                                                                {"messages": [{"role": "user", "content": "hi"}]})):
        r = httpx.post(url + path, json={**body, "max_tokens": 2, **fields}, timeout=30)
        assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
        assert r.json()["error"]["param"] == next(iter(fields))
    assert client.completions.create(model="t", prompt="hi", max_tokens=2).usage.completion_tokens >= 1
