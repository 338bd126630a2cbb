"""
What the server accepts: its limits (Settings), the checks every request field goes through,
and ApiError, a refusal answered with OpenAI's error JSON and the right status code. Nothing
here knows about HTTP frameworks or the model.
"""
import asyncio
import ipaddress
import json
import reprlib
import sys
import traceback
import uuid
from dataclasses import dataclass, replace

from wikigpt.chat.chat_template import Message
from wikigpt.decoding.engine import MAX_TOP_LOGPROBS
from wikigpt.decoding.sampling import MAX_BIAS, MAX_BIASED_IDS, RANGES, SamplingParams

ROLES = ("system", "user", "assistant")
# The text a prompt can use is bounded by the context: English Wikipedia runs about 4.5
# characters per GPT-2 token (3.5 with the 8k BPE, about 1 for Chinese), so a context of B
# tokens holds some 5 B characters of real text. A message over 16 B characters (3x that: room
# for text that packs tighter, tables, code) cannot fit and is refused before it is tokenized;
# a request may carry 64 B characters (the history beyond one context is dropped, oldest
# first, but a chat client sends it all). A 1,024-token model: 16 KiB a message, 64 KiB a request.
MESSAGE_CHARS_PER_TOKEN, REQUEST_CHARS_PER_TOKEN = 16, 64


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
    # a stop string is a word or a turn marker: 256 characters is far beyond a real one (OpenAI's
    # own limit is of that order), and bounds what every token is checked against
    max_stop_chars: int = 256
    max_message_chars: int = 0  # 0: from the model's context (text_limits)
    max_request_chars: int = 0  # 0: from the model's context
    # connections (uvicorn's settings, connections.py): each open one costs a few tens of KB;
    # 256 is 16 slots + 64 queued requests with room for pages, probes and idle keep-alives
    max_connections: int = 256
    keep_alive_s: float = 5  # an idle connection between requests (uvicorn's default)
    header_timeout_s: float = 10  # a request line and headers arrive in one packet; 10 s: a slow link
    max_header_bytes: int = 16 << 10  # a client's headers are under 2 KB (h11's default limit)
    shutdown_timeout_s: float = 5  # on SIGTERM, open streams get this long to end
    # a stream sends ~250 bytes a token, n x 20-100 tokens/s: 64 KB (the kernel doubles it) is
    # seconds of reply, ample for a slow link; Linux would grow it to 4 MB for a client not reading
    send_buffer_bytes: int = 64 << 10
    body_timeout_s: float = 30  # 1 MiB at 1 Mbit/s takes 8 s
    # a request's whole life: 2,048 tokens at the 20 tokens/s of 16 streams on a 2-core CPU
    # take ~100 s; 300 s leaves room for the queue. Over it: 504 (or an error event in a stream)
    request_timeout_s: float = 300
    stall_timeout_s: float = 10  # a stream whose client reads nothing for this long is cancelled
    trusted_hosts: frozenset | None = None  # the Host headers a keyless server answers (host_names)


def text_limits(settings: Settings, block_size: int) -> Settings:
    """Settings with the character limits that were left 0 derived from the model's context."""
    return replace(settings, max_message_chars=settings.max_message_chars or MESSAGE_CHARS_PER_TOKEN * block_size,
                   max_request_chars=settings.max_request_chars or REQUEST_CHARS_PER_TOKEN * block_size)


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def host_names(bind_host: str, port: int) -> frozenset | None:
    """The Host header values a keyless server answers to: its own names with its port. A web
    page on another site can make the browser send requests to 127.0.0.1 under its own name
    (DNS rebinding: evil.example resolved to 127.0.0.1); that Host header is refused. None
    (any) for a server on every interface: opened on purpose (--insecure_no_key), it answers
    whatever name reaches it."""
    if bind_host in ("0.0.0.0", "::", ""):
        return None
    names = {"localhost", "127.0.0.1", "[::1]", f"[{bind_host}]" if ":" in bind_host else bind_host.lower()}
    return frozenset({f"{n}:{port}" for n in names} | (names if port == 80 else set()))


class ApiError(Exception):
    """A request the server refuses: answered with OpenAI's error JSON and `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error",
                500: "server_error", 503: "server_error", 504: "server_error"}.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def internal_error(what: str, detail: BaseException | str) -> ApiError:
    """A failure of the server itself. Its details (which may name this machine's files) go to
    stderr under a short reference; the client gets the reference only."""
    ref = uuid.uuid4().hex[:8]
    print(f"error {ref}: {what}", file=sys.stderr)
    if isinstance(detail, BaseException):
        traceback.print_exception(detail, file=sys.stderr)
    else:
        print(detail, file=sys.stderr)
    return ApiError(500, f"{what}: internal error, see the server's log (reference {ref})", code="internal_error")


# ----------------------------------------------------------------------------------------
# Reading and checking a request body (every refusal names the field and what to send)

def shown(value) -> str:
    """A value as an error message quotes it: its start (reprlib's), not all of a 1 MiB list
    (repr'ing it took as long as parsing it, and the reply echoed 1.5 MB back)."""
    return reprlib.repr(value)


def number(body: dict, name: str, default, lo, hi, integer=False):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ApiError(400, f"'{name}' must be {'an integer' if integer else 'a number'}, got {shown(value)}", name)
    if not lo <= value <= hi:
        raise ApiError(400, f"'{name}' must be between {lo} and {hi}, got {shown(value)}", name)
    return value


def sampling_of(body: dict, defaults: SamplingParams, vocab_size: int) -> SamplingParams:
    knobs = {name: number(body, name, getattr(defaults, name), lo, hi, integer=name == "top_k")
             for name, (lo, hi) in RANGES.items()}  # (top_k an int, the others numbers: floats below)
    params = SamplingParams(**{k: v if k == "top_k" else float(v) for k, v in knobs.items()},
                            logit_bias=logit_bias_of(body, vocab_size))
    for problem in params.problems():
        raise ApiError(400, problem, problem.split()[0].split("[")[0])
    return params


def logit_bias_of(body: dict, vocab_size: int) -> dict | None:
    """OpenAI's `logit_bias`: {"token id": bias}, the ids this model's tokenizer gives (keys are
    strings in JSON), each bias -100..100 (checked with the other knobs: SamplingParams.problems)."""
    bias = body.get("logit_bias")
    if bias is None:
        return None
    if not isinstance(bias, dict):
        raise ApiError(400, f"'logit_bias' must be an object of token ids to biases, got {shown(bias)}", "logit_bias")
    if len(bias) > MAX_BIASED_IDS:
        raise ApiError(400, f"'logit_bias' may bias at most {MAX_BIASED_IDS} token ids, got {len(bias)}", "logit_bias")
    out = {}
    for key, value in bias.items():
        # (the key's length first: int() of thousands of digits is slow, or refused)
        if not (key.isascii() and key.isdigit() and len(key) <= len(str(vocab_size)) and int(key) < vocab_size):
            raise ApiError(400, f"'logit_bias' keys must be token ids of this model's tokenizer, 0 to "
                                f"{vocab_size - 1}, got {shown(key)}", "logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ApiError(400, f"'logit_bias' values must be numbers, got {shown(value)} for {key}", "logit_bias")
        if not -MAX_BIAS <= value <= MAX_BIAS:  # (before float(): an integer of 400 digits overflows it)
            raise ApiError(400, f"'logit_bias' values must be between {-MAX_BIAS:g} and {MAX_BIAS:g}, got "
                                f"{shown(value)} for {key}", "logit_bias")
        out[int(key)] = float(value)
    return out or None


def echo_of(body: dict, chat: bool) -> bool:
    """/v1/completions' `echo`: the prompt before the completion (with `logprobs`, its tokens' too)."""
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise ApiError(400, f"'echo' must be true or false, got {shown(echo)}", "echo")
    if echo and chat:
        raise ApiError(400, "'echo' is a /v1/completions field: a chat reply never repeats the messages", "echo")
    return echo


def logprobs_of(body: dict, chat: bool) -> int | None:
    """How many alternatives each generated token's log-probability comes with, or None when the
    request asks for none. Chat: "logprobs": true and "top_logprobs": 0-20; /v1/completions:
    "logprobs": 0-20 (OpenAI's allows 5 there; vLLM, like this server, 20)."""
    if not chat:
        if body.get("top_logprobs") is not None:
            raise ApiError(400, "'top_logprobs' is a chat field; on /v1/completions send 'logprobs': N (the "
                                f"alternatives per token, 0-{MAX_TOP_LOGPROBS})", "top_logprobs")
        return number(body, "logprobs", None, 0, MAX_TOP_LOGPROBS, integer=True)
    asked = body.get("logprobs")
    if asked is not None and not isinstance(asked, bool):
        raise ApiError(400, f"'logprobs' must be true or false, got {shown(asked)}", "logprobs")
    top = number(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS, integer=True)
    if top is not None and not asked:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return (top or 0) if asked else None


def is_token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_token_ids(ids, vocab_size: int, limit: int, param: str, shape: str, empty_ok: bool = False):
    """Token ids a client sends (a prompt, /detokenize's): a list of at most `limit` (the room
    the context leaves) ids of the vocabulary; its length is checked first, so the loop over
    the ids never runs past a context."""
    if not isinstance(ids, list) or not (ids or empty_ok):
        raise ApiError(400, f"{param} must be {shape}, got {shown(ids)}", param)
    if len(ids) > limit:
        raise ApiError(400, f"{param} is {len(ids):,} tokens, more than the model's context leaves room for "
                            f"({limit}). Shorten it.", param, "context_length_exceeded")
    for t in ids:
        if not (is_token_id(t) and 0 <= t < vocab_size):
            raise ApiError(400, f"{param} holds {shown(t)}: token ids are integers from 0 to {vocab_size - 1} "
                                "(this checkpoint's tokenizer's)", param)


def stop_strings(body: dict, limit: int, max_chars: int) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > limit:
        raise ApiError(400, f"'stop' must be a non-empty string or a list of at most {limit} of them", "stop")
    if (longest := max(map(len, stop), default=0)) > max_chars:
        raise ApiError(400, f"a 'stop' string may be at most {max_chars} characters, got one of {longest:,}", "stop")
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
                                    f"({{\"type\": \"text\", \"text\": ...}}), got {shown(kind)}", f"messages[{i}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def read_messages(body: dict, settings: Settings) -> list[Message]:
    """The messages, refused before any tokenizing when they hold more text than the model's
    context could use (Settings.max_message_chars, max_request_chars)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    if len(messages) > settings.max_messages:
        raise ApiError(400, f"too many messages: {len(messages)} (limit {settings.max_messages})", "messages")
    out, total = [], 0
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        role = "system" if role == "developer" else role  # OpenAI's newer name for the system turn
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}, got {shown(role)}",
                           f"messages[{i}].role")
        out.append(Message(role, message_text(m, i)))
        total += len(out[-1].content)
        check_chars(len(out[-1].content), total, settings, f"messages[{i}].content")
    return out


def check_chars(chars: int, total: int, settings: Settings, param: str):
    """A text of `chars` characters within a message's limit, `total` so far within a request's."""
    if chars > settings.max_message_chars:
        raise ApiError(400, f"{param} has {chars:,} characters (limit {settings.max_message_chars:,}, "
                            "more than the model's context holds): shorten it", param, "context_length_exceeded")
    if total > settings.max_request_chars:
        raise ApiError(400, f"the request's text is over {total:,} characters (limit {settings.max_request_chars:,}, "
                            "several times what the model's context holds): send the recent turns only", param,
                       "context_length_exceeded")


async def read_body(request, settings: Settings) -> dict:
    """The JSON object a request carries, read at most max_body_bytes far (a bigger one is
    refused before it is all in memory) and within body_timeout_s. Only a JSON content type is
    taken: a web page on another site may POST text/plain to this server without the browser
    asking it first (a CORS "simple" request); application/json needs the server's consent."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, f"send the body as JSON with the header 'Content-Type: application/json' "
                            f"(got {shown(kind or 'no content type')})")
    max_bytes = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body of {declared} bytes is over the limit of {max_bytes}")
    from starlette.requests import ClientDisconnect
    raw = bytearray()
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > max_bytes:
                    raise ApiError(413, f"request body is over the limit of {max_bytes} bytes")
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {settings.body_timeout_s:g} s")
    except ClientDisconnect:  # the client left mid-upload (or broke its chunked body): no server error
        raise ApiError(499, "the client closed the connection before its request body arrived")
    # parsed here, on the event loop: ~36 ms for the largest body (max_body_bytes); a worker thread
    # would not free the loop, since the parser holds the GIL throughout (measured: a longer stall)
    return parse_body(raw)


# fields of OpenAI's API that would change what a reply means; a client that sends them gets a
# 400 instead of a reply without them (a client asking for JSON would get free text)
UNSUPPORTED = {"suffix": "text after the completion (fill-in)",
               "tools": "tool calls", "functions": "function calls", "tool_choice": "tool calls",
               "function_call": "function calls", "response_format": "structured output"}


def refuse_unsupported(body: dict):
    for name, what in UNSUPPORTED.items():
        value = body.get(name)
        if name == "response_format" and isinstance(value, dict) and value.get("type") == "text":
            continue  # plain text is what every reply is
        if name in ("tool_choice", "function_call") and value in ("none", "auto") and not body.get("tools") \
                and not body.get("functions"):
            continue  # no tools to call: a plain reply is what "none" (and "auto") asks for
        if value not in (None, False, 0, "", [], {}):
            raise ApiError(400, f"this server does not support {what} ('{name}'): leave it out", name,
                           "unsupported_parameter")


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON ({e}); send Content-Type: application/json")
    except RecursionError:  # the parser recurses once per level: 200,000 '[' overflow its stack
        raise ApiError(400, "the body's JSON is nested too deeply for this server (a request is a few levels deep)")
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    if not isinstance(body.get("stream", False), bool):
        raise ApiError(400, "'stream' must be true or false", "stream")
    if not isinstance(body.get("model", ""), str):  # any name gets the one model; a number is a client bug
        raise ApiError(400, "'model' must be a string", "model")
    return body
