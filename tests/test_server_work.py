"""What the server does per token and per request, in process, without a client: the costs
behind test_server_abuse.py's stop-string and prompt items. Stop strings cut and hold back text
as their definition says, at a cost per token that does not grow with them; a long history is
fitted with each message tokenized once; prompts are built off the event loop."""
import threading
import time

import pytest
from test_server_abuse import ask, byte_tokenizer, random_chat_checkpoint


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory):
    return random_chat_checkpoint(tmp_path_factory.mktemp("work") / "random.pt")


class PieceStream:
    """TextStream's interface: token i is the text PIECES[i]."""
    def push(self, token: int) -> str:
        return PIECES[token]

    def flush(self) -> str:
        return ""


PIECES = ["a", "b", "ab", "ba", "aab", "", "bbb"]


def shown_by_the_definition(pieces: list[str], stops: list[str]) -> list[tuple[str, str | None]]:
    """What a reply shows as pieces arrive, straight from the definition: cut at the earliest
    stop string; hold back the longest end of the text that begins a stop string."""
    text, sent, out = "", 0, []
    for i, piece in enumerate(pieces):
        finish = "length" if i == len(pieces) - 1 else None
        text += piece
        cut = min((k for k in (text.find(s) for s in stops) if k >= 0), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        held = 0 if finish else max((k for s in stops for k in range(1, len(s) + 1) if text.endswith(s[:k])), default=0)
        out.append((text[sent:len(text) - held], finish))
        sent += len(out[-1][0])
        if finish:
            return out
    return out


def test_stop_strings_cut_and_hold_back_as_their_definition_says():
    import random

    from wikigpt.server.generation import Choice

    rng = random.Random(0)
    for _ in range(500):
        stops = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 4))]
        tokens = [rng.randrange(len(PIECES)) for _ in range(rng.randint(1, 20))]
        c, got = Choice(0, [], PieceStream(), stops), []
        for i, token in enumerate(tokens):
            got.append((c.add(token, "length" if i == len(tokens) - 1 else None), c.finish))
            if c.finish:
                break
        assert got == shown_by_the_definition([PIECES[t] for t in tokens], stops), (stops, tokens)


def test_a_40000_character_stop_string_costs_microseconds_per_token():
    """The check runs on the event loop for every token of every choice: its cost must not grow
    with the stop string (each token used to test all 40,000 prefixes: ~15 ms)."""
    from wikigpt.server.generation import Choice

    c = Choice(0, [], PieceStream(), ["a" * 39_999 + "b"])
    t0 = time.perf_counter()
    shown = "".join(c.add(0, None) for _ in range(300))  # "a" each time: always a possible start
    assert time.perf_counter() - t0 < 0.5
    assert shown == "" and c.text == "a" * 300 and c.finish is None  # all of it held back


def fit_by_dropping(tok, history, room, limit=None):
    """fit_history as it was before it tokenized each message once: render, drop the oldest
    exchange, render again. The reference its result must equal."""
    from wikigpt.chat.chat_template import ContextOverflow, render_chat

    system = history[:1] if history and history[0].role == "system" else []
    turns = history[len(system):]
    while True:
        ids, _ = render_chat(tok, system + turns, add_generation_prompt=True)
        if len(ids) <= room or (len(turns) <= 1 and len(ids) <= (limit or room)):
            return ids, system + turns
        if len(turns) <= 1:
            raise ContextOverflow(len(ids), limit or room)
        turns = turns[2:] if len(turns) > 2 else turns[-1:]


def test_fit_history_tokenizes_each_message_once_and_keeps_what_it_kept():
    import random

    from wikigpt.chat.chat_template import ContextOverflow, Message, fit_history

    tok, rng = byte_tokenizer(), random.Random(0)
    for _ in range(400):
        history = [Message("system", "Be brief.")] if rng.random() < 0.5 else []
        history += [Message(("user", "assistant")[i % 2], "word " * rng.randint(0, 12))
                    for i in range(rng.randint(0, 9))]
        room = rng.randint(5, 200)
        limit = rng.choice([None, room + rng.randint(0, 60)])
        try:
            expected = fit_by_dropping(tok, history, room, limit)
        except ContextOverflow as e:
            with pytest.raises(ContextOverflow) as raised:
                fit_history(tok, history, room, limit)
            assert (raised.value.needed, raised.value.room) == (e.needed, e.room)
            continue
        assert fit_history(tok, history, room, limit) == expected
    calls, encode = [], tok.encode
    tok.encode = lambda text: calls.append(text) or encode(text)
    history = [Message(("user", "assistant")[i % 2], f"message {i} " * 10) for i in range(255)]
    fit_history(tok, history, 1000)
    assert len(calls) < 20  # the ~9 newest messages that fit, and one more (16,375 calls before)


def test_prompts_are_built_off_the_event_loop(random_ckpt):
    """Tokenizing, fitting the history and retrieval run in the prompt thread, so /health and
    the streams keep going while a big prompt is built."""
    import asyncio

    from fastapi.testclient import TestClient

    from wikigpt.decoding.load import load_model
    from wikigpt.decoding.engine_thread import EngineThread
    from wikigpt.server.app import create_app
    from wikigpt.server.checks import Settings
    from wikigpt.server.generation import Server

    model, tok, _ = load_model(random_ckpt, "cpu")
    engine = EngineThread(model, n_slots=4)
    server = Server(model, tok, Settings(), engine)
    where = []

    def spy(build):
        def built_where(*args):
            try:
                asyncio.get_running_loop()
                where.append("the event loop")
            except RuntimeError:  # no loop runs in this thread
                where.append(threading.current_thread().name)
            return build(*args)
        return built_where
    server.chat_prompt, server.completion_prompts = spy(server.chat_prompt), spy(server.completion_prompts)
    try:
        with TestClient(create_app(server)) as http:
            assert http.post("/v1/chat/completions", json=ask("hi", max_tokens=2)).status_code == 200
            assert http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
    finally:
        engine.stop()
    assert len(where) == 2 and all(w.startswith("wikigpt-prompt") for w in where), where


def test_a_request_past_the_capacity_is_refused_before_its_prompt_is_built(random_ckpt):
    """Capacity was checked only as a request joined the engine, after its prompt: a burst queued
    its prompt work (retrieval with --rag) in the one prompt thread, and a request waited there
    seconds for its 429. Rows whose prompts are being built now count too (and /health shows them)."""
    from fastapi.testclient import TestClient

    from wikigpt.decoding.engine_thread import EngineThread
    from wikigpt.decoding.load import load_model
    from wikigpt.server.app import create_app
    from wikigpt.server.checks import Settings
    from wikigpt.server.generation import Server

    model, tok, _ = load_model(random_ckpt, "cpu")
    engine = EngineThread(model, n_slots=2, max_queue=1)  # 3 rows at once
    server, gate, started = Server(model, tok, Settings(), engine), threading.Event(), threading.Event()
    build = server.chat_prompt

    def slow_build(*args):  # a prompt that takes long to build (retrieval on a big index)
        started.set()
        assert gate.wait(30)
        return build(*args)
    server.chat_prompt = slow_build
    replies = []
    try:
        with TestClient(create_app(server)) as http:
            try:
                asking = first = threading.Thread(target=lambda: replies.append(http.post(
                    "/v1/chat/completions", json=ask("hi", max_tokens=2, n=2))))
                first.start()
                assert started.wait(30)
                assert http.get("/health").json()["queued"] == 2  # its 2 rows, being prepared
                got = []  # 2 + 2 rows > 3: answered at once, not after the prompt thread gets to it
                asking = threading.Thread(target=lambda: got.append(http.post(
                    "/v1/chat/completions", json=ask("hi", max_tokens=2, n=2))), daemon=True)
                asking.start()
                asking.join(10)
                assert got, "no answer within 10 s: it waited behind the prompt being built"
                assert got[0].status_code == 429 and "being prepared" in got[0].json()["error"]["message"]
                never = http.post("/v1/chat/completions", json=ask("hi", max_tokens=2, n=4))
                assert never.status_code == 400  # more rows than the server ever holds: not a retry
            finally:
                gate.set()  # the first request's prompt is built; every request ends before the client closes
                first.join(30)
                asking.join(30)
            assert replies[0].status_code == 200 and len(replies[0].json()["choices"]) == 2
            assert http.get("/health").json()["queued"] == 0
    finally:
        engine.stop()


def test_tokenize_requests_are_admitted_like_prompts(random_ckpt):
    """/tokenize and /detokenize share the prompt thread: a flood of them queued there without bound
    and every prompt waited behind it. Each now counts as a prompt being built, up to the capacity."""
    from fastapi.testclient import TestClient

    from wikigpt.decoding.engine_thread import EngineThread
    from wikigpt.decoding.load import load_model
    from wikigpt.server.app import create_app
    from wikigpt.server.checks import Settings
    from wikigpt.server.generation import Server

    model, tok, _ = load_model(random_ckpt, "cpu")
    engine = EngineThread(model, n_slots=2, max_queue=1)  # 3 at once
    server, gate, started = Server(model, tok, Settings(), engine), threading.Event(), threading.Event()
    encode = tok.encode

    def slow_encode(text):  # the prompt thread held (a long text, a slow machine)
        started.set()
        assert gate.wait(30)
        return encode(text)
    tok.encode = slow_encode
    held = []
    try:
        with TestClient(create_app(server)) as http:
            posting = [threading.Thread(target=lambda: held.append(http.post("/tokenize", json={"prompt": "hi"})))
                       for _ in range(3)]
            try:
                for t in posting:
                    t.start()
                assert started.wait(30)
                deadline = time.monotonic() + 10
                while http.get("/health").json()["queued"] < 3 and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert http.get("/health").json()["queued"] == 3  # the three, waiting in the prompt thread
                for path, body in (("/tokenize", {"prompt": "hi"}), ("/detokenize", {"tokens": [1, 2]}),
                                   ("/v1/completions", {"prompt": "hi", "max_tokens": 2})):
                    r = http.post(path, json=body)  # answered at once: nothing more queues behind them
                    assert r.status_code == 429 and "being prepared" in r.json()["error"]["message"], (path, r.text)
            finally:
                gate.set()
                for t in posting:
                    t.join(30)
            assert [r.status_code for r in held] == [200] * 3 and held[0].json()["tokens"] == encode("hi")
            assert http.post("/detokenize", json={"tokens": encode("hi")}).json()["prompt"] == "hi"
            assert http.get("/health").json()["queued"] == 0
    finally:
        engine.stop()


def test_a_wrong_value_is_quoted_by_its_start_not_echoed_whole(random_ckpt):
    """repr'ing a 1 MiB list took as long as parsing it, and the 400 echoed 1.5 MB back."""
    from fastapi.testclient import TestClient

    from wikigpt.decoding.engine_thread import EngineThread
    from wikigpt.decoding.load import load_model
    from wikigpt.server import checks
    from wikigpt.server.app import create_app
    from wikigpt.server.generation import Server

    model, tok, _ = load_model(random_ckpt, "cpu")
    engine = EngineThread(model, n_slots=2)
    try:
        with TestClient(create_app(Server(model, tok, checks.Settings(), engine))) as http:
            r = http.post("/v1/chat/completions", json=ask("hi", max_tokens=[0] * 100_000))
            assert r.status_code == 400 and "'max_tokens' must be an integer, got [0, 0, 0, 0, 0, 0, ...]" \
                in r.json()["error"]["message"]
            assert len(r.content) < 1000  # not the 300 KB list echoed back
            r = http.post("/v1/chat/completions", json=ask("hi", max_tokens=10**4000))
            assert r.status_code == 400 and len(r.content) < 1000  # nor a 4,000-digit number
            assert http.post("/v1/chat/completions", json=ask("hi", max_tokens=2)).status_code == 200
    finally:
        engine.stop()
