"""
The HTTP layer: FastAPI routes for the OpenAI-compatible API, the chat page and /metrics; the
API key guard (constant-time compare); errors as OpenAI's error JSON with the right status,
so that a bad request never stops the server.
"""
import hmac
from pathlib import Path

from wikigpt.server.checks import ApiError, read_body
from wikigpt.server.generation import Server
from wikigpt.server.replies import json_reply, reply_head, sse_reply

WEB = Path(__file__).resolve().parent.parent.parent / "web"  # index.html, app.js, style.css


def authorized(scope, api_key: str) -> bool:
    headers = dict(scope["headers"])
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def error_response(e: ApiError):
    from fastapi.responses import JSONResponse
    return JSONResponse(e.body(), status_code=e.status)


def guard(server: Server):
    """ASGI middleware: API key check and request counts by path and status."""
    api_key = server.settings.api_key

    class Guard:
        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            path, status = scope["path"], [500]
            if api_key and (path.startswith("/v1/") or path == "/metrics") and not authorized(scope, api_key):
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
    return Guard


async def complete(server: Server, request, chat: bool):
    """POST /v1/chat/completions and /v1/completions: checks, prompts, then one of the replies."""
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    body = await read_body(request, server.settings.max_body_bytes)
    found, sources = None, []
    if chat:
        prompt, found, sources = server.chat_prompt(body, server.max_tokens(body))
        prompts = [prompt]
    else:
        prompts = server.completion_prompts(body)
    head = reply_head(chat, server.settings.model_name)
    cited = {"sources": [{"title": h.title, "url": h.url, "text": h.text} for h in sources]} if sources else {}
    events = server.generate(prompts, body, chat, request.is_disconnected, found)
    if not body.get("stream"):
        reply = await json_reply(events, head, chat, server.usage, cited)
        if await request.is_disconnected():
            return Response(status_code=499)
        return JSONResponse(reply)
    options = body.get("stream_options") or {}
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    first = await anext(events, None)  # errors before the first token still get a status code
    return StreamingResponse(sse_reply(first, events, head, chat, server.usage, cited, include_usage),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


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
    async def on_crash(request, e: Exception):
        return error_response(ApiError(500, f"internal error: {type(e).__name__}: {e}"))

    app.add_middleware(guard(server))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest):
        return await complete(server, request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        return await complete(server, request, chat=False)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": server.settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "wikigpt", "context_length": server.block}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": server.settings.model_name, "chat": server.tok.has_chat_tokens(),
                "rag": server.index is not None, "context_length": server.block,
                "auth": bool(server.settings.api_key),
                "active": server.engine.active, "queued": server.engine.queue_depth}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(server.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/")
    async def page():
        return FileResponse(WEB / "index.html")

    app.mount("/web", StaticFiles(directory=WEB), name="web")
    return app
