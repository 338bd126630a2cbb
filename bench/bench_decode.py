"""
The engine's decode step: eager against compiled (torch.compile, fullgraph=True), int8 against
float32 weights (tokens/s of the demo chat model at batch 1 and 8); one user's request through
the engine against model.generate; n choices of one prompt prefilled once against once each; a
long prompt prefilled whole or in chunks beside decoding streams; a chat's next turn prefilling
only its new tokens against its whole history; and a compiled chat session's compile time, in one run.

    python bench/bench.py --only decode --ckpt out/chat/best.pt

Warm-up (compilation of each graph) is left out of the timed runs and reported apart. Without
the checkpoint, only the rows of the random 6x384 model run.
"""
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from model import GPT, GPTConfig
from wikigpt.decoding.load import load_model
from wikigpt.decoding.engine import Engine, Request
from wikigpt.decoding.generate import generate, warmed_engine
from wikigpt.decoding.engine_thread import PREFILL_TOKENS
from wikigpt.decoding.sampling import CHAT_DEFAULTS, SamplingParams

ONE_USER = 256  # new tokens of the one-user runs (fewer where the context is shorter)
CHAT_TURNS = 20


def engine_tok_s(model, rows: int, compile: bool, new_tokens: int = 64,
                 repeats: int = 3, logprobs: int | None = None) -> tuple[float, float, Engine]:
    """(decode tokens/s, seconds of warm-up, the engine) of `rows` requests decoded together (each
    asking for `logprobs` alternatives, if not None). A compiled engine whose step failed to
    compile decoded eagerly: engine.compiled says which ran."""
    engine = Engine(model, n_slots=rows, compile=compile)

    def run(n):
        for i in range(rows):
            engine.add(Request([(7 * i + j) % 200 + 1 for j in range(16)], n, SamplingParams(temperature=0.8),
                               logprobs=logprobs))
        t, steps = time.perf_counter(), 0
        while engine.active:
            engine.step()
            steps += 1
        return steps * rows / (time.perf_counter() - t)
    t0 = time.perf_counter()
    run(new_tokens)  # compiles (and on a GPU records) every graph the timed runs step through
    warm = time.perf_counter() - t0
    return max(run(new_tokens) for _ in range(repeats)), warm, engine


def engine_rows(ckpt: str) -> list:
    rows, speed = [], {}
    for dtype in (None, "int8"):
        model = load_model(ckpt, "cpu", dtype)[0]
        name = "int8" if dtype else "float32"
        for batch in (1, 8):
            for compile in (False, True):
                try:
                    tok_s, warm, engine = engine_tok_s(model, batch, compile)
                except Exception as e:  # e.g. a kernel the compiler cannot take: say so, go on
                    rows.append((f"engine decode, {name}, batch {batch}, {'compiled' if compile else 'eager'}",
                                 f"failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}"))
                    continue
                label = f"engine decode, {name}, batch {batch}, {'compiled' if compile else 'eager'}"
                if compile and not engine.compiled:  # its speed is eager's: not a compiled number
                    rows.append((label, "failed: the step fell back to eager (its warning above says why)"))
                    continue
                speed[(name, batch, compile)] = tok_s
                base = speed.get((name, batch, False), tok_s)
                rows.append((label, f"{tok_s:,.0f} tok/s (x{tok_s / base:.2f} of eager; warm-up {warm:.1f} s)"))
    for batch in (1, 8):
        for compile in (False, True):
            if ("int8", batch, compile) in speed and ("float32", batch, compile) in speed:
                rows.append((f"int8 / float32 decode, batch {batch}, {'compiled' if compile else 'eager'}",
                             f"x{speed[('int8', batch, compile)] / speed[('float32', batch, compile)]:.2f}"))
    return rows


def one_user_rows(model, name: str, repeats: int = 3) -> list:
    """One request at a time, eager: the engine's generate against model.generate (temperature
    and top-k, with its KV cache), from a 1-token prompt. Interleaved, best of `repeats` each, so
    that a busy machine slows both alike. The engine's sampler with the same knobs (top-p and the
    repetition penalty off), and with its defaults (both on: more work per token)."""
    n = min(ONE_USER, model.cfg.block_size - 2)  # the engine ends a reply where the context ends
    runs = {"model.generate": lambda: model.generate([0], n, temperature=0.8, top_k=50, seed=0),
            "engine, same knobs": lambda: generate(model, [0], n, SamplingParams(0.8, 50, 1.0, 1.0), seed=0),
            "engine, default knobs": lambda: generate(model, [0], n, SamplingParams(), seed=0)}
    best = dict.fromkeys(runs, 0.0)
    for round in range(repeats + 1):  # round 0 warms up (allocations, the engine made once)
        for what, run in runs.items():
            t = time.perf_counter()
            tokens = len(list(run()))
            if round:
                best[what] = max(best[what], tokens / (time.perf_counter() - t))
    base = best["model.generate"]
    return [(f"one user, {name}, {n} tokens, {what}", f"{tok_s:,.0f} tok/s (x{tok_s / base:.2f} of model.generate)")
            for what, tok_s in best.items()]


def chat_session_rows(model, tok, new_tokens: int = 32) -> list:
    """chat.py --compile: the step compiled once before the first reply, then CHAT_TURNS replies
    with a growing history (every key span is reached). Before, each reply made a new engine and
    compiled again; now the turns compile nothing."""
    t0 = time.perf_counter()
    engine = warmed_engine(model, tok)
    warm, graphs = time.perf_counter() - t0, counters["stats"]["unique_graphs"]
    step = max(1, (model.cfg.block_size - new_tokens - 16) // CHAT_TURNS)  # the history grows to the context
    times = []
    for turn in range(CHAT_TURNS):
        prompt = [(5 * j + turn) % 200 + 1 for j in range(8 + step * turn)]
        t = time.perf_counter()
        list(generate(model, prompt, new_tokens, CHAT_DEFAULTS, tok.stops, seed=turn, tok=tok, compile=True))
        times.append(time.perf_counter() - t)
    after = counters["stats"]["unique_graphs"] - graphs
    return [(f"chat --compile, {CHAT_TURNS} turns", f"warm-up {warm:.1f} s ({engine.graph_count} graphs, "
             f"compiled={engine.compiled}); turn 1 {times[0]:.2f} s, turns 2-{CHAT_TURNS} {max(times[1:]):.2f} s at "
             f"most; graphs compiled during the turns: {after}")]


def shared_prefill_rows(model, name: str, n: int = 8, repeats: int = 3) -> list:
    """A request for n choices of one long prompt: the time until every choice has its first
    token, one prefill copied to the others (Engine.shared_prefill) against a prefill each.
    Interleaved, best of `repeats` each."""
    prompt = [(11 * j) % 200 + 1 for j in range(model.cfg.block_size - 32)]
    best = {True: float("inf"), False: float("inf")}
    for round in range(repeats + 1):  # round 0 warms up
        for share in best:
            engine = Engine(model, n_slots=n, compile=False)
            if not share:
                engine.shared_prefill = lambda req, slot: None
            t = time.perf_counter()
            for i in range(n):  # 2 tokens each: a choice that ended at its first would free its slot
                engine.add(Request(prompt, 2, SamplingParams(), seed=i))
            if round:
                best[share] = min(best[share], time.perf_counter() - t)
    return [(f"{n} choices of a {len(prompt)}-token prompt, {name}, until each has its first token",
             f"{best[True] * 1e3:,.0f} ms with one prefill shared, {best[False] * 1e3:,.0f} ms with one each "
             f"(x{best[False] / best[True]:.1f})")]


def chunked_prefill_rows(streams: int = 4, repeats: int = 3) -> list:
    """A long prompt joins while `streams` requests decode: the streams' longest wait between two
    tokens, and the newcomer's time to its first token, with its prompt prefilled whole before the
    next step against in chunks between steps (Engine.fill's budget; a server's is
    engine_thread.PREFILL_TOKENS). The random 6x384 model with a 1,024-token context, a 960-token
    prompt; interleaved, best of `repeats` each."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=8192, block_size=1024, n_layer=6, n_head=6, n_embd=384)).eval()
    prompt = [(11 * j) % 200 + 1 for j in range(960)]
    budgets = {"whole": float("inf"), **{f"in chunks of {c}": c for c in (PREFILL_TOKENS, PREFILL_TOKENS // 2,
                                                                         PREFILL_TOKENS // 4)}}
    best = {name: (float("inf"), float("inf")) for name in budgets}
    for round in range(repeats + 1):  # round 0 warms up
        for name, budget in budgets.items():
            engine = Engine(model, n_slots=8, compile=False)
            for i in range(streams):
                engine.add(Request([(7 * i + j) % 200 + 1 for j in range(16)], 200, SamplingParams()))
            for _ in range(3):
                engine.step()
            newcomer = Request(prompt, 4, SamplingParams())
            t = last = time.perf_counter()
            engine.join(newcomer)
            wait, first = 0.0, None
            while len(newcomer.tokens) < 2:  # until it has decoded beside them
                engine.fill(budget)
                if newcomer.tokens and first is None:
                    first = time.perf_counter() - t
                engine.step()
                now = time.perf_counter()
                wait, last = max(wait, now - last), now
            if round:
                best[name] = (min(best[name][0], wait), min(best[name][1], first))
    whole = best["whole"][0]
    return [(f"a 960-token prompt joins {streams} streams (6x384 random init), prefilled {name}",
             f"the streams' longest wait between two tokens {w * 1e3:,.0f} ms (x{whole / w:.1f} shorter than whole), "
             f"the newcomer's first token after {f * 1e3:,.0f} ms") for name, (w, f) in best.items()]


def conversation_rows(turns: int = 9, repeats: int = 3) -> list:
    """Chats through the engine, each turn's prompt the last prompt, its reply (64 tokens) and a
    40-token message: the last turn's time to its first token and the prompt tokens prefilled, with
    the keys and values of the last prompt and reply reused (Engine.reuse_prefix) against the whole
    history prefilled each turn; one chat, then 4 taking turns (Engine.keep_left). The random 6x384
    model with a 1,024-token context, 8 slots; best of `repeats` each."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=8192, block_size=1024, n_layer=6, n_head=6, n_embd=384)).eval()
    rows = []
    for talks in (1, 4):
        best = {}
        for rep in range(repeats + 1):  # the first warms up
            for reuse in (True, False):
                engine = Engine(model, n_slots=8, compile=False)
                if not reuse:
                    engine.reuse_prefix = lambda req: None
                prompts, last, prefilled = [[] for _ in range(talks)], 0.0, 0
                for turn in range(turns):
                    for talk, prompt in enumerate(prompts):
                        prompt += [(13 * j + turn + talk) % 200 + 1 for j in range(40)]
                        req = Request(list(prompt), 64, SamplingParams(), seed=turn)
                        t = time.perf_counter()
                        engine.join(req)
                        prefilled += engine.fill()
                        last = time.perf_counter() - t  # (the last turn's counts)
                        while engine.active:
                            engine.step()
                        prompt += req.tokens
                if rep:
                    best[reuse] = min(best.get(reuse, (float("inf"), 0)), (last, prefilled))
        (last, tokens), (last_all, tokens_all) = best[True], best[False]
        rows.append((f"{talks} chat{'s taking turns' if talks > 1 else ''}, {turns} turns{' each' * (talks > 1)} (40-token messages, "
                     f"64-token replies; 6x384 random init), the last prompt {len(prompts[-1]) - 64} tokens",
                     f"the last turn's first token after {last * 1e3:,.0f} ms reusing the keys, {last_all * 1e3:,.0f} "
                     f"ms prefilling it all (x{last_all / last:.1f}); prompt tokens prefilled {tokens:,} against "
                     f"{tokens_all:,}"))
    return rows


def logprob_rows(model, name: str, rows: int = 8) -> list:
    """What asking for each token's logprob and 5 alternatives costs a batch of 8 (Engine.logprobs:
    a log-softmax and a top-k of the rows that ask, one more read from the device per step)."""
    out = []
    for compile in (False, True):
        plain = max(engine_tok_s(model, rows, compile)[0] for _ in range(2))
        asked = max(engine_tok_s(model, rows, compile, logprobs=5)[0] for _ in range(2))
        out.append((f"decode with logprobs (top 5), {name}, batch {rows}, {'compiled' if compile else 'eager'}",
                    f"{asked:,.0f} tok/s vs {plain:,.0f} without (x{asked / plain:.2f})"))
    return out


def random_6x384():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=8192, block_size=512, n_layer=6, n_head=6, n_embd=384)).eval()


def decode_rows(ckpt: str) -> list:
    rows = (one_user_rows(random_6x384(), "6x384 random init") + shared_prefill_rows(random_6x384(), "6x384 random init")
            + chunked_prefill_rows() + conversation_rows() + logprob_rows(random_6x384(), "6x384 random init"))
    if not Path(ckpt).is_file():
        return rows + [("decode, demo chat model", f"skipped: no chat checkpoint at {ckpt} (run make demo first)")]
    model, tok, _ = load_model(ckpt, "cpu")
    return rows + one_user_rows(model, "demo chat model") + engine_rows(ckpt) + chat_session_rows(model, tok)
