"""
The server's model side: prompts built from checked requests (chat template, history fitting,
retrieval), their choices run through the engine thread, text handed out as it arrives (stop
strings held back until they can be ruled out), and the Prometheus metrics.
"""
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from wikigpt.chat.chat_template import ContextOverflow, fit_history, prompt_room
from wikigpt.decoding.engine import Request
from wikigpt.decoding.engine_thread import EngineThread, QueueFull
from wikigpt.knowledge.evidence import Found
from wikigpt.knowledge.conversation import find_in_conversation
from wikigpt.knowledge.grounding import cited, copy_plan, evidence_prompt, reader_of
from wikigpt.knowledge.questions import small_talk
from wikigpt.decoding.sampling import CHAT_DEFAULTS, RAG_COPY, RANGES, SamplingParams
from wikigpt.server.connections import ProtocolWarnings
from wikigpt.server.checks import (ApiError, Settings, check_chars, check_token_ids, echo_of, internal_error,
                                   is_token_id, logprobs_of, number, read_messages, sampling_of, stop_strings,
                                   text_limits)
from wikigpt.tokenizer import TextStream

# How often a reply in progress asks whether its client is still there: often enough that one
# who left frees the slots within a fraction of a second, rarely enough to cost nothing per token
DISCONNECT_CHECK_S = 0.25
# Threads that build prompts (tokenizing, fitting the history, retrieval with --rag) off the
# event loop, so /health and the streams keep going meanwhile. One: the retrieval index is not
# promised to be thread-safe, and after the character limits a prompt takes milliseconds.
PROMPT_WORKERS = 1


class StopScan:
    """Stop strings found in a text that grows at its end. Per string, the length of its longest
    prefix that the text ends with, moved on over the new characters only (Knuth-Morris-Pratt):
    O(len(stop)) at worst per token, O(1) per character over a reply, however long the text.
    (Testing every prefix of every stop against the text cost O(len(stop)^2) per token.)"""

    def __init__(self, stops: list[str]):
        self.stops, self.matched = stops, [0] * len(stops)
        self.fallback = [kmp_fallback(s) for s in stops]

    def feed(self, text: str, start: int) -> int:
        """Scan text[start:]; return where the earliest stop string in it begins, or -1."""
        cut = -1
        for j, (stop, fallback) in enumerate(zip(self.stops, self.fallback)):
            k = self.matched[j]
            for i in range(start, len(text)):
                while k and stop[k] != text[i]:
                    k = fallback[k - 1]
                k += stop[k] == text[i]
                if k == len(stop):
                    cut = i + 1 - k if cut < 0 else min(cut, i + 1 - k)
                    break
            self.matched[j] = k
        return cut

    @property
    def held(self) -> int:
        """Characters at the text's end that may be the start of a stop string."""
        return max(self.matched, default=0)


def kmp_fallback(s: str) -> list[int]:
    """fallback[i]: the longest proper prefix of s[:i + 1] that is also its suffix."""
    out, k = [0] * len(s), 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = out[k - 1]
        k += s[i] == s[k]
        out[i] = k
    return out


@dataclass
class TokenLogprob:
    """A generated token's log-probability, its likeliest alternatives [(id, logprob)], and
    where its text lies in the choice's text (text[start:end]; empty while a character it
    begins is incomplete)."""
    token: int
    logprob: float
    top: list
    start: int
    end: int


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
    logprobs: list | None = None  # with logprobs asked: a TokenLogprob per token shown (not the end token)
    handed: int = 0  # of them, the ones handed out (new_logprobs)
    scan: StopScan = field(init=False, repr=False)

    def __post_init__(self):
        self.scan = StopScan(self.stops)

    def add(self, token: int | None, finish: str | None) -> str:
        """Take one engine event; return the text that may be shown now."""
        scanned = len(self.text)  # (an echoed prompt is never scanned for stop strings)
        if token is not None:
            if self.tokens == 0 and self.text and self.logprobs is not None:
                self.echo_logprobs()  # its prompt's are in: the engine scored them before this first token
            self.tokens += 1
            self.text += self.stream.push(token)  # a special token that ended it shows as nothing
            if self.logprobs is not None and token not in self.request.stop_tokens:
                # the engine's thread appends a token's entry before it emits the token (and may be steps ahead)
                logprob, top = self.request.token_logprobs[self.tokens - 1]
                self.logprobs.append(TokenLogprob(token, logprob, top, scanned, len(self.text)))
        if finish:
            self.text += self.stream.flush()
        cut = self.scan.feed(self.text, scanned)
        if cut >= 0:
            self.text, finish = self.text[:cut], "stop"
            if self.logprobs is not None:  # the tokens of the stop string, and any after it, were never shown
                self.logprobs = self.logprobs[:self.handed] + [t for t in self.logprobs[self.handed:] if t.start < cut]
        self.finish = finish
        held = 0 if finish else self.scan.held
        delta = self.text[self.sent:len(self.text) - held]  # hold back a possible stop string's start
        self.sent += len(delta)
        return delta

    def echo_logprobs(self):
        """The echoed prompt's tokens (after the document start the prompt was given) as entries."""
        tok = self.stream.tok
        stream, at = TextStream(tok), 0
        for token, (logprob, top) in zip(self.prompt[1:], self.request.prompt_token_logprobs):
            # (a special token in a prompt of ids is shown as its name, as the echoed text shows it)
            piece = tok.decode([token]) if token in tok.stops else stream.push(token)
            self.logprobs.append(TokenLogprob(token, logprob, top, at, at + len(piece)))
            at += len(piece)

    def new_logprobs(self) -> list[TokenLogprob]:
        """The entries of the tokens whose text has been handed out since the last call (all
        that are left once the choice has finished)."""
        if self.logprobs is None:
            return []
        # (a token holding only a character's first bytes shows no text: it goes out with the next)
        shown = len(self.logprobs) if self.finish else next(
            (i + 1 for i in range(len(self.logprobs) - 1, self.handed - 1, -1)
             if self.logprobs[i].start < self.logprobs[i].end <= self.sent), self.handed)
        new, self.handed = self.logprobs[self.handed:shown], shown
        return new


def deliver(loop, events: asyncio.Queue, event: tuple):
    """An engine thread's event (emit) onto the request's event loop. Once the server has stopped
    (Ctrl-C) the loop is closed and nobody waits for it: the engine's last step must not fail."""
    try:
        loop.call_soon_threadsafe(events.put_nowait, event)
    except RuntimeError:  # "Event loop is closed"
        pass


class Server:
    """The model, the engine thread and the metrics, with the logic of each endpoint."""

    def __init__(self, model, tok, settings: Settings, engine: EngineThread, index=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.model, self.tok, self.engine, self.index = model, tok, engine, index
        self.block = model.cfg.block_size
        self.settings = text_limits(settings, self.block)
        self.prompt_pool = ThreadPoolExecutor(PROMPT_WORKERS, thread_name_prefix="wikigpt-prompt")
        self.preparing = 0  # rows of the requests whose prompts are being built (prompts_admitted)
        self.registry = r = CollectorRegistry()
        self.requests = Counter("wikigpt_requests", "HTTP requests by route (app.ROUTES, else other) and status",
                                ["path", "status"], registry=r)
        self.tokens_in = Counter("wikigpt_prompt_tokens", "prompt tokens processed", registry=r)
        self.tokens_cached = Counter("wikigpt_prompt_tokens_cached", "prompt tokens whose keys and values a slot "
                                     "held already: not prefilled (a chat's last turn, a prompt's choices)", registry=r)
        self.tokens_out = Counter("wikigpt_completion_tokens", "tokens generated", registry=r)
        self.ttft = Histogram("wikigpt_time_to_first_token_seconds", "request arrival to first token", registry=r,
                              buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.tpot = Histogram("wikigpt_time_per_output_token_seconds", "time between tokens of a request",
                              registry=r, buckets=(.002, .005, .01, .02, .05, .1, .25, .5, 1))
        Gauge("wikigpt_queue_depth", "requests waiting for a slot or for their prompt",
              registry=r).set_function(lambda: self.queued)
        Gauge("wikigpt_active_sequences", "requests in a slot: decoding, or their prompt being prefilled", registry=r).set_function(lambda: engine.active)
        r.register(ProtocolWarnings())  # counted by uvicorn's log filter: those requests never reach the app

    # ----- building prompts
    async def off_loop(self, build, *args):
        """build(*args) in the prompt thread: tokenizing and retrieval never hold up the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.prompt_pool, build, *args)

    async def prompts_admitted(self, build, choices: int, *args):
        """off_loop(build, *args) for a request of `choices` rows, refused at once (429) when the
        engine and the requests whose prompts are being built already hold its capacity: checked
        only at submit, a burst queued its retrieval work in the one prompt thread and a request
        then waited seconds there for its 429 (~190 waiting behind 4 slots + 4 queued)."""
        self.check_room(choices)  # never fits: a 400, not a 429 to retry
        return await self.admitted(build, choices, self.engine.held + self.preparing, *args)

    async def tokens_admitted(self, work, *args):
        """off_loop(work, *args) for /tokenize and /detokenize: each counts as a prompt being built
        (they share its thread, and a flood of them would delay every prompt), but not the engine's
        rows, which a client that waits for no reply need not wait for."""
        return await self.admitted(work, 1, self.preparing, *args)

    async def admitted(self, work, rows: int, held: int, *args):
        if held + rows > self.engine.capacity:
            raise ApiError(429, f"the server is busy: {held} choices are running, "
                                f"waiting or being prepared (limit {self.engine.capacity}). Retry in a moment.",
                           code="queue_full")
        self.preparing += rows  # counted on the event loop only: no lock
        try:
            return await self.off_loop(work, *args)
        finally:
            self.preparing -= rows

    def check_fields(self, body: dict, chat: bool):
        """A request's own fields, checked before its capacity (prompts_admitted): a wrong request
        gets its 400 on a busy server too, not a 429 that the OpenAI client retries (and, with --rag,
        not after a retrieval). Checked again where used."""
        number(body, "seed", None, -2**63, 2**63 - 1, integer=True)
        sampling_of(body, CHAT_DEFAULTS if chat else SamplingParams(), self.model.cfg.vocab_size)
        stop_strings(body, self.settings.max_stop, self.settings.max_stop_chars)
        logprobs_of(body, chat)
        echo_of(body, chat)
        self.max_tokens(body)
        if chat and not isinstance(body.get("rag", True), bool):
            raise ApiError(400, "'rag' must be true or false", "rag")
        if chat and self.index is None and (asked := [f for f in ("rag", "copy") if body.get(f) not in (None, False)]):
            raise ApiError(400, f"'{asked[0]}': this server answers from the model alone (serve.py was started "
                                "without --rag): drop it, or start serve.py with --rag", asked[0])
        # the text's shape and size too (an image part, a message over its limit): a pass over what
        # the body's parser already read (at most max_messages messages, max_body_bytes), no tokenizing
        if chat:
            read_messages(body, self.settings)
        else:
            self.completion_prompt_parts(body)

    def chat_prompt(self, body: dict, max_tokens: int) -> tuple[list[int], Found | None, list]:
        """The prompt ids, the evidence found for the last turn (read in the whole conversation the
        messages hold) and the sources shown in the prompt (with --rag and "rag" not false in the
        request; else None and [])."""
        if not self.tok.has_chat_tokens():
            raise ApiError(400, "this checkpoint is not chat-tuned (no chat tokens); use /v1/completions, "
                                "or serve a checkpoint from chat_sft.py", "messages")
        messages = read_messages(body, self.settings)
        use_rag = body.get("rag", True)  # a bool: check_fields
        room = prompt_room(self.block, max_tokens)
        try:
            ids, kept = fit_history(self.tok, messages, room, limit=self.block - 1)
        except ContextOverflow as e:
            raise ApiError(400, f"{e} (the model's context is {self.block} tokens)", "messages",
                           "context_length_exceeded")
        if self.index is None or not use_rag or kept[-1].role != "user" or small_talk(kept[-1].content):
            return ids, None, []  # "Hello!", "Thanks": the model alone, not the articles
        if not kept[-1].content.strip():
            raise ApiError(400, "the last user message is empty: there is no question to look up in the "
                                "articles. Ask one, or send \"rag\": false", f"messages[{len(messages) - 1}].content")
        reader = reader_of(self.index)  # the messages are the conversation: a follow-up carries its entity
        found = find_in_conversation(reader, messages)
        ids, found, sources = evidence_prompt(reader, self.tok, kept, room, self.block - 1, found)
        return ids, found, cited(found, sources, number(body, "copy", RAG_COPY, *RANGES["copy"]) > 0)

    def completion_prompt_parts(self, body: dict) -> list[str | list[int]]:
        """/v1/completions' prompts: text (a string or a list of them, each and all within their
        limits) or token ids of this checkpoint's tokenizer (a list of ids, or a list of such lists:
        what lm-evaluation-harness sends), each shorter than the context."""
        prompt = body.get("prompt")
        one = isinstance(prompt, str) or (isinstance(prompt, list) and prompt and is_token_id(prompt[0]))
        prompts = [prompt] if one else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, (str, list)) for p in prompts):
            raise ApiError(400, "'prompt' must be a string, a list of token ids, or a non-empty list of either",
                           "prompt")
        self.check_room(self.n(body) * len(prompts))
        total = 0
        for i, p in enumerate(prompts):
            param = "prompt" if one else f"prompt[{i}]"
            if isinstance(p, str):
                total += len(p)
                check_chars(len(p), total, self.settings, param)
            else:
                # after the document start, and a token left for the reply: block - 2
                check_token_ids(p, self.model.cfg.vocab_size, self.block - 2, param,
                                "a string or a non-empty list of token ids")
        return prompts

    def completion_prompts(self, body: dict) -> list[list[int]]:
        out = []
        for p in self.completion_prompt_parts(body):
            # articles were trained as <|endoftext|>text: token ids too go after the document start
            ids = [self.tok.doc_sep] + (self.tok.encode(p) if isinstance(p, str) else p)
            if len(ids) >= self.block:
                raise ApiError(400, f"the prompt is {len(ids)} tokens; the model's context is {self.block}. "
                                    "Shorten it.", "prompt", "context_length_exceeded")
            out.append(ids)
        return out

    @property
    def queued(self) -> int:
        """Rows waiting: for a slot, or for their prompt to be built."""
        return self.engine.queue_depth + self.preparing

    def choices(self, body: dict, chat: bool) -> int:
        """The rows a request asks for: n x its prompts (a list of prompts on /v1/completions;
        malformed ones count as one and are refused when the prompt is read)."""
        prompt = body.get("prompt")
        many = not chat and isinstance(prompt, list) and prompt and not is_token_id(prompt[0])
        return self.n(body) * (len(prompt) if many else 1)

    def n(self, body: dict) -> int:
        return number(body, "n", 1, 1, self.settings.max_n, integer=True)

    def check_room(self, choices: int):
        """A request the engine could never hold at once (n x prompts over its slots and queue)
        is refused for what it is, not told to retry (429) forever."""
        if choices > self.engine.capacity:
            raise ApiError(400, f"this request asks for {choices} choices (n x prompts); this server runs at most "
                                f"{self.engine.capacity} at once ({self.engine.engine.capacity} slots + "
                                f"{self.engine.max_queue} waiting): ask for fewer", "n")

    def max_tokens(self, body: dict) -> int:
        limit = self.settings.max_tokens_limit
        default = min(self.settings.default_max_tokens, limit)  # --max_tokens_limit bounds the default too
        older = number(body, "max_tokens", default, 1, limit, integer=True)  # checked even where the newer name wins
        return number(body, "max_completion_tokens", None, 1, limit, integer=True) or older

    # ----- generation
    async def generate(self, prompts: list[list[int]], body: dict, chat: bool, is_gone, found: Found | None = None):
        """Run every choice (n per prompt) through the engine; yield (choice, delta) as text
        arrives, and (choice, "") when it finishes. Cancels what is left if the consumer stops,
        the client leaves (asked every DISCONNECT_CHECK_S) or the request's time is up (504).
        With evidence (found, --rag) a reply copies the best evidence, or says "not found" when
        it scores below the threshold, as chat.py does (the 'copy' option; 0: the model alone)."""
        n = self.n(body)
        self.check_room(n * len(prompts))
        seed = number(body, "seed", None, -2**63, 2**63 - 1, integer=True)
        defaults = replace(CHAT_DEFAULTS, copy=RAG_COPY) if found else CHAT_DEFAULTS if chat else SamplingParams()
        params, said, copy_from = sampling_of(body, defaults, self.model.cfg.vocab_size), None, None
        if found is not None:
            params, said, copy_from = copy_plan(self.tok, found, params)
        stops = stop_strings(body, self.settings.max_stop, self.settings.max_stop_chars)
        top_logprobs, echo = logprobs_of(body, chat), echo_of(body, chat)
        max_new = self.max_tokens(body)
        ends = self.tok.stops  # the turn's end, the document's, or another turn begun
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        choices = []
        for p, prompt in enumerate(prompts):
            # a completion's prompt of token ids may end inside a character: its reply finishes it
            # (chat prompts end with a turn marker)
            shown, pending = ("", b"") if chat else TextStream.text_and_pending(self.tok, prompt[1:])
            utf8_state = self.tok.utf8_state_after(prompt) if pending else 0
            for j in range(n):
                c = Choice(len(choices), prompt, TextStream(self.tok, pending), stops,
                           text=shown if echo else "")  # (after the document start)
                c.request = Request(prompt, max_new, params, ends, None if seed is None else seed + j,
                                    emit=lambda r, t, f, c=c: deliver(loop, events, (c, t, f)),
                                    copy_from=copy_from, utf8_state=utf8_state, logprobs=top_logprobs,
                                    prompt_logprobs=echo and top_logprobs is not None)
                c.logprobs = [] if top_logprobs is not None and said is None else None  # said: not the model's
                choices.append(c)
        if said is not None:  # "not found": said as it is, nothing generated
            self.tokens_in.inc(sum(len(c.prompt) for c in choices))
            for c in choices:
                yield c, self.say(c, said, max_new)
            return
        clock = [time.perf_counter(), None]  # the request's start, its latest token
        try:
            self.engine.submit([c.request for c in choices])
        except QueueFull as e:
            raise ApiError(429, f"the server is busy: {e}. Retry in a moment.", code="queue_full")
        self.tokens_in.inc(sum(len(c.prompt) for c in choices))
        deadline, checked = clock[0] + self.settings.request_timeout_s, clock[0]
        try:
            pending = len(choices)
            while pending:
                batch = await self.next_events(events, deadline)
                if time.perf_counter() - checked >= DISCONNECT_CHECK_S:  # tokens flowing or not
                    checked = time.perf_counter()
                    if await is_gone():
                        return
                for c, delta in self.take(batch, clock).values():
                    pending -= bool(c.finish)
                    if delta or c.finish:
                        yield c, delta
        finally:
            for c in choices:
                if not c.finish:
                    self.engine.cancel(c.request)  # the client left: free its slot at once

    async def next_events(self, events: asyncio.Queue, deadline: float) -> list:
        """The engine events waiting (at least one), or [] after DISCONNECT_CHECK_S without
        any; past the deadline, a 504."""
        left = deadline - time.perf_counter()
        if left <= 0:
            raise ApiError(504, f"the request ran past the server's time limit of "
                                f"{self.settings.request_timeout_s:g} s: ask for fewer tokens or choices, or retry "
                                "when the server is less busy", code="timeout")
        try:
            batch = [await asyncio.wait_for(events.get(), timeout=min(DISCONNECT_CHECK_S, left))]
        except asyncio.TimeoutError:
            return []
        while not events.empty():  # under load several tokens wait: they go out as one delta
            batch.append(events.get_nowait())
        return batch

    def take(self, batch: list, clock: list) -> dict:
        """Engine events into their choices: {choice index: (choice, new text)} in arrival order,
        for the choices that moved (a finished one included)."""
        deltas = {}
        for c, token, finish in batch:
            if c.finish:
                continue  # already ended by a stop string
            if finish and finish.startswith("error"):
                raise internal_error("generation failed", finish[7:])
            now = time.perf_counter()
            (self.ttft if clock[1] is None else self.tpot).observe(now - (clock[1] or clock[0]))
            clock[1] = now
            self.tokens_out.inc(token is not None)
            if not c.tokens:  # its first token: its prompt is in
                self.tokens_cached.inc(c.request.reused)
            delta = c.add(token, finish)
            if c.finish:
                self.engine.cancel(c.request)  # a stop string may end it before the engine does
            deltas[c.index] = (c, deltas.get(c.index, (c, ""))[1] + delta)
        return deltas

    def say(self, c: Choice, text: str, max_new: int) -> str:
        """A fixed reply through the same steps as generated tokens (stop strings, max_tokens,
        token counts): returns the text it shows."""
        ids = self.tok.encode(text)
        shown = ""
        for k, token in enumerate(ids[:max_new]):
            last = k + 1 == min(len(ids), max_new)
            shown += c.add(token, ("stop" if len(ids) <= max_new else "length") if last else None)
            if c.finish:
                break
        return shown

    def usage(self, choices: list[Choice]) -> dict:
        firsts = {id(c.prompt): c for c in reversed(choices)}.values()  # one choice per prompt: the first
        prompt = sum(len(c.prompt) for c in firsts)
        cached = sum(c.request.reused for c in firsts if c.request is not None)  # (the others copy its prompt whole)
        done = sum(c.tokens for c in choices)
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done,
                "prompt_tokens_details": {"cached_tokens": cached}}
