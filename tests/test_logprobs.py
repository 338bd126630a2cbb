"""Token log-probabilities: the engine's (Request.logprobs) against a whole forward pass of the
model, and the server's `logprobs` fields through the openai client (chat: logprobs +
top_logprobs; /v1/completions: logprobs N), streamed or not, cut by a stop string, refused when
malformed."""
import random

import httpx
import pytest
import torch
from live_server import LiveServer
from test_engine import tiny_model

from wikigpt.decoding.engine import Engine, Request
from wikigpt.decoding.load import load_model
from wikigpt.decoding.sampling import SamplingParams

# a token's logprob from the engine's one-row steps vs a whole forward over prompt + reply:
# float32 sums in another order (measured 5e-7 on the tiny model)
LOGPROB_TOLERANCE = 1e-4


def forward_logprobs(model, prompt: list[int], reply: list[int]) -> torch.Tensor:
    """(len(reply), vocab): the model's log-probabilities of the next token at each reply position."""
    ids = torch.tensor([prompt + reply])
    with torch.no_grad():
        logits, _ = model(ids, targets=ids)  # with targets: the logits of every position
    return torch.log_softmax(logits[0, len(prompt) - 1:-1, :model.cfg.vocab_size].float(), dim=-1)


@pytest.mark.parametrize("compile", [False, True])
def test_each_tokens_logprob_is_the_models_own_whatever_the_sampling_and_the_batch(compile):
    """Sampled with a temperature and a repetition penalty beside requests that ask for none:
    each token's logprob and its alternatives are the model's distribution at that position
    (before the sampling options reshaped it), a compiled step's as an eager one's."""
    model, rng = tiny_model(), random.Random(0)
    engine = Engine(model, n_slots=4, compile=compile)
    reqs = [Request([rng.randrange(300) for _ in range(5 + i)], 12, SamplingParams(temperature=1.0,
                    repetition_penalty=1.3), seed=i, logprobs=None if i == 1 else 3 * i) for i in range(4)]
    for r in reqs:
        engine.add(r)
    while engine.active:
        engine.step()
    assert reqs[1].token_logprobs == []  # asked for none
    for r in reqs[:1] + reqs[2:]:
        assert len(r.token_logprobs) == len(r.tokens) == 12
        expected = forward_logprobs(model, r.prompt, r.tokens)
        for token, (logprob, top), row in zip(r.tokens, r.token_logprobs, expected):
            assert abs(logprob - row[token].item()) < LOGPROB_TOLERANCE
            assert len(top) == r.logprobs
            values = [v for _, v in top]
            assert values == sorted(values, reverse=True)
            torch.testing.assert_close(torch.tensor(values), row.topk(r.logprobs).values, rtol=0,
                                       atol=LOGPROB_TOLERANCE)
            for i, v in top:  # each alternative is that id's own logprob
                assert abs(v - row[i].item()) < LOGPROB_TOLERANCE


def test_the_prompts_logprobs_are_the_models_chunked_shared_or_after_a_reused_start():
    """echo's scores: each prompt token after the first, within 1e-4 of a whole forward's, whether the
    prompt is prefilled in chunks between another stream's steps, is a prompt another slot holds
    (the n choices: each prefills it), or starts with what a slot holds (a chat's next turn)."""
    model, rng = tiny_model(), random.Random(1)
    prompt = [rng.randrange(300) for _ in range(20)]
    engine = Engine(model, n_slots=4)
    other = Request([5, 6, 7], 30, SamplingParams(temperature=0))
    engine.add(other)  # decoding while the prompts are prefilled in chunks of 7
    asked = [Request(prompt, 4, SamplingParams(temperature=0), logprobs=2, prompt_logprobs=True) for _ in range(2)]
    later = Request(prompt + [9, 10], 2, SamplingParams(temperature=0), logprobs=0, prompt_logprobs=True)
    for r in asked:
        engine.join(r)
    while any(not r.finished for r in asked):
        engine.fill(7)
        engine.step()
    engine.add(later)  # its start is in the slots: prefilled whole all the same
    while engine.active:
        engine.step()
    for r in asked + [later]:
        expected = forward_logprobs(model, r.prompt[:1], r.prompt[1:])
        assert len(r.prompt_token_logprobs) == len(r.prompt) - 1
        for token, (logprob, top), row in zip(r.prompt[1:], r.prompt_token_logprobs, expected):
            assert abs(logprob - row[token].item()) < LOGPROB_TOLERANCE and len(top) == r.logprobs
            assert all(abs(v - row[i].item()) < LOGPROB_TOLERANCE for i, v in top)
    assert other.prompt_token_logprobs == [] and asked[0].tokens == asked[1].tokens


def test_the_engine_refuses_more_alternatives_than_it_keeps():
    engine = Engine(tiny_model(), n_slots=1)
    with pytest.raises(ValueError, match="0..20"):
        engine.add(Request([1, 2], 3, logprobs=21))


@pytest.fixture(scope="module")
def served(tiny_ckpt):
    import openai
    s = LiveServer(tiny_ckpt)
    yield s.url, openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    s.stop()


GREEDY = {"temperature": 0, "extra_body": {"repetition_penalty": 1.0}}  # the model's argmax, nothing reshaped


def test_completion_logprobs_are_the_models_and_each_greedy_token_its_top_one(served, tiny_ckpt):
    _, client = served
    model, tok, _ = load_model(tiny_ckpt, "cpu")
    prompt = [tok.doc_sep] + tok.encode("Article 3 is about")
    reply = list(model.generate(prompt, 8, temperature=0))  # greedy: the tokens the server picks
    r = client.completions.create(model="t", prompt="Article 3 is about", max_tokens=8, logprobs=3, **GREEDY)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == tok.decode(reply) == "".join(lp.tokens)
    assert lp.text_offset == [len(tok.decode(reply[:i])) for i in range(len(reply))]
    expected = forward_logprobs(model, prompt, reply)
    for token, logprob, top, row in zip(reply, lp.token_logprobs, lp.top_logprobs, expected):
        assert abs(logprob - row[token].item()) < LOGPROB_TOLERANCE
        assert len(top) == 3 and max(top.values()) == logprob  # greedy: the chosen one is the likeliest


def test_echo_gives_the_prompt_and_its_tokens_logprobs_before_the_reply(served, tiny_ckpt):
    """What a harness scoring a continuation reads (lm-evaluation-harness's local-completions):
    `echo` with `logprobs`, the prompt's tokens scored by the model, streamed as whole, n=2."""
    _, client = served
    model, tok, _ = load_model(tiny_ckpt, "cpu")
    text = "Article 7 is about topic"
    prompt = [tok.doc_sep] + tok.encode(text)
    expected = forward_logprobs(model, prompt[:1], prompt[1:])
    ask = dict(model="t", prompt=text, max_tokens=3, logprobs=1, echo=True, n=2, **GREEDY)
    whole = client.completions.create(**ask)
    streamed = {0: [], 1: []}
    for chunk in client.completions.create(**ask, stream=True):
        for c in chunk.choices:
            streamed[c.index].append(c)
    for choice in whole.choices:
        lp, n = choice.logprobs, len(prompt) - 1
        assert choice.text.startswith(text) and "".join(lp.tokens) == choice.text and len(lp.tokens) == n + 3
        assert "".join(lp.tokens[:n]) == text and lp.text_offset[n] == len(text)
        for token, logprob, top, row in zip(prompt[1:], lp.token_logprobs, lp.top_logprobs, expected):
            assert abs(logprob - row[token].item()) < LOGPROB_TOLERANCE and 1 <= len(top) <= 2
        chunks = streamed[choice.index]
        assert "".join(c.text for c in chunks) == choice.text
        assert [t for c in chunks if c.logprobs for t in c.logprobs.token_logprobs] == lp.token_logprobs
    plain = client.completions.create(model="t", prompt=text, max_tokens=3, echo=True, **GREEDY).choices[0]
    assert plain.text == whole.choices[0].text and plain.logprobs is None  # echo alone: the text only


def test_token_id_prompts_are_scored_as_their_text_is(served, tiny_ckpt):
    """lm-evaluation-harness sends its prompts as token ids: one list of ids, or a list of them
    (a choice each), echoed and scored as the same prompt sent as text."""
    _, client = served
    _, tok, _ = load_model(tiny_ckpt, "cpu")
    texts = ["Article 7 is about topic", "Article 3"]
    ask = dict(model="t", max_tokens=1, logprobs=1, echo=True, **GREEDY)
    as_text = [client.completions.create(prompt=t, **ask).choices[0] for t in texts]
    as_ids = client.completions.create(prompt=tok.encode(texts[0]), **ask).choices
    many = client.completions.create(prompt=[tok.encode(t) for t in texts], **ask).choices
    assert [c.index for c in many] == [0, 1]
    for text, text_choice, id_choice in [(texts[0], as_text[0], as_ids[0]), (texts[0], as_text[0], many[0]),
                                         (texts[1], as_text[1], many[1])]:
        assert id_choice.text == text_choice.text and id_choice.text.startswith(text)
        assert id_choice.logprobs.tokens == text_choice.logprobs.tokens
        torch.testing.assert_close(id_choice.logprobs.token_logprobs, text_choice.logprobs.token_logprobs,
                                   rtol=0, atol=LOGPROB_TOLERANCE)


def test_a_token_prompt_that_ends_inside_a_character_is_finished_by_the_reply(served, tiny_ckpt):
    """A byte-level prompt may stop after a character's first bytes: its reply may give the rest
    (the UTF-8 mask goes on from the prompt's state), and the text shows the whole character once."""
    url, client = served
    _, tok, _ = load_model(tiny_ckpt, "cpu")
    ids = tok.encode("Tom 中")
    assert tok.decode(ids[-1:]) != "中"  # the character is in more than one token
    cut = next(i for i in range(len(ids) - 1, 0, -1) if tok.decode(ids[:i]).endswith("\ufffd"))
    rest = ids[cut:]  # the tokens that finish it
    r = client.completions.create(model="t", prompt=ids[:cut], max_tokens=len(rest), temperature=0, echo=True,
                                  logit_bias={str(t): 100 for t in rest})
    assert r.choices[0].text == "Tom 中"
    byte = tok.enc.encode_single_token  # a lone byte's id (a byte-level BPE has all 256)
    # \xc3 then the start of 中: \xc3 cannot go on with \xe4, which starts a character again
    r = client.completions.create(model="t", prompt=tok.encode("Tom ") + [byte(b"\xc3"), byte(b"\xe4"), byte(b"\xb8")],
                                  max_tokens=1, temperature=0, echo=True, logit_bias={str(byte(b"\xad")): 100})
    assert r.choices[0].text == "Tom \ufffd中"
    # a special token inside a prompt of ids: the echoed text shows its name, and the offsets count it
    ids = tok.encode("Tom is") + [tok.doc_sep] + tok.encode(" here")
    lp = client.completions.create(model="t", prompt=ids, max_tokens=2, echo=True, logprobs=1).choices[0].logprobs
    assert "".join(lp.tokens).startswith("Tom is<|endoftext|> here")
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    assert client.completions.create(model="t", prompt=[3] * 30, max_tokens=1).usage.prompt_tokens == 31  # room: 30


def test_a_sampled_token_is_among_its_own_alternatives_on_completions(served):
    """OpenAI's completions list the chosen token beside the top N (up to N + 1), as vLLM does:
    a reader of the likeliest alternatives finds the token it was given."""
    _, client = served
    r = client.completions.create(model="t", prompt="Article 3 is", logprobs=1, temperature=2.0, seed=3, max_tokens=16)
    lp = r.choices[0].logprobs
    assert all(tok in top and top[tok] == logprob and len(top) <= 2
               for tok, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs))


def test_a_stop_string_at_a_character_split_over_tokens_cuts_streamed_as_whole():
    """A token holding a character's first bytes shows no text: handed out at once, it went out in a
    stream although the stop string beginning with that character then cut it from the text."""
    from wikigpt.server.generation import Choice
    from wikigpt.tokenizer import TextStream, Tokenizer

    tok = Tokenizer({"kind": "gpt2"})
    ids = tok.encode("Hi 你好 there")  # 你 is two tokens
    assert any(not tok.enc.decode_single_token_bytes(i).decode("utf-8", "ignore") for i in ids)

    def listed(streamed: bool):
        c = Choice(0, [1], TextStream(tok), ["你好"], logprobs=[])
        c.request = Request([1], 50, stop_tokens=tok.stops, logprobs=0, token_logprobs=[(-0.5, [])] * len(ids))
        text, got = "", []
        for k, t in enumerate(ids):
            if not c.finish:
                text += c.add(t, "length" if k == len(ids) - 1 else None)
                got += c.new_logprobs() if streamed else []
        return text, [e.token for e in got + c.new_logprobs()]
    whole, streamed = listed(False), listed(True)
    assert whole == streamed == ("Hi ", ids[:2])


def test_chat_logprobs_streamed_equal_the_whole_replys_and_their_bytes_are_its_text(served):
    _, client = served
    ask = dict(model="t", messages=[{"role": "user", "content": "Hello"}], max_tokens=10, logprobs=True,
               top_logprobs=2, n=2, seed=5, temperature=1.0)
    whole = client.chat.completions.create(**ask)
    streamed = {0: [], 1: []}
    for chunk in client.chat.completions.create(**ask, stream=True):
        for c in chunk.choices:
            streamed[c.index] += c.logprobs.content if c.logprobs else []
    for choice in whole.choices:
        content = choice.logprobs.content
        assert content == streamed[choice.index]
        assert b"".join(bytes(t.bytes) for t in content).decode() == choice.message.content
        assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    plain = client.chat.completions.create(**{k: v for k, v in ask.items() if "logprobs" not in k})
    assert all(c.logprobs is None for c in plain.choices)  # none asked, none sent


def test_a_stop_string_cuts_the_logprobs_with_the_text_streamed_or_not(served):
    """A stop string's tokens, and any after it, are not listed; a token the cut splits is (its
    start was shown), in a stream too, where its text was held back as a possible stop."""
    _, client = served
    ask = dict(model="t", prompt="Article 5", max_tokens=16, logprobs=0, **GREEDY)
    tokens = client.completions.create(**ask).choices[0].logprobs.tokens
    tried = set()
    for at in range(2, len(tokens)):
        text, token = "".join(tokens[:at]), tokens[at]
        for split, stop, shown, listed in ((False, token, text, tokens[:at]),
                                           (True, token[1:], text + token[:1], tokens[:at + 1])):
            if split in tried or not stop.strip() or len(token) < 2 or stop in text + token[:1]:
                continue  # one case of each; the stop string must first appear at this token
            tried.add(split)
            whole = client.completions.create(**ask, stop=[stop]).choices[0]
            assert (whole.text, whole.logprobs.tokens) == (shown, listed)
            chunks = [c.choices[0] for c in client.completions.create(**ask, stop=[stop], stream=True)]
            assert "".join(c.text for c in chunks) == shown
            assert [t for c in chunks if c.logprobs for t in c.logprobs.tokens] == listed
    assert tried == {False, True}, f"no token of {tokens} to stop at"


@pytest.mark.parametrize("path,body,message", [
    ("chat/completions", {"logprobs": "yes"}, "'logprobs' must be true or false"),
    ("chat/completions", {"top_logprobs": 2}, "needs 'logprobs': true"),
    ("chat/completions", {"logprobs": True, "top_logprobs": 21}, "between 0 and 20"),
    ("completions", {"logprobs": 21}, "between 0 and 20"),
    ("completions", {"top_logprobs": 2}, "send 'logprobs': N"),
    ("completions", {"echo": "yes"}, "'echo' must be true or false"),
    ("chat/completions", {"echo": True}, "'echo' is a /v1/completions field"),
    ("completions", {"prompt": [1, "a"]}, "prompt holds 'a': token ids are integers from 0 to"),
    ("completions", {"prompt": [5, -1]}, "prompt holds -1: token ids are integers"),
    ("completions", {"prompt": [10**9]}, "prompt holds 1000000000: token ids"),
    ("completions", {"prompt": [[1, 2], []]}, "prompt[1] must be a string or a non-empty list of token ids"),
    ("completions", {"prompt": [[1, 2], [3, None]]}, "prompt[1] holds None"),
    ("completions", {"prompt": [True, 2]}, "'prompt' must be a string, a list of token ids, or a non-empty list"),
    ("completions", {"prompt": [3] * 31}, "prompt is 31 tokens, more than the model's context leaves room for (30)"),
    ("completions", {"prompt": [3] * 5000}, "prompt is 5,000 tokens, more than the model's context leaves room for (30)"),
])
def test_malformed_logprob_fields_get_a_400_and_the_server_keeps_serving(served, path, body, message):
    url, client = served
    base = {"messages": [{"role": "user", "content": "hi"}]} if path.startswith("chat") else {"prompt": "hi"}
    r = httpx.post(f"{url}/v1/{path}", json=base | body, timeout=30)
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    assert client.completions.create(model="t", prompt="hi", max_tokens=2).usage.completion_tokens >= 1


def test_a_broken_models_logprobs_are_still_numbers_json_can_carry():
    """NaN logits (weights gone bad) would have been NaN in the reply, which JSON cannot carry (a 500)."""
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight[7] = float("nan")  # one id's logit NaN, the rest fine
    req = Request([1, 2, 3], 3, SamplingParams(temperature=0), logprobs=20)
    engine = Engine(model, n_slots=1)
    engine.add(req)
    while engine.active:
        engine.step()
    values = [v for logprob, top in req.token_logprobs for v in [logprob] + [x for _, x in top]]
    assert values and all(-9999.0 <= v <= 0 for v in values)
