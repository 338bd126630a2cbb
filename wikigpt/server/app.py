"""
The HTTP layer: FastAPI routes for the OpenAI-compatible API, the chat page and /metrics; the
guard in front of them (API key, compared in constant time; the Host header of a keyless
server; request counts); errors as OpenAI's error JSON with the right status, so that a bad
request never stops the server; a stream whose client stops reading is cancelled.
"""
import asyncio
import hmac
import sys
from functools import cache
from pathlib import Path

from wikigpt.knowledge.grounding import listed
from wikigpt.server.checks import ApiError, check_chars, check_token_ids, internal_error, read_body, refuse_unsupported
from wikigpt.server.generation import Server
from wikigpt.server.replies import json_reply, reply_head, sse_reply

WEB = Path(__file__).resolve().parent.parent.parent / "web"  # index.html, app.js, style.css
# the request counter's path label: these routes, and "other" for any other path (a label per
# path would let anyone grow the metrics without bound by asking for random ones)
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/tokenize", "/detokenize", "/health", "/metrics", "/")
KEYED = ("/v1/", "/tokenize", "/detokenize", "/metrics")  # what --api_key guards (the page and /health are open)


def authorized(scope, api_key: str) -> bool:
    """Bytes against bytes: a key with non-ASCII letters arrives as its UTF-8 bytes (curl, browsers)."""
    scheme, _, token = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), api_key.encode())


def error_response(e: ApiError):
    from fastapi.responses import JSONResponse
    return JSONResponse(e.body(), status_code=e.status)


def refusal(scope, settings) -> ApiError | None:
    """Why the guard turns a request away before any route sees it, if it does."""
    if (size := sum(len(k) + len(v) for k, v in scope["headers"])) > settings.max_header_bytes:
        # uvicorn (h11) refuses a header block over the limit only while it is incomplete
        return ApiError(431, f"the request's headers hold {size:,} bytes (limit {settings.max_header_bytes:,})")
    headers = dict(scope["headers"])
    host = headers.get(b"host", b"").decode("latin-1").lower()
    if not settings.api_key and settings.trusted_hosts is not None and host not in settings.trusted_hosts:
        return ApiError(421, f"this server answers to {' or '.join(sorted(settings.trusted_hosts))}, not to Host "
                             f"{host!r}: open it by one of those names. (Another name is how a web page reaches a "
                             "local server through DNS rebinding; a server with --api_key answers any name.)")
    path = scope["path"]
    if settings.api_key and path.startswith(KEYED) and not authorized(scope, settings.api_key):
        return ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer YOUR_KEY'",
                        code="invalid_api_key")
    return None


def guard(server: Server):
    """ASGI middleware: the Host and API key checks, and request counts by route and status."""

    class Guard:
        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            status = [500]  # what a crash that escapes the routes becomes
            try:
                if refused := refusal(scope, server.settings):
                    status[0] = refused.status
                    await error_response(refused)(scope, receive, send)
                else:
                    async def send_and_note(message):
                        if message["type"] == "http.response.start":
                            status[0] = message["status"]
                        await send(message)
                    await self.inner(scope, receive, send_and_note)
            finally:
                server.requests.labels(scope["path"] if scope["path"] in ROUTES else "other", status[0]).inc()
    return Guard


class ClientStalled(Exception):
    pass


@cache
def event_stream_class():
    """StreamingResponse that gives up on a client who stops reading: once a chunk cannot be
    handed to the connection for stall_s seconds (its buffers are full), the stream is closed
    and its generation cancelled, instead of holding the slots and queueing events for it."""
    from fastapi.responses import StreamingResponse
    import anyio

    class EventStream(StreamingResponse):
        stall_s: float = 10

        async def stream_response(self, send):
            async def send_or_give_up(message):
                try:
                    async with asyncio.timeout(self.stall_s):
                        await send(message)
                except TimeoutError:
                    raise ClientStalled from None
            try:
                await super().stream_response(send_or_give_up)
            except ClientStalled:
                print(f"note: a streaming client stopped reading for {self.stall_s:g} s: its request is cancelled",
                      file=sys.stderr)
            finally:
                with anyio.CancelScope(shield=True):  # the generation ends now, even when the task is cancelled
                    await self.body_iterator.aclose()
    return EventStream


async def complete(server: Server, request, chat: bool):
    """POST /v1/chat/completions and /v1/completions: checks, prompts, then one of the replies."""
    from fastapi.responses import JSONResponse, Response

    body = await read_body(request, server.settings)
    refuse_unsupported(body)
    server.check_fields(body, chat)
    found, sources = None, []
    choices = server.choices(body, chat)
    if chat:
        prompt, found, sources = await server.prompts_admitted(server.chat_prompt, choices, body, server.max_tokens(body))
        prompts = [prompt]
    else:
        prompts = await server.prompts_admitted(server.completion_prompts, choices, body)
    head = reply_head(chat, server.settings.model_name)
    cited = {"sources": [{"title": s.article, "label": s.what, "url": s.url, "text": s.text, "number": n}
                         for n, s in listed(sources)]} if sources else {}
    events = server.generate(prompts, body, chat, request.is_disconnected, found)
    if not body.get("stream"):
        reply = await json_reply(events, head, chat, server.usage, cited)
        if await request.is_disconnected():
            return Response(status_code=499)
        return JSONResponse(reply)
    options = body.get("stream_options") or {}
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    first = await anext(events, None)  # errors before the first token still get a status code
    stream = event_stream_class()(sse_reply(first, events, head, chat, server.usage, cited, include_usage),
                                  media_type="text/event-stream",
                                  headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    stream.stall_s = server.settings.stall_timeout_s
    return stream


def create_app(server: Server):
    from fastapi import FastAPI, Request as HttpRequest
    from fastapi.responses import FileResponse, Response
    from fastapi.staticfiles import StaticFiles
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.exceptions import HTTPException

    app = FastAPI(title="wikigpt", docs_url=None, redoc_url=None, openapi_url=None)

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
    async def on_crash(request, e: Exception):  # the details, paths and all, go to the log only
        return error_response(internal_error(f"{request.method} {request.url.path}", e))

    app.add_middleware(guard(server))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest):
        return await complete(server, request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        return await complete(server, request, chat=False)

    @app.post("/tokenize")
    async def tokenize(request: HttpRequest):
        """vLLM's: the ids this checkpoint's tokenizer gives a text (what logit_bias and a token prompt
        take; /v1/completions puts the document start before a prompt's)."""
        body = await read_body(request, server.settings)
        text = body.get("prompt")
        if not isinstance(text, str):
            raise ApiError(400, "'prompt' must be a string: the text to tokenize", "prompt")
        check_chars(len(text), len(text), server.settings, "prompt")
        ids = await server.tokens_admitted(server.tok.encode, text)
        return {"count": len(ids), "max_model_len": server.block, "tokens": ids}

    @app.post("/detokenize")
    async def detokenize(request: HttpRequest):
        """vLLM's: the text of token ids (at most a context of them)."""
        ids = (await read_body(request, server.settings)).get("tokens")
        check_token_ids(ids, server.model.cfg.vocab_size, server.block, "tokens", "a list of token ids", empty_ok=True)
        return {"prompt": await server.tokens_admitted(server.tok.decode, ids)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": server.settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "wikigpt", "context_length": server.block}]}

    @app.api_route("/health", methods=["GET", "HEAD"])  # HEAD: what uptime monitors and load balancers send
    async def health():
        return {"status": "ok", "model": server.settings.model_name, "chat": server.tok.has_chat_tokens(),
                "rag": server.index is not None, "context_length": server.block,
                "auth": bool(server.settings.api_key),
                "active": server.engine.active, "queued": server.queued,
                "compiled": server.engine.engine.compiled}  # false: the decode step runs eagerly (--compile)

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(server.registry), media_type=CONTENT_TYPE_LATEST)

    @app.api_route("/", methods=["GET", "HEAD"])
    async def page():
        return FileResponse(WEB / "index.html")

    app.mount("/web", StaticFiles(directory=WEB), name="web")
    return app
