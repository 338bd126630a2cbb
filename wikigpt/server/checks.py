"""
What the server accepts: its limits (Settings), the checks every request field goes through,
and ApiError, a refusal answered with OpenAI's error JSON and the right status code. Nothing
here knows about HTTP frameworks or the model.
"""
import json
from dataclasses import dataclass

from wikigpt.chat_template import Message
from wikigpt.sampling import RANGES, SamplingParams

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
        temperature=float(number(body, "temperature", defaults.temperature, *RANGES["temperature"])),
        top_k=number(body, "top_k", defaults.top_k, *RANGES["top_k"], integer=True),
        top_p=float(number(body, "top_p", defaults.top_p, *RANGES["top_p"])),
        repetition_penalty=float(number(body, "repetition_penalty", defaults.repetition_penalty,
                                        *RANGES["repetition_penalty"])),
        copy=float(number(body, "copy", defaults.copy, *RANGES["copy"])))
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


async def read_body(request, max_bytes: int) -> dict:
    """The JSON object a request carries, read at most max_bytes far (a bigger one is refused
    before it is all in memory)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body of {declared} bytes is over the limit of {max_bytes}")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise ApiError(413, f"request body is over the limit of {max_bytes} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON ({e}); send Content-Type: application/json")
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    if not isinstance(body.get("stream", False), bool):
        raise ApiError(400, "'stream' must be true or false", "stream")
    if not isinstance(body.get("model", ""), str):  # any name gets the one model; a number is a client bug
        raise ApiError(400, "'model' must be a string", "model")
    return body
