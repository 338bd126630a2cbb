"""
The two shapes of an OpenAI reply: one JSON object when the generation is done, or a stream of
server-sent events (`data: {...}` chunks, then `data: [DONE]`) as text arrives. Both take the
(choice, delta) events of Server.generate; neither knows how the text was made.
"""
import json
import time
import uuid

from wikigpt.server.checks import ApiError


def reply_head(chat: bool, model_name: str) -> dict:
    kind = "chat.completion" if chat else "text_completion"
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "object": kind,
            "created": int(time.time()), "model": model_name}


def logprobs_json(c, entries: list, chat: bool) -> dict | None:
    """A choice's "logprobs" for these tokens (TokenLogprob) in the endpoint's shape: chat's
    {"content": [{token, logprob, bytes, top_logprobs}]}, or the completions' token, token_logprobs,
    top_logprobs and text_offset lists. None where none were asked, or the reply was not
    generated (a "not found" said as it is)."""
    if c.logprobs is None:
        return None
    enc = c.stream.tok.enc

    def piece(token: int) -> tuple[str, list[int]]:  # a token's text (a part of a character: U+FFFD) and bytes
        raw = enc.decode_single_token_bytes(token)
        return raw.decode("utf-8", errors="replace"), list(raw)

    if chat:
        def one(token, logprob):
            text, raw = piece(token)
            return {"token": text, "logprob": logprob, "bytes": raw}
        return {"content": [one(t.token, t.logprob) | {"top_logprobs": [one(i, lp) for i, lp in t.top]}
                            for t in entries], "refusal": None}
    return {"tokens": [piece(t.token)[0] for t in entries], "token_logprobs": [t.logprob for t in entries],
            # the token itself among its alternatives, as OpenAI's completions give it (up to logprobs + 1)
            "top_logprobs": [{piece(i)[0]: lp for i, lp in t.top} | {piece(t.token)[0]: t.logprob} for t in entries],
            "text_offset": [t.start for t in entries]}


async def json_reply(events, head: dict, chat: bool, usage, cited: dict) -> dict:
    """The whole reply as one object, once every choice has finished."""
    done = {}
    async for c, _ in events:
        done[c.index] = c
    choices = [done[i] for i in sorted(done)]
    out = [({"index": c.index, "message": {"role": "assistant", "content": c.text}} if chat
            else {"index": c.index, "text": c.text})
           | {"finish_reason": c.finish, "logprobs": logprobs_json(c, c.new_logprobs(), chat)} for c in choices]
    return head | {"choices": out, "usage": usage(choices)} | cited


def event(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def sse_reply(first, events, head: dict, chat: bool, usage, cited: dict, include_usage: bool):
    """The reply as server-sent events. `first` is the first event, awaited by the caller, so
    that an error before the first token still gets a status code instead of a broken stream.
    Later errors arrive as an error object in the stream, before [DONE]."""
    stream_kind = head["object"] + ".chunk" if chat else head["object"]

    def chunk(c, piece: dict, finish=None, logprobs=None, **extra) -> str:
        return event(head | {"object": stream_kind, "choices": [
            {"index": c.index, **piece, "finish_reason": finish, "logprobs": logprobs}]} | extra)

    def text(delta: str) -> dict:
        return {"delta": {"content": delta} if delta else {}} if chat else {"text": delta}

    seen, ended = set(), []
    try:
        item = first
        while item is not None:
            c, delta = item
            if chat and c.index not in seen:  # the first delta of each choice carries the role
                seen.add(c.index)
                yield chunk(c, {"delta": {"role": "assistant", "content": ""}}, **cited)
            new = c.new_logprobs()  # the tokens of this delta's text (a finish: any left)
            if delta or new:
                yield chunk(c, text(delta), logprobs=logprobs_json(c, new, chat))
            if c.finish:
                ended.append(c)
                yield chunk(c, text(""), c.finish)
            item = await anext(events, None)
        if include_usage:
            yield event(head | {"object": stream_kind, "choices": [], "usage": usage(ended)})
    except ApiError as e:
        yield event(e.body())
    finally:
        await events.aclose()  # closed early (the client left or stalled): its generation is cancelled now
    yield "data: [DONE]\n\n"
