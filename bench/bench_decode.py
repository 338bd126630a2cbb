"""
The engine's decode step, eager against compiled (torch.compile, fullgraph=True), and int8
against float32 weights: tokens/s of the demo chat model at batch 1 and 8, in one run.

    python bench/bench.py --only decode --ckpt out/chat/best.pt

Warm-up (compilation of each row bucket) is left out of the timed runs and reported apart.
"""
import time

import torch

from wikigpt.checkpoint import load_model
from wikigpt.engine import Engine, Request
from wikigpt.sampling import SamplingParams


def engine_tok_s(model, rows: int, compile: bool, new_tokens: int = 64, repeats: int = 3) -> tuple[float, float]:
    """(decode tokens/s, seconds of warm-up) of `rows` requests decoded together."""
    engine = Engine(model, n_slots=rows, compile=compile)

    def run(n):
        for i in range(rows):
            engine.add(Request([(7 * i + j) % 200 + 1 for j in range(16)], n, SamplingParams(temperature=0.8)))
        t, steps = time.perf_counter(), 0
        while engine.active:
            engine.step()
            steps += 1
        return steps * rows / (time.perf_counter() - t)
    t0 = time.perf_counter()
    run(8)
    warm = time.perf_counter() - t0
    return max(run(new_tokens) for _ in range(repeats)), warm


def decode_rows(ckpt: str) -> list:
    rows, speed = [], {}
    for dtype in (None, "int8"):
        model = load_model(ckpt, "cpu", dtype)[0]
        name = "int8" if dtype else "float32"
        for batch in (1, 8):
            for compile in (False, True):
                try:
                    tok_s, warm = engine_tok_s(model, batch, compile)
                except Exception as e:  # e.g. a kernel the compiler cannot take: say so, go on
                    rows.append((f"engine decode, {name}, batch {batch}, {'compiled' if compile else 'eager'}",
                                 f"failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}"))
                    continue
                speed[(name, batch, compile)] = tok_s
                base = speed.get((name, batch, False), tok_s)
                rows.append((f"engine decode, {name}, batch {batch}, {'compiled' if compile else 'eager'}",
                             f"{tok_s:,.0f} tok/s (x{tok_s / base:.2f} of eager; warm-up {warm:.1f} s)"))
    for batch in (1, 8):
        for compile in (False, True):
            if ("int8", batch, compile) in speed and ("float32", batch, compile) in speed:
                rows.append((f"int8 / float32 decode, batch {batch}, {'compiled' if compile else 'eager'}",
                             f"x{speed[('int8', batch, compile)] / speed[('float32', batch, compile)]:.2f}"))
    return rows
