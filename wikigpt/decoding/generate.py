"""
Decoding through the engine from a tool: one engine per model, kept for every call (chat.py's
turns, sample.py, chat SFT's checks, eval.py's replies), and the calls themselves: generate() for
one request's tokens as they come, generate_batch() for many replies decoded together. The engine
itself, its slots and its batch: engine.py.

    for token in generate(model, prompt_ids, 64, SamplingParams(), stop_tokens=tok.stops, tok=tok):
        ...
    replies = generate_batch(model, tok, prompts, 64, SamplingParams(temperature=0))
"""
import threading
from contextlib import contextmanager

from model import GPT
from wikigpt.decoding.engine import Engine, Request
from wikigpt.decoding.sampling import SamplingParams


_ENGINES = threading.Lock()  # guards the engines kept with each model, and their leases


def engine_for(model: GPT, n_slots: int = 1, tok=None, compile: bool | None = False) -> Engine:
    """The process's engine for this model, slot count, tokenizer and compile choice, made once
    and kept with the model (it goes when the model goes). Its buffers and compiled graphs serve
    every call: a new engine per call compiled and recorded every graph again (a chat's turns,
    chat SFT's eot_check), until dynamo's recompile limit failed the call."""
    compile = model.device.type == "cuda" if compile is None else bool(compile)
    with _ENGINES:
        engines = model.__dict__.setdefault("_wikigpt_engines", {})
        key = (n_slots, id(tok), compile, model.device, model.act_dtype)  # (a model moved or cast: anew)
        if key not in engines or engines[key][0] is not tok:
            engines[key] = (tok, Engine(model, n_slots, tok, compile))
        return engines[key][1]


def warmed_engine(model: GPT, tok, n_slots: int = 1) -> Engine:
    """engine_for(..., compile=True) with every graph compiled now, with a progress bar: a chat's
    replies then compile nothing (chat.py and sample.py --compile)."""
    from wikigpt.run.progress import progress_bar

    engine = engine_for(model, n_slots, tok, compile=True)
    if engine.compiled and not engine.warmed:
        with progress_bar(total=engine.graph_count, desc="compiling the decode step", unit="graph") as bar:
            engine.warm_up(bar.update)
    return engine


@contextmanager
def leased(model: GPT, n_slots: int, tok, compile: bool | None, reuse: bool = False):
    """engine_for's engine, held for one call; while another call holds it (a generator not run
    to its end, another thread), a private eager engine instead. reuse: the keys and values the
    last call left are read (chat.py's turns, whose weights never change), else forgotten."""
    engine = engine_for(model, n_slots, tok, compile)
    with _ENGINES:
        mine, engine.leased = not engine.leased, True
    if not mine:
        engine = Engine(model, n_slots, tok, compile=False)
    engine.clear(forget=not reuse)  # a call without reuse reads no keys a call with reuse left
    try:
        yield engine
    finally:
        engine.clear(forget=not reuse)  # a generator closed half-way leaves its request in a slot
        if mine:
            engine.leased = False


def generate(model: GPT, prompt: list[int], max_new_tokens: int, params: SamplingParams,
             stop_tokens=(), seed=None, tok=None, copy_from=None, compile: bool = False, utf8_state: int = 0,
             reuse: bool = False, reply_before=()):
    """Yield the new tokens of one request, decoded exactly as the server decodes it (pass the
    tokenizer, as the server does, to keep the text valid UTF-8; utf8_state: a prompt that ends
    inside a character, Tokenizer.utf8_state_after). compile: through the compiled step
    (warmed_engine warms it first); one-shot tools decode eagerly. reuse: a prompt that starts
    with the last reuse call's prompt and reply prefills only the rest (a chat's turns; only
    while the weights stay as they were). reply_before: the reply's tokens before this prompt's end
    (a context window moved on), counted by the presence and frequency penalties."""
    with leased(model, 1, tok, compile, reuse) as engine:
        out = []
        req = Request(list(prompt), max_new_tokens, params, set(stop_tokens), seed,
                      emit=lambda r, token, finish: out.append(token), copy_from=copy_from, utf8_state=utf8_state,
                      reply_before=list(reply_before))
        engine.add(req)
        while True:
            yield from out
            out.clear()
            if req.finished:
                return
            engine.step()


def generate_batch(model: GPT, tok, prompts: list[list[int]], max_new_tokens: int, params: SamplingParams,
                   seeds: list | None = None, n_slots: int = 8, on_done=None,
                   copy_from: list | None = None, compile: bool = False) -> list[list[int]]:
    """The new tokens of many chat replies (each ends at a special token, tok.stops, or max_new_tokens), decoded
    n_slots at a time; the same tokens as one by one, since a row's logits do not depend on
    the rest of the batch. on_done() is called as each reply ends (for a progress bar);
    copy_from: a CopySource (or None) per prompt, used when params.copy > 0."""
    done = (lambda request, token, finish: finish and on_done()) if on_done else (lambda *_: None)
    requests = [Request(list(p), max_new_tokens, params, tok.stops, seeds[i] if seeds else None, done,
                        copy_from=copy_from[i] if copy_from else None)
                for i, p in enumerate(prompts)]
    waiting = list(reversed(requests))
    with leased(model, n_slots, tok, compile) as engine:
        while waiting or engine.active:
            while waiting and engine.free_slots:
                engine.add(waiting.pop())
            engine.step()
    return [r.tokens for r in requests]
