"""
Serve a checkpoint over an OpenAI-compatible HTTP API, with continuous batching and a web page.

    python serve.py --ckpt out/chat/best.pt                      # http://127.0.0.1:8000
    python serve.py --ckpt out/chat/best.pt --port 8080 --api_key sk-local
    WIKIGPT_API_KEY=sk-local python serve.py --ckpt out/chat/best.pt --host 0.0.0.0

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,
GET /metrics (Prometheus), and the chat page at /. Generation runs in engine.py's background
thread: every active request advances in one batched forward per step, so the event loop
never waits on the model and new requests join at the next step.
"""
import argparse
import asyncio
import hmac
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from checkpoint import load_model
from cli import UsageError, run_main
from engine import EngineThread, QueueFull, Request
from retrieve import grounded_prompt, open_index
from sampling import CHAT_DEFAULTS, RAG_COPY, CopySource, SamplingParams, add_dtype_arg
from tokenizer import ContextOverflow, Message, TextStream, fit_history, prompt_room

WEB = Path(__file__).resolve().parent / "web"
ROLES = ("system", "user", "assistant")


@dataclass
class Settings:
    model_name: str = "wikigpt"
    api_key: str = ""
    max_body_bytes: int = 1 << 20  # 1 MiB: far more text than a small model's context holds
    max_messages: int = 256
    max_tokens_limit: int = 2048
    default_max_tokens: int = 256
    max_n: int = 8
    max_stop: int = 4
    rag_k: int = 3


class ApiError(Exception):
    """A request the server refuses: answered with OpenAI's error JSON and `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error",
                500: "server_error", 503: "server_error"}.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


# ----------------------------------------------------------------------------------------
# Reading and checking a request body (every refusal names the field and what to send)

def number(body: dict, name: str, default, lo, hi, integer=False):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ApiError(400, f"'{name}' must be {'an integer' if integer else 'a number'}, got {value!r}", name)
    if not lo <= value <= hi:
        raise ApiError(400, f"'{name}' must be between {lo} and {hi}, got {value}", name)
    return value


def sampling_of(body: dict, defaults: SamplingParams) -> SamplingParams:
    params = SamplingParams(
        temperature=float(number(body, "temperature", defaults.temperature, 0.0, 2.0)),
        top_k=number(body, "top_k", defaults.top_k, 0, 10**6, integer=True),
        top_p=float(number(body, "top_p", defaults.top_p, 0.0, 1.0)),
        repetition_penalty=float(number(body, "repetition_penalty", defaults.repetition_penalty, 0.5, 2.0)),
        copy=float(number(body, "copy", defaults.copy, 0.0, 1.0)))
    for problem in params.problems():
        raise ApiError(400, problem, problem.split()[0])
    return params


def stop_strings(body: dict, limit: int) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > limit:
        raise ApiError(400, f"'stop' must be a non-empty string or a list of at most {limit} of them", "stop")
    return stop


def message_text(m, i: int) -> str:
    content = m.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(400, f"messages[{i}].content: only text parts are supported "
                                    f"({{\"type\": \"text\", \"text\": ...}}), got {kind!r}", f"messages[{i}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def read_messages(body: dict, limit: int) -> list[Message]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    if len(messages) > limit:
        raise ApiError(400, f"too many messages: {len(messages)} (limit {limit})", "messages")
    out = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        role = "system" if role == "developer" else role  # OpenAI's newer name for the system turn
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}",
                           f"messages[{i}].role")
        out.append(Message(role, message_text(m, i)))
    return out


# ----------------------------------------------------------------------------------------
# One choice being generated: tokens -> text, stop strings, counts

@dataclass
class Choice:
    index: int
    prompt: list[int]
    stream: TextStream
    stops: list[str]
    text: str = ""  # generated so far (cut at a stop string)
    sent: int = 0  # characters of text already handed out
    tokens: int = 0
    finish: str | None = None
    request: Request | None = field(default=None, repr=False)

    def add(self, token: int | None, finish: str | None, hidden: set) -> str:
        """Take one engine event; return the text that may be shown now."""
        if token is not None:
            self.tokens += 1
            if token not in hidden:
                self.text += self.stream.push(token)
        if finish:
            self.text += self.stream.flush()
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text, finish = self.text[:cut], "stop"
        self.finish = finish
        held = 0 if finish else max((k for s in self.stops for k in range(len(s), 0, -1)
                                     if self.text.endswith(s[:k])), default=0)
        delta = self.text[self.sent:len(self.text) - held]  # hold back a possible stop string's start
        self.sent += len(delta)
        return delta


class Server:
    """The model, the engine thread and the metrics, with the logic of each endpoint."""

    def __init__(self, model, tok, settings: Settings, engine: EngineThread, index=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.model, self.tok, self.settings, self.engine, self.index = model, tok, settings, engine, index
        self.block = model.cfg.block_size
        self.registry = r = CollectorRegistry()
        self.requests = Counter("wikigpt_requests", "HTTP requests by path and status", ["path", "status"], registry=r)
        self.tokens_in = Counter("wikigpt_prompt_tokens", "prompt tokens processed", registry=r)
        self.tokens_out = Counter("wikigpt_completion_tokens", "tokens generated", registry=r)
        self.ttft = Histogram("wikigpt_time_to_first_token_seconds", "request arrival to first token", registry=r,
                              buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.tpot = Histogram("wikigpt_time_per_output_token_seconds", "time between tokens of a request",
                              registry=r, buckets=(.002, .005, .01, .02, .05, .1, .25, .5, 1))
        Gauge("wikigpt_queue_depth", "requests waiting for a slot", registry=r).set_function(lambda: engine.queue_depth)
        Gauge("wikigpt_active_sequences", "requests being decoded", registry=r).set_function(lambda: engine.active)

    # ----- building prompts
    def chat_prompt(self, body: dict, max_tokens: int) -> tuple[list[int], list]:
        """The prompt ids, and the passages retrieved into it (with --rag)."""
        if not self.tok.has_chat_tokens():
            raise ApiError(400, "this checkpoint is not chat-tuned (no chat tokens); use /v1/completions, "
                                "or serve a checkpoint from chat_sft.py", "messages")
        messages = read_messages(body, self.settings.max_messages)
        use_rag = body.get("rag", True)
        if not isinstance(use_rag, bool):
            raise ApiError(400, "'rag' must be true or false", "rag")
        room = prompt_room(self.block, max_tokens)
        try:
            ids, kept = fit_history(self.tok, messages, room, limit=self.block - 1)
        except ContextOverflow as e:
            raise ApiError(400, f"{e} (the model's context is {self.block} tokens)", "messages",
                           "context_length_exceeded")
        if self.index is None or not use_rag or kept[-1].role != "user":
            return ids, []
        return grounded_prompt(self.index, self.tok, kept, self.settings.rag_k, room, self.block - 1)

    def completion_prompts(self, body: dict) -> list[list[int]]:
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ApiError(400, "'prompt' must be a string or a non-empty list of strings", "prompt")
        out = []
        for p in prompts:
            ids = [self.tok.doc_sep] + self.tok.encode(p)  # articles were trained as <|endoftext|>text
            if len(ids) >= self.block:
                raise ApiError(400, f"the prompt is {len(ids)} tokens; the model's context is {self.block}. "
                                    "Shorten it.", "prompt", "context_length_exceeded")
            out.append(ids)
        return out

    def max_tokens(self, body: dict) -> int:
        limit = self.settings.max_tokens_limit
        value = number(body, "max_completion_tokens", None, 1, limit, integer=True)
        return value or number(body, "max_tokens", self.settings.default_max_tokens, 1, limit, integer=True)

    # ----- generation
    async def generate(self, prompts: list[list[int]], body: dict, chat: bool, is_gone, sources=()):
        """Run every choice (n per prompt) through the engine; yield (choice, delta) as text
        arrives, and (choice, "") when it finishes. Cancels what is left if the consumer stops.
        With retrieved passages (sources) replies may copy from them (the 'copy' option)."""
        n = number(body, "n", 1, 1, self.settings.max_n, integer=True)
        seed = number(body, "seed", None, -2**63, 2**63 - 1, integer=True)
        defaults = replace(CHAT_DEFAULTS, copy=RAG_COPY) if sources else CHAT_DEFAULTS if chat else SamplingParams()
        params = sampling_of(body, defaults)
        copy_from = CopySource.from_passages(self.tok, [(h.title, h.text) for h in sources]) if sources else None
        stops, max_new = stop_strings(body, self.settings.max_stop), self.max_tokens(body)
        end = self.tok.end_of_turn if chat else self.tok.doc_sep
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        choices = []
        for p, prompt in enumerate(prompts):
            for j in range(n):
                c = Choice(len(choices), prompt, TextStream(self.tok), stops)
                c.request = Request(prompt, max_new, params, {end}, None if seed is None else seed + j,
                                    emit=lambda r, t, f, c=c: loop.call_soon_threadsafe(events.put_nowait, (c, t, f)),
                                    copy_from=copy_from)
                choices.append(c)
        t0 = last = time.perf_counter()
        try:
            self.engine.submit([c.request for c in choices])
        except QueueFull as e:
            raise ApiError(429, f"the server is busy: {e}. Retry in a moment.", code="queue_full")
        self.tokens_in.inc(sum(len(c.prompt) for c in choices))
        try:
            pending, first = len(choices), True
            while pending:
                try:
                    batch = [await asyncio.wait_for(events.get(), timeout=1.0)]
                except asyncio.TimeoutError:
                    if await is_gone():
                        return
                    continue
                while not events.empty():  # under load several tokens wait: they go out as one delta
                    batch.append(events.get_nowait())
                deltas = {}  # choice index -> (choice, text), in arrival order
                for c, token, finish in batch:
                    if c.finish:
                        continue  # already ended by a stop string
                    if finish and finish.startswith("error"):
                        raise ApiError(500, f"generation failed: {finish[7:]}", code="generation_error")
                    now = time.perf_counter()
                    (self.ttft if first else self.tpot).observe(now - (t0 if first else last))
                    first, last = False, now
                    self.tokens_out.inc(token is not None)
                    delta = c.add(token, finish, {end})
                    if c.finish:
                        pending -= 1
                        self.engine.cancel(c.request)  # a stop string may end it before the engine does
                    deltas[c.index] = (c, deltas.get(c.index, (c, ""))[1] + delta)
                for c, delta in deltas.values():
                    if delta or c.finish:
                        yield c, delta
        finally:
            for c in choices:
                if not c.finish:
                    self.engine.cancel(c.request)  # the client left: free its slot at once

    def usage(self, choices: list[Choice]) -> dict:
        prompt = sum(len(p) for p in {id(c.prompt): c.prompt for c in choices}.values())
        done = sum(c.tokens for c in choices)
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


# ----------------------------------------------------------------------------------------
# The HTTP layer

def create_app(server: Server):
    from fastapi import FastAPI, Request as HttpRequest
    from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from fastapi.staticfiles import StaticFiles
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.exceptions import HTTPException

    app = FastAPI(title="wikigpt", docs_url=None, redoc_url=None, openapi_url=None)
    s = server.settings

    def error_response(e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(ApiError)
    async def on_api_error(request, e: ApiError):
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def on_http_error(request, e: HTTPException):
        message = {404: f"no route {request.method} {request.url.path}; the API is under /v1 "
                        "(chat/completions, completions, models)",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return error_response(ApiError(e.status_code, message))

    @app.exception_handler(Exception)
    async def on_crash(request, e: Exception):
        return error_response(ApiError(500, f"internal error: {type(e).__name__}: {e}"))

    def authorized(scope) -> bool:
        headers = dict(scope["headers"])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), s.api_key.encode())

    class Guard:
        """API key check (constant-time compare) and request counts by path and status."""

        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            path, status = scope["path"], [500]
            if s.api_key and (path.startswith("/v1/") or path == "/metrics") and not authorized(scope):
                status[0] = 401
                await error_response(ApiError(401, "missing or wrong API key: send the header "
                                                   "'Authorization: Bearer YOUR_KEY'", code="invalid_api_key")
                                     )(scope, receive, send)
            else:
                async def send_and_note(message):
                    if message["type"] == "http.response.start":
                        status[0] = message["status"]
                    await send(message)
                await self.inner(scope, receive, send_and_note)
            if path.startswith("/v1/"):
                server.requests.labels(path, status[0]).inc()

    app.add_middleware(Guard)

    async def read_body(request: HttpRequest) -> dict:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > s.max_body_bytes:
            raise ApiError(413, f"request body of {declared} bytes is over the limit of {s.max_body_bytes}")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > s.max_body_bytes:
                raise ApiError(413, f"request body is over the limit of {s.max_body_bytes} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON ({e}); send Content-Type: application/json")
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        if not isinstance(body.get("stream", False), bool):
            raise ApiError(400, "'stream' must be true or false", "stream")
        return body

    async def complete(request: HttpRequest, chat: bool):
        body = await read_body(request)
        sources = []
        if chat:
            prompt, sources = server.chat_prompt(body, server.max_tokens(body))
            prompts = [prompt]
        else:
            prompts = server.completion_prompts(body)
        kind = "chat.completion" if chat else "text_completion"
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "object": kind,
                "created": int(time.time()), "model": s.model_name}
        cited = {"sources": [{"title": h.title, "url": h.url, "text": h.text} for h in sources]} if sources else {}
        options = body.get("stream_options") or {}
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        events = server.generate(prompts, body, chat, request.is_disconnected, sources)

        if not body.get("stream"):
            done = {}
            async for c, _ in events:
                done[c.index] = c
            if await request.is_disconnected():
                return Response(status_code=499)
            choices = [done[i] for i in sorted(done)]
            out = [({"index": c.index, "message": {"role": "assistant", "content": c.text}} if chat
                    else {"index": c.index, "text": c.text}) | {"finish_reason": c.finish, "logprobs": None}
                   for c in choices]
            return JSONResponse(head | {"choices": out, "usage": server.usage(choices)} | cited)

        first = await anext(events, None)  # errors before the first token still get a status code

        stream_kind = kind + ".chunk" if chat else kind

        def event(obj: dict) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        def chunk(c, piece: dict, finish=None, **extra) -> str:
            return event(head | {"object": stream_kind, "choices": [
                {"index": c.index, **piece, "finish_reason": finish, "logprobs": None}]} | extra)

        def text(delta: str) -> dict:
            return {"delta": {"content": delta} if delta else {}} if chat else {"text": delta}

        async def sse():
            seen, ended = set(), []
            try:
                item = first
                while item is not None:
                    c, delta = item
                    if chat and c.index not in seen:  # the first delta of each choice carries the role
                        seen.add(c.index)
                        yield chunk(c, {"delta": {"role": "assistant", "content": ""}}, **cited)
                    if delta:
                        yield chunk(c, text(delta))
                    if c.finish:
                        ended.append(c)
                        yield chunk(c, text(""), c.finish)
                    item = await anext(events, None)
                if include_usage:
                    yield event(head | {"object": stream_kind, "choices": [], "usage": server.usage(ended)})
            except ApiError as e:
                yield event(e.body())
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest):
        return await complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        return await complete(request, chat=False)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": s.model_name, "object": "model", "created": 0,
                                            "owned_by": "wikigpt", "context_length": server.block}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": s.model_name, "chat": server.tok.has_chat_tokens(),
                "rag": server.index is not None,
                "context_length": server.block, "auth": bool(s.api_key),
                "active": server.engine.active, "queued": server.engine.queue_depth}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(server.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/")
    async def page():
        return FileResponse(WEB / "index.html")

    app.mount("/web", StaticFiles(directory=WEB), name="web")
    return app


# ----------------------------------------------------------------------------------------

def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="out/chat/best.pt", help="checkpoint to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="0: pick a free port")
    p.add_argument("--api_key", default=os.environ.get("WIKIGPT_API_KEY", ""),
                   help="require 'Authorization: Bearer KEY' (default: $WIKIGPT_API_KEY; empty: open)")
    p.add_argument("--model_name", default="", help="the model id clients see (default: wikigpt-FOLDER)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    add_dtype_arg(p)
    p.add_argument("--rag", action="store_true", help="answer chat turns from retrieved Wikipedia passages")
    p.add_argument("--data", default="", help="with --rag: the dataset folder with the index "
                   "(default: the one the checkpoint was trained on)")
    p.add_argument("--rag_k", type=int, default=3, help="passages retrieved per question")
    p.add_argument("--slots", type=int, default=16, help="requests decoded together (1: batching off)")
    p.add_argument("--max_queue", type=int, default=64, help="requests waiting for a slot before 429")
    p.add_argument("--max_tokens_limit", type=int, default=Settings.max_tokens_limit, help="largest max_tokens")
    p.add_argument("--max_body_bytes", type=int, default=Settings.max_body_bytes, help="largest request body")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="CPU threads for the model (default: all cores but one, which serves HTTP)")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    if args.slots < 1 or args.max_queue < 0 or args.threads < 1:
        raise UsageError("--slots and --threads must be >= 1, --max_queue >= 0")
    # On CPU the model's threads and the HTTP event loop share the cores; measured on 2 cores
    # at 8 streaming clients: 615 tok/s with 1 model thread, 531 with 2 (which starve the loop)
    torch.set_num_threads(args.threads)
    model, tok, info = load_model(args.ckpt, args.device, args.dtype)
    index = open_index(args.data or info["data"], args.rag_k) if args.rag else None
    name = args.model_name or f"wikigpt-{Path(args.ckpt).resolve().parent.name}"
    settings = Settings(model_name=name, api_key=args.api_key, max_tokens_limit=args.max_tokens_limit,
                        max_body_bytes=args.max_body_bytes, rag_k=args.rag_k)
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
    except OSError as e:
        raise UsageError(f"cannot listen on {args.host}:{args.port} ({e.strerror}). Pick another --port "
                         "(0 picks a free one) or stop what uses it.")
    engine = EngineThread(model, args.slots, args.max_queue, tok=tok)
    app = create_app(Server(model, tok, settings, engine, index))
    import uvicorn

    port = sock.getsockname()[1]
    print(f"serving {args.ckpt} ({info['kind']}, step {info['step']}) as {name!r} on "
          f"http://{args.host}:{port} ({args.slots} slots, key {'required' if args.api_key else 'off'}"
          f"{', retrieval from ' + str(args.data or info['data']) if index else ''})",
          flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    engine.stop()


if __name__ == "__main__":
    run_main(main)
