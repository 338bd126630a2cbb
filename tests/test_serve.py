"""serve.py: real clients (the openai SDK, raw HTTP, Chromium) against a live server on
127.0.0.1, continuous batching, bad input, and the web page (the engine alone: test_engine.py)."""
import json
import re
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
import torch
from conftest import TINY, run_cli
from live_server import LiveServer

from wikigpt.decoding.load import load_model
from wikigpt.decoding.engine import Request
from wikigpt.decoding.engine_thread import EngineThread
from wikigpt.server.app import authorized
from wikigpt.server.checks import Settings
from wikigpt.server.generation import Server

REPLIES = {"你好": "你好！很高兴见到你。", "Hello": "Hello! How are you today?",
           "What is a river?": "A river is a stream of water.", "谢谢": "不客气。"}


@pytest.fixture(scope="module")
def chat_ckpt(tiny_data, tmp_path_factory):
    """A tiny chat model (context 128) that has learned four exchanges by heart, English and
    Chinese: its greedy replies are known, so the tests can check exact text end to end."""
    root = tmp_path_factory.mktemp("serve_model")
    dialogues = root / "d.jsonl"
    dialogues.write_text("".join(json.dumps({"prompt": q, "response": a}, ensure_ascii=False) + "\n"
                                 for _ in range(50) for q, a in REPLIES.items()), encoding="utf-8")
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={root / 'pre'}", "--max_steps=10",
                "--eval_interval=10", *TINY, "--block_size=128")
    assert r.returncode == 0, r.stderr
    r = run_cli("chat_sft.py", f"--init_from={root / 'pre' / 'last.pt'}", f"--out_dir={root / 'chat'}",
                f"--sft_data={dialogues}", "--max_steps=80", "--eval_interval=40", "--eot_check=0",
                "--sft_val_fraction=0.1", *TINY, "--block_size=128")
    assert r.returncode == 0, r.stderr
    return root / "chat" / "best.pt"


@pytest.fixture(scope="module")
def server(chat_ckpt):
    s = LiveServer(chat_ckpt)
    yield s.url
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    import openai
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def ask(content, **kw):
    return {"messages": [{"role": "user", "content": content}], **kw}


# ----- the openai SDK against the live server

def test_chat_completion_with_the_openai_sdk(client):
    r = client.chat.completions.create(model="any", temperature=0, **ask("你好"))
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "wikigpt-chat"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == REPLIES["你好"] and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    parts = [{"type": "text", "text": "What is "}, {"type": "text", "text": "a river?"}]
    r = client.chat.completions.create(model="any", temperature=0, messages=[{"role": "user", "content": parts}])
    assert r.choices[0].message.content == REPLIES["What is a river?"]


def test_a_conversations_next_turn_prefills_only_its_new_message(client):
    """The next request of a chat sends the last prompt's messages, the reply and a new message:
    the slot that answered holds the keys and values of all of it but the new message, and the
    usage says so as OpenAI's API does (prompt_tokens_details.cached_tokens)."""
    messages = [{"role": "user", "content": "Hello"}]
    first = client.chat.completions.create(model="any", temperature=0, messages=messages)
    assert first.choices[0].message.content == REPLIES["Hello"]
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "What is a river?"}]
    second = client.chat.completions.create(model="any", temperature=0, messages=messages, n=2)
    assert [c.message.content for c in second.choices] == [REPLIES["What is a river?"]] * 2
    # the first prompt and reply, but the reply's last token (the turn's end), which no step read back;
    # the prompt counted once, as in prompt_tokens (its second choice copies all of it)
    held = first.usage.prompt_tokens + first.usage.completion_tokens - 1
    assert second.usage.prompt_tokens_details.cached_tokens == held
    assert second.usage.prompt_tokens > held
    metrics = httpx.get(str(client.base_url).removesuffix("/v1/") + "/metrics").text
    counted = float(re.search(r"^wikigpt_prompt_tokens_cached_total (\S+)$", metrics, re.M).group(1))
    assert counted >= held  # every request's since the server started


def test_streaming_deltas_join_to_the_reply_and_end_with_usage(client):
    chunks = list(client.chat.completions.create(model="any", temperature=0, stream=True,
                                                 stream_options={"include_usage": True}, **ask("Hello")))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLIES["Hello"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_the_raw_stream_is_server_sent_events_ending_in_done(server):
    with httpx.stream("POST", server + "/v1/chat/completions", json=ask("谢谢", temperature=0, stream=True)) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    deltas = [json.loads(line[6:])["choices"][0]["delta"].get("content", "") for line in lines[:-1]]
    assert "".join(deltas) == REPLIES["谢谢"]


def test_n_choices_with_a_seed_are_reproducible(client):
    def run():
        r = client.chat.completions.create(model="any", n=3, seed=11, temperature=1.5, max_tokens=20,
                                           **ask("Hello"))
        return [c.message.content for c in sorted(r.choices, key=lambda c: c.index)]
    first = run()
    assert len(first) == 3 and run() == first


def test_stop_strings_cut_the_reply(client):
    r = client.chat.completions.create(model="any", temperature=0, stop=["很高兴", "zzz"], **ask("你好"))
    assert r.choices[0].message.content == "你好！" and r.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="any", temperature=0, stop="How", stream=True,
                                                 **ask("Hello")))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello! "


def test_models_and_plain_completions(client):
    assert [m.id for m in client.models.list().data] == ["wikigpt-chat"]
    r = client.completions.create(model="any", prompt="The river", max_tokens=7, temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 7 and r.choices[0].text
    again = client.completions.create(model="any", prompt="The river", max_tokens=7, temperature=0)
    assert again.choices[0].text == r.choices[0].text


def test_same_seed_gives_the_same_text_as_chat_py(client, chat_ckpt):
    options = dict(temperature=1.2, top_p=0.95, seed=123, max_tokens=40)
    r = client.chat.completions.create(model="any", **options, **ask("What is a river?"))
    cli = run_cli("chat.py", "--ckpt", chat_ckpt, "--prompt", "What is a river?", "--temperature", "1.2",
                  "--top_p", "0.95", "--seed", "123", "--max_new_tokens", "40")
    assert cli.returncode == 0, cli.stderr
    assert r.choices[0].message.content.strip() == cli.stdout.strip()


def test_eight_streaming_clients_at_once_each_get_what_they_get_alone(server):
    bodies = [{"prompt": f"Article {i} is", "max_tokens": 40, "temperature": 1.0, "seed": i, "stream": True}
              for i in range(8)]

    def run(body, out, i):
        text = ""
        with httpx.stream("POST", server + "/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    text += json.loads(line[6:])["choices"][0]["text"]
        out[i] = text

    alone = {}
    for i, body in enumerate(bodies):
        run(body, alone, i)
    together = {}
    threads = [threading.Thread(target=run, args=(b, together, i)) for i, b in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert together == alone and len(set(alone.values())) > 1


# ----- bad input: the right status, OpenAI's error shape, and the server keeps serving

BAD = [
    ("malformed JSON", b'{"messages": [', 400, "not valid JSON"),
    ("not an object", b"[1, 2]", 400, "JSON object"),
    ("missing messages", {"model": "x"}, 400, "'messages' must be a non-empty list"),
    ("empty messages", {"messages": []}, 400, "'messages' must be a non-empty list"),
    ("unknown role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "role must be one of"),
    ("image part", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, "only text parts"),
    ("temperature", ask("hi", temperature=3), 400, "'temperature' must be between 0.0 and 2.0"),
    ("copy", ask("hi", copy=1.5), 400, "'copy' must be between 0.0 and 1.0"),
    ("model not a name", ask("hi", model=42), 400, "'model' must be a string"),
    ("top_p zero", ask("hi", top_p=0), 400, "top_p must be in (0, 1.0]"),
    ("top_p", ask("hi", top_p=1.5), 400, "'top_p' must be between"),
    ("max_tokens zero", ask("hi", max_tokens=0), 400, "'max_tokens' must be between 1"),
    ("max_tokens huge", ask("hi", max_tokens=10**7), 400, "'max_tokens' must be between 1"),
    ("max_tokens text", ask("hi", max_tokens="many"), 400, "'max_tokens' must be an integer"),
    ("max_tokens beside the newer name", ask("hi", max_completion_tokens=2, max_tokens=-5), 400, "'max_tokens' must be between 1"),
    ("n", ask("hi", n=50), 400, "'n' must be between 1 and 8"),
    ("stop", ask("hi", stop=[1, 2]), 400, "'stop' must be"),
    ("stream", ask("hi", stream="yes"), 400, "'stream' must be true or false"),
    ("too long", ask("word " * 400), 400, "only 127 fit in the context"),
    ("oversized body", b'{"messages": "' + b"x" * (2 << 20) + b'"}', 413, "over the limit"),
    ("echo", ask("hi", echo=True), 400, "'echo' is a /v1/completions field"),
    ("tools", ask("hi", tools=[{"type": "function", "function": {"name": "f"}}]), 400, "does not support tool calls"),
    ("tools to choose", ask("hi", tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="auto"), 400,
     "does not support tool calls"),
    ("a tool required", ask("hi", tool_choice="required"), 400, "does not support tool calls"),
    ("json output", ask("hi", response_format={"type": "json_object"}), 400, "does not support structured output"),
]


def test_the_max_tokens_limit_bounds_a_request_that_leaves_max_tokens_out():
    limited = SimpleNamespace(settings=Settings(max_tokens_limit=16))
    assert Server.max_tokens(limited, {}) == 16 and Server.max_tokens(limited, {"max_tokens": 9}) == 9
    assert Server.max_tokens(SimpleNamespace(settings=Settings()), {}) == Settings.default_max_tokens



def test_a_port_in_use_and_an_address_not_here_are_told_apart(server, chat_ckpt):
    port = server.rsplit(":", 1)[1]
    r = run_cli("serve.py", "--ckpt", chat_ckpt, "--port", port)  # the live server holds it
    assert r.returncode == 2 and "Pick another --port" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("serve.py", "--ckpt", chat_ckpt, "--host", "192.0.2.1", "--port", "0", "--api_key", "k")  # TEST-NET-1
    assert r.returncode == 2 and "Check --host" in r.stderr and "Traceback" not in r.stderr
    for flag, value, said in (("--max_body_bytes", "-1", "--max_body_bytes must be >= 1, got -1"),
                              ("--slots", "0", "--slots must be >= 1, got 0"),
                              ("--max_queue", "-1", "--max_queue must be >= 0, got -1"),
                              ("--stall_timeout", "nan", "--stall_timeout must be > 0 seconds, got nan"),
                              ("--data", "data/demo", "--data choose how --rag answers"),
                              ("--rag_k", "3", "--rag_k choose how --rag answers")):
        r = run_cli("serve.py", "--ckpt", chat_ckpt, flag, value)  # the flag named, not six at once; none ignored
        assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
    base = chat_ckpt.parent.parent / "pre" / "last.pt"
    r = run_cli("serve.py", "--ckpt", base, "--port", port)  # said before the port is found taken
    assert r.returncode == 2 and "is a base (pretrained) model, never taught the chat turns" in r.stderr, r.stderr
    r = run_cli("serve.py", "--ckpt", chat_ckpt, "--port", "0", "--slots", "1000000000")  # an allocator traceback before
    assert r.returncode == 2 and re.search(r"--slots 1000000000: the key/value cache of 1000000000 slots needs "
                                           r"[\d.]+ GiB, more than .* Lower --slots", r.stderr), r.stderr


def test_a_server_without_rag_refuses_a_request_asking_for_it(server):
    for field, value in (("rag", True), ("copy", 0.5)):
        r = httpx.post(server + "/v1/chat/completions", json=ask("Hello", max_tokens=4, **{field: value}), timeout=60)
        assert r.status_code == 400 and "started without --rag" in r.json()["error"]["message"], r.text
        assert r.json()["error"]["param"] == field
    r = httpx.post(server + "/v1/chat/completions", json=ask("Hello", max_tokens=4, rag=False), timeout=60)
    assert r.status_code == 200  # what the page sends to turn grounding off asks nothing the server lacks


def test_the_cache_size_checked_is_the_cache_made(chat_ckpt):
    from wikigpt.decoding.decode import SlotCache, cache_bytes
    from wikigpt.decoding.load import load_model
    model, _, _ = load_model(chat_ckpt, "cpu")
    cache = SlotCache(model, 3)
    assert cache_bytes(model, 3) == sum(t.numel() * t.element_size() for t in cache.k + cache.v)


@pytest.mark.parametrize("name,body,status,message", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(server, name, body, status, message):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server + "/v1/chat/completions", headers={"Content-Type": "application/json"}, timeout=30, **kw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    good = httpx.post(server + "/v1/chat/completions", json=ask("谢谢", temperature=0), timeout=30)
    assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"] == REPLIES["谢谢"]


def test_fields_left_at_their_defaults_are_accepted(client):
    """What many clients send by default (zero penalties, no bias, text output) is a reply."""
    r = client.chat.completions.create(model="t", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                       presence_penalty=0, frequency_penalty=0, logit_bias={}, logprobs=False,
                                       response_format={"type": "text"}, tool_choice="none")
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1
    r = client.chat.completions.create(model="t", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                       tool_choice="auto")  # no tools to choose from: a plain reply
    assert r.usage.completion_tokens >= 1


def test_unknown_paths_and_methods_get_json_errors(server):
    r = httpx.get(server + "/v2/chat")
    assert r.status_code == 404 and "the API is under /v1" in r.json()["error"]["message"]
    r = httpx.get(server + "/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["message"].startswith("GET is not allowed")
    for path in ("/", "/health"):  # what uptime monitors send: headers, no body
        r = httpx.head(server + path)
        assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 0, path


def test_health_and_prometheus_metrics(server):
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and health["compiled"] is False  # on a CPU the step runs eagerly unless asked
    httpx.post(server + "/v1/chat/completions", json=ask("Hello", temperature=0), timeout=30)
    text = httpx.get(server + "/metrics").text
    for name in ("wikigpt_requests_total{path=\"/v1/chat/completions\",status=\"200\"}",
                 "wikigpt_time_to_first_token_seconds_bucket", "wikigpt_time_per_output_token_seconds_count",
                 "wikigpt_queue_depth", "wikigpt_active_sequences", "wikigpt_completion_tokens_total"):
        assert name in text, name


def test_api_key_is_required_when_set(chat_ckpt):
    s = LiveServer(chat_ckpt, env={"WIKIGPT_API_KEY": "sk-test-123"})
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sk-test-123"}):
            r = httpx.post(s.url + "/v1/chat/completions", json=ask("Hello"), headers=headers)
            assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]["message"]
        assert httpx.get(s.url + "/metrics").status_code == 401
        for path, body in (("/tokenize", {"prompt": "Hello"}), ("/detokenize", {"tokens": [1]})):
            assert httpx.post(s.url + path, json=body).status_code == 401
            assert httpx.post(s.url + path, json=body, headers={"Authorization": "Bearer sk-test-123"}).status_code == 200
        assert httpx.get(s.url + "/health").json()["auth"] is True  # the page asks for a key
        r = httpx.post(s.url + "/v1/chat/completions", json=ask("Hello", temperature=0),
                       headers={"Authorization": "Bearer sk-test-123"}, timeout=30)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == REPLIES["Hello"]
    finally:
        s.stop()


def test_a_key_with_letters_outside_ascii_matches_what_clients_send_its_utf8_bytes():
    for key in ("sk-clé-ünï", "sk-密钥"):
        sent = key.encode("utf-8")
        assert authorized({"headers": [(b"authorization", b"Bearer " + sent)]}, key)
        assert authorized({"headers": [(b"authorization", b"bearer  " + sent + b" ")]}, key)
        assert not authorized({"headers": [(b"authorization", b"Bearer " + sent[:-1])]}, key)
    assert not authorized({"headers": []}, "sk-a") and not authorized({"headers": [(b"authorization", b"sk-a")]}, "sk-a")


def test_a_keyless_server_on_an_address_others_reach_needs_insecure_no_key(tmp_path):
    for host in ("0.0.0.0", "myhost.example"):  # refused before the checkpoint is even read
        r = run_cli("serve.py", "--ckpt", tmp_path / "none.pt", "--host", host, env={"WIKIGPT_API_KEY": ""})
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "--api_key KEY" in r.stderr and "WIKIGPT_API_KEY" in r.stderr and "--insecure_no_key" in r.stderr
    r = run_cli("serve.py", "--ckpt", tmp_path / "none.pt", "--host", "0.0.0.0", "--insecure_no_key",
                env={"WIKIGPT_API_KEY": ""})  # past that check (with a key too: the port test above)
    assert r.returncode == 2 and "not found" in r.stderr, r.stderr


def test_replies_on_a_kept_alive_connection_are_not_held_back_by_nagle(server):
    """The listening socket says IPPROTO_TCP, so asyncio turns Nagle off: a reply's body used to
    wait ~40 ms behind its headers for the client's delayed ACK, on every request but the first."""
    with httpx.Client(timeout=10) as http:
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            assert http.get(server + "/health").status_code == 200
            times.append(time.perf_counter() - t0)
    assert sorted(times)[5] < 0.02, times  # the median: a loaded machine may slow one or two


def test_serve_refuses_a_busy_port_and_a_missing_checkpoint(server, tmp_path):
    port = server.rsplit(":", 1)[1]
    r = run_cli("serve.py", "--ckpt", tmp_path / "none.pt", "--port", port)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("special", ["<|end|>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>"])
def test_every_special_token_ends_a_reply_and_is_never_shown(chat_ckpt, special):
    """A model that starts the next turn itself (<|user|>) has ended its own: before, the chat
    reply went on as the literal text "<|user|><|user|>..." to max_tokens."""
    from fastapi.testclient import TestClient

    from wikigpt.server.app import create_app
    from wikigpt.server.checks import Settings
    from wikigpt.server.generation import Server

    model, tok, _ = load_model(chat_ckpt, "cpu")

    V, C = model.lm_head.weight.shape  # (padded vocab, width)
    model.lm_head = torch.nn.Linear(C, V)  # a model whose every choice is this special token
    with torch.no_grad():
        model.lm_head.weight.zero_(), model.lm_head.bias.zero_()
        model.lm_head.bias[tok.special[special]] = 10.0
    thread = EngineThread(model, n_slots=4)
    try:
        with TestClient(create_app(Server(model, tok, Settings(model_name="t"), thread))) as http:
            for path, body, text in [("/v1/completions", {"prompt": "Hello"}, lambda c: c["text"]),
                                     ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello"}]},
                                      lambda c: c["message"]["content"])]:
                r = http.post(path, json=body | {"max_tokens": 20, "temperature": 0})
                assert r.status_code == 200, r.text
                choice = r.json()["choices"][0]
                assert choice["finish_reason"] == "stop" and text(choice) == "", (path, choice)
                assert r.json()["usage"]["completion_tokens"] == 1
    finally:
        thread.stop()


def test_a_crash_in_generation_is_a_500_and_a_busy_server_a_429(chat_ckpt, capsys):
    from fastapi.testclient import TestClient

    from wikigpt.server.app import create_app
    from wikigpt.server.checks import Settings
    from wikigpt.server.generation import Server

    model, tok, _ = load_model(chat_ckpt, "cpu")
    thread = EngineThread(model, n_slots=4)
    real_fill_one = thread.engine.fill_one

    def fill_one(req, budget):  # a fault inside the model for one particular prompt's prefill
        if len(req.prompt) > 12:
            raise RuntimeError("simulated fault")
        return real_fill_one(req, budget)
    thread.engine.fill_one = fill_one
    server = Server(model, tok, Settings(model_name="t"), thread)

    def broken_prompts(body):  # a fault outside generation: a bug, or a file gone from under the server
        raise FileNotFoundError("/home/someone/private/index.bin")
    server.completion_prompts = broken_prompts
    app = create_app(server)
    try:
        with TestClient(app, raise_server_exceptions=False) as http:
            for path, body, what in (("/v1/chat/completions", ask("What is a river?"), "generation failed"),
                                     ("/v1/completions", {"prompt": "x"}, "POST /v1/completions")):
                r = http.post(path, json=body)
                message = r.json()["error"]["message"]  # the fault's text, paths and all, stays in the log
                assert r.status_code == 500 and "see the server's log" in message, message
                assert "simulated fault" not in message and "/home" not in message
                log = capsys.readouterr().err
                assert f"error {message.split('reference ')[1].rstrip(')')}: {what}" in log
                assert "simulated fault" in log or "/home/someone/private" in log
            r = http.post("/v1/chat/completions", json=ask("谢谢", temperature=0))
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == REPLIES["谢谢"]
    finally:
        thread.stop()
    busy = EngineThread(model, n_slots=4, max_queue=1, start=False, compile=True)  # (never stepped: nothing compiles)
    busy.submit([Request([i], 5) for i in range(5)])  # its 4 slots and 1 place in the queue, taken
    with TestClient(create_app(Server(model, tok, Settings(model_name="t"), busy))) as http:
        r = http.post("/v1/chat/completions", json=ask("Hello"))
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert http.get("/health").json()["compiled"] is True
        busy.engine.step_fn.fn = None  # as after a failed compile: the step decodes eagerly
        assert http.get("/health").json()["compiled"] is False


# ----- the web page in a real browser

def test_the_page_streams_english_and_chinese_replies_in_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.add_init_script("localStorage.setItem('wikigpt.temperature', '0')")
            page.goto(server + "/")
            page.wait_for_function("document.querySelector('#model-name').textContent.includes('wikigpt-chat')")
            assert not page.is_visible("#settings") and not page.is_visible("#api-key-row")  # no key needed
            page.click("#toggle-settings")
            page.fill("#system", "Be brief.")
            assert page.is_visible("#settings") and page.input_value("#temperature") == "0"
            for n, question in enumerate(("Hello", "你好"), 1):
                page.fill("#input", question)
                page.press("#input", "Enter")
                page.wait_for_function(f"document.querySelectorAll('.msg.assistant').length === {n} && "
                                       "!document.querySelector('.msg.assistant.streaming')", timeout=30_000)
                assert page.locator(".msg.assistant").last.inner_text() == REPLIES[question]
            assert "\ufffd" not in page.inner_text("#messages")
            page.screenshot(path=str(tmp_path / "chat.png"))
            assert (tmp_path / "chat.png").stat().st_size > 10_000
            page.click("#new-chat")
            assert page.locator(".msg").count() == 0
        finally:
            browser.close()


def test_the_page_asks_for_the_key_and_shows_errors(chat_ckpt):
    from playwright.sync_api import sync_playwright

    s = LiveServer(chat_ckpt, "--api_key", "sk-page")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page()
            page.add_init_script("localStorage.setItem('wikigpt.temperature', '0')")
            page.goto(s.url + "/")
            page.wait_for_selector("#api-key-row", state="visible")  # /health says a key is needed
            page.fill("#input", "Hello")
            page.press("#input", "Enter")
            page.wait_for_selector("#error", state="visible")
            assert "API key" in page.inner_text("#error") and page.locator(".msg.assistant").count() == 0
            page.fill("#api-key", "sk-page")
            page.fill("#input", "Hello")
            page.press("#input", "Enter")
            page.wait_for_function("document.querySelectorAll('.msg.assistant').length === 1 && "
                                   "!document.querySelector('.msg.assistant.streaming')", timeout=30_000)
            assert page.locator(".msg.assistant").last.inner_text() == REPLIES["Hello"]
            assert not page.is_visible("#error")
            browser.close()
    finally:
        s.stop()


def test_the_page_makes_only_web_addresses_of_sources_clickable(server):
    """A source's url comes from the index: a javascript: or data: one must not become a link
    that runs in the page when clicked. The reply is served by the test (page.route)."""
    from playwright.sync_api import sync_playwright

    sources = [{"title": "River", "url": "https://en.wikipedia.org/wiki/River", "text": "A river flows."},
               {"title": "Script", "url": "javascript:alert(1)", "text": "x"},
               {"title": "Data", "url": "data:text/html,<script>alert(1)</script>", "text": "x"},
               {"title": "Spaced", "url": " JavaScript:alert(1)", "text": "x"}]
    first = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "A river."}, "finish_reason": None}],
             "sources": sources}
    last = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    body = f"data: {json.dumps(first)}\n\ndata: {json.dumps(last)}\n\ndata: [DONE]\n\n"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.route("**/v1/chat/completions",
                       lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body))
            page.goto(server + "/")
            page.fill("#input", "What is a river?")
            page.press("#input", "Enter")
            page.wait_for_function("document.querySelectorAll('.sources li').length === 4", timeout=30_000)
            links = page.eval_on_selector_all(".sources li > *", "els => els.map(e => [e.tagName, e.getAttribute('href')])")
            assert links == [["A", "https://en.wikipedia.org/wiki/River"], ["SPAN", None], ["SPAN", None], ["SPAN", None]]
        finally:
            browser.close()


def test_an_int8_server_gives_the_learned_replies(chat_ckpt):
    """--dtype int8 (quant.py) behind the same API: the replies the model learned by heart survive."""
    import openai

    live = LiveServer(chat_ckpt, "--dtype", "int8")
    try:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0, timeout=60)
        for question in ("你好", "What is a river?"):
            r = client.chat.completions.create(model="any", temperature=0, **ask(question))
            assert r.choices[0].message.content == REPLIES[question]
    finally:
        live.stop()
