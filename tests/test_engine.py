"""wikigpt/decoding/engine.py: continuous batching that never changes a request's tokens (beyond
ROW_LOGIT_TOLERANCE), a prompt prefilled in chunks as whole, and the compiled step as a GPU needs it: one
engine per model reused by every call (generate.py), a graph count the recompile limit allows, warm-up on
the serving thread, eager decoding when compiling fails, and attention over only the keys in use. Keys
a slot holds, reused: test_engine_reuse.py.

Most compiled tests run dynamo with its "eager" backend (the `dynamo_only` fixture): graphs,
guards, recompiles and the recompile limit are dynamo's, whatever backend turns the graphs into
code, and inductor takes seconds per graph on a CPU. One test compiles through inductor."""
import functools
import math
import queue
import random
import threading
from collections import Counter

import pytest
import torch
from torch._dynamo.utils import counters

import wikigpt.decoding.decode as decode_module
import wikigpt.decoding.engine as engine_module
from model import GPT, GPTConfig
from wikigpt.decoding.engine import Engine, Request
from wikigpt.decoding.generate import generate
from wikigpt.decoding.engine_thread import EngineThread
from wikigpt.decoding.sampling import SamplingParams


def tiny_model(arch="modern"):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=64, n_layer=2, n_head=2, n_embd=64, arch=arch)).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.1)  # random but confident: many near-ties would not test much
    return model


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_a_request_gets_the_same_tokens_whatever_else_is_in_the_batch(arch):
    model = tiny_model(arch)
    rng = random.Random(0)
    prompts = [[rng.randrange(300) for _ in range(rng.randrange(1, 30))] for _ in range(10)]
    params = SamplingParams(temperature=1.0)
    alone = [list(generate(model, p, 30, params, seed=i)) for i, p in enumerate(prompts)]
    crowded, engine = [[] for _ in prompts], Engine(model, n_slots=8)
    waiting = [Request(p, 30, params, seed=i, emit=lambda r, t, f, i=i: crowded[i].append(t))
               for i, p in enumerate(prompts)]
    while waiting or engine.active:  # 10 requests through 8 slots: joins and leaves mid-flight
        while waiting and engine.free_slots:
            engine.add(waiting.pop(0))
        engine.step()
    assert crowded == alone
    greedy = list(generate(model, prompts[0], 5, SamplingParams(temperature=0)))
    assert greedy == list(model.generate(prompts[0], 5, temperature=0))  # same as the plain path


def test_a_decode_rows_logits_agree_within_1e_5_alone_and_in_a_full_batch_and_greedy_tokens_are_equal(monkeypatch):
    """The engine's promise (wikigpt/decoding/engine.py): a row's logits alone and beside 6 other rows agree
    within ROW_LOGIT_TOLERANCE (BLAS kernels split rows and threads differently by batch shape, so
    bitwise equality holds on some machines and not others), and greedy tokens are equal where the
    top two logits are further apart than that."""
    model, rows_seen = tiny_model(), {}
    real_pick = decode_module.pick

    def recording(state, model, rows, logits, k_max):  # the logits each slot's token is sampled from
        slots = torch.arange(state.last.size(0))[rows].tolist()
        for slot, row in zip(slots, logits):
            rows_seen.setdefault(slot, []).append(row.clone())
        return real_pick(state, model, rows, logits, k_max)
    for module in (engine_module, decode_module):  # the prefill's first token, and the steps'
        monkeypatch.setattr(module, "pick", recording)

    def run(others: int):
        rows_seen.clear()
        engine = Engine(model, n_slots=8, compile=False)
        target = Request([5, 6, 7, 8], 6, SamplingParams(temperature=0))
        for i in range(others):  # other requests first: the target lands in a later slot
            engine.add(Request(list(range(1, 3 + 5 * i)), 6, SamplingParams(temperature=0)))
        engine.add(target)
        while not target.finished:
            engine.step()
        return rows_seen[target.slot][:len(target.tokens)], target.tokens
    (alone, alone_tokens), (crowded, crowded_tokens) = run(0), run(6)
    assert len(alone) == 6
    for a, b in zip(alone, crowded):
        torch.testing.assert_close(b, a, rtol=0, atol=engine_module.ROW_LOGIT_TOLERANCE)
        top2 = a.topk(2).values
        assert top2[0] - top2[1] > 2 * engine_module.ROW_LOGIT_TOLERANCE  # no tie within the tolerance: tokens must agree
    assert crowded_tokens == alone_tokens


@pytest.mark.parametrize("arch", ["gpt2", "modern"])  # learned positions, rotary
def test_a_prompt_prefilled_in_chunks_between_steps_gives_the_tokens_of_one_prefill(monkeypatch, arch):
    """Engine.fill(budget): a long prompt's prefill goes on over several calls, other streams decoding
    between them (their padding rows run over its slot); its first token's logits agree with one
    whole prefill's within ROW_LOGIT_TOLERANCE, and its seeded tokens, drawn with a repetition penalty
    over the prompt's ids, are the same."""
    model, firsts = tiny_model(arch), []
    real_pick = engine_module.pick
    monkeypatch.setattr(engine_module, "pick", lambda state, model, rows, logits, k_max: (
        firsts.append(logits.clone()), real_pick(state, model, rows, logits, k_max))[1])
    prompt = [(7 * i) % 290 + 1 for i in range(50)]
    params = SamplingParams(temperature=1.0, repetition_penalty=1.3)

    def run(budget):
        engine, firsts[:] = Engine(model, n_slots=4, compile=False), []
        streams = [Request([3, 4 + i], 40, params, seed=i) for i in range(2)]
        for stream in streams:
            engine.add(stream)  # slots 0 and 1, decoding: a step runs 4 rows
        long = Request(prompt, 8, params, seed=2)
        engine.join(long)  # slot 2: a padding row of every step while it is prefilled
        fills = []
        while not long.tokens:
            fills.append(engine.fill(budget))
            engine.step()
        while not long.finished:
            engine.step()
        return fills, long.tokens, firsts[-1], len(streams[0].tokens)
    (fills, tokens, first, streamed), (whole, whole_tokens, whole_first, _) = run(16), run(math.inf)
    assert fills == [16, 16, 16, 2] and whole == [50]
    assert streamed > 4  # the stream got a token after every chunk
    torch.testing.assert_close(first, whole_first, rtol=0, atol=engine_module.ROW_LOGIT_TOLERANCE)
    assert tokens == whole_tokens


# ----- the compiled step as a GPU needs it

GREEDY = SamplingParams(temperature=0)


@pytest.fixture
def dynamo_only(monkeypatch):
    """torch.compile through dynamo with its "eager" backend: the same graphs, guards and limits,
    without inductor's seconds of code generation per graph."""
    real = torch.compile  # wrapped: the engine reads its signature
    monkeypatch.setattr(torch, "compile", functools.wraps(real)(lambda fn, **kw: real(fn, **{**kw, "backend": "eager",
                                                                                            "mode": None})))


def one_layer():
    """The smallest model for compiled tests: tracing time grows with the layers."""
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=300, block_size=64, n_layer=1, n_head=2, n_embd=32)).eval()


def graphs_made() -> tuple[int, int]:
    """(graphs dynamo made, frames it was asked to compile) in this process so far."""
    return counters["stats"]["unique_graphs"], counters["frames"]["total"]


@pytest.mark.parametrize("reuse", [False, True])
def test_a_kept_engine_shares_no_prompt_across_calls_so_changed_weights_are_read(reuse):
    """generate() keeps one engine per model: a prompt it held for the last call must not be
    copied into the next, since the weights may have changed in between (a training run's samples);
    only a call that asks to reuse them reads what a call with reuse left (chat.py's turns)."""
    model, prompt = tiny_model(), [5, 6, 7, 8]
    list(generate(model, prompt, 4, GREEDY, reuse=reuse))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.5)
    assert list(generate(model, prompt, 4, GREEDY)) == list(model.generate(prompt, 4, temperature=0))


def test_ten_generate_calls_share_one_engine_and_compile_once(monkeypatch):
    # Each call made a new Engine: new buffers (CUDA graphs re-recorded on their addresses) and,
    # on a GPU, a recompile per call until FailOnRecompileLimitHit (a chat's 9th turn, chat SFT's
    # eot_check). Through inductor here: the compile a CPU user gets with --compile.
    model, caches = one_layer(), []
    real_init = decode_module.SlotCache.__init__
    monkeypatch.setattr(decode_module.SlotCache, "__init__", lambda self, *a: (caches.append(self), real_init(self, *a))[1])
    first = list(generate(model, [1, 2, 3], 4, GREEDY, compile=True))
    made = graphs_made()
    for _ in range(9):
        assert list(generate(model, [1, 2, 3], 4, GREEDY, compile=True)) == first
    assert len(caches) == 1 and graphs_made() == made  # one engine; nothing compiled after the first call


def test_a_compiled_engine_with_48_slots_warms_up_and_then_never_recompiles(dynamo_only):
    # 48 slots: row buckets 1, 4, 8, 16, 32, 48, two candidate counts each: 12 graphs, over
    # dynamo's default limit of 8 (with fullgraph=True, the 9th raised FailOnRecompileLimitHit)
    engine = Engine(one_layer(), n_slots=48, compile=True)
    engine.warm_up()
    made = graphs_made()
    for rows in engine.row_buckets():
        for top_k in (50, 0):
            requests = [Request([1, 2], 3, SamplingParams(top_k=top_k), seed=i) for i in range(rows)]
            for r in requests:
                engine.add(r)
            while engine.active:
                engine.step()
    assert engine.compiled and graphs_made() == made


def test_warm_up_runs_on_the_engine_thread_and_calls_each_graph_three_times(dynamo_only):
    # CUDA graph trees are per thread, and record a graph on its 2nd call (the 1st is a warm-up
    # run): a graph warmed on the main thread and first replayed on the engine thread failed there
    thread = EngineThread(one_layer(), n_slots=4, start=False, compile=True)
    engine, calls = thread.engine, []
    compiled = engine.step_fn.fn

    def spy(model, state, k_max):
        calls.append((threading.get_ident(), state.cache.n, state.cache.span, k_max))
        return compiled(model, state, k_max)
    engine.step_fn.fn = spy
    progress, ticks, done = queue.SimpleQueue(), 0, threading.Event()
    try:
        thread.start(progress)
        while progress.get(timeout=60):
            ticks += 1
        warm = list(calls)
        thread.submit([Request([1, 2, 3], 4, GREEDY, emit=lambda r, t, f: f and done.set())])
        assert done.wait(30) and len(calls) > len(warm)
    finally:
        thread.stop()
    assert {ident for ident, *_ in calls} == {thread.thread.ident}  # warm-up and serving: one thread
    per_graph = Counter(call[1:] for call in warm)
    assert ticks == len(per_graph) == engine.graph_count == 4  # rows 1 and 4, top_k on and off
    assert min(per_graph.values()) >= 3


@pytest.mark.parametrize("error", [torch._dynamo.exc.FailOnRecompileLimitHit("limit hit"),
                                   torch._dynamo.exc.InternalTorchDynamoError("internal"),
                                   RuntimeError("a kernel the compiler cannot take")],
                         ids=["recompile-limit", "dynamo-error", "any-error-on-the-first-call"])
def test_a_compile_failure_decodes_eagerly_with_one_warning(error, capsys):
    model = tiny_model()
    eager = [list(generate(model, [1 + i, 2, 3], 8, GREEDY)) for i in range(2)]
    engine, got = Engine(model, n_slots=4, compile=True), [[], []]

    def failing(*args):
        raise error
    engine.step_fn.fn = failing
    for i in range(2):
        engine.add(Request([1 + i, 2, 3], 8, GREEDY, emit=lambda r, t, f, i=i: got[i].append(t)))
    while engine.active:
        engine.step()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert got == eager and not engine.compiled
    assert len(warnings) == 1 and "eager" in warnings[0] and str(error) in warnings[0]


def test_on_cuda_a_graphs_second_call_that_fails_decodes_eagerly_too(capsys):
    """CUDA graph trees run a graph's first call as a warm-up and record it on the second: an
    out-of-memory there is still the compiler's failure, and decodes eagerly. Off CUDA, a graph
    that ran once and then fails is a real failure, raised."""
    from wikigpt.decoding.decode import Step, decode_step

    model = tiny_model()
    eager = list(generate(model, [1, 2, 3], 8, GREEDY))
    for cuda in (True, False):
        engine, got, calls = Engine(model, n_slots=4, compile=True), [], []
        engine.step_fn = Step(engine.graph_count, cuda)  # the step a CUDA engine makes (compiled lazily: not here)

        def recording_fails(model, state, k_max):
            calls.append(k_max)
            if len(calls) == 2:
                raise torch.OutOfMemoryError("CUDA out of memory (the graph pool, recording)")
            return decode_step(model, state, k_max)
        engine.step_fn.fn = recording_fails
        engine.add(Request([1, 2, 3], 8, GREEDY, emit=lambda r, t, f: got.append(t)))
        if not cuda:
            with pytest.raises(torch.OutOfMemoryError):
                while engine.active:
                    engine.step()
            continue
        while engine.active:
            engine.step()
        assert got == eager and not engine.compiled and "decoding eagerly" in capsys.readouterr().err


def model_of_256():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=256, n_layer=2, n_head=2, n_embd=64)).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    return model


def short_and_beside_a_long_one(model, compile: bool, on_step=lambda engine: None, on_run=lambda request: None):
    """A short greedy request alone, then beside a 180-token one: its tokens in each run
    (on_run(request) after each run, on_step(engine) after each step)."""
    out = []
    for long in (False, True):
        engine, target = Engine(model, n_slots=8, compile=compile), Request([5, 6, 7, 8], 6, GREEDY)
        if long:
            engine.add(Request([1 + i % 200 for i in range(180)], 6, GREEDY))
        engine.add(target)
        while not target.finished:
            engine.step()
            on_step(engine)
        on_run(target)
        out.append(target.tokens)
    return out


def test_a_short_request_reads_only_the_keys_it_needs_and_keeps_the_alone_crowd_promise(monkeypatch):
    # attention spanned all block_size keys whatever the rows' lengths: 256 here for 5 to 9 used
    model, keys, logits = model_of_256(), set(), {}
    real_sdpa, real_pick = torch.nn.functional.scaled_dot_product_attention, decode_module.pick

    def sdpa(q, k, v, **kw):
        if q.size(2) == 1:  # a decode step (a prefill attends within its prompt)
            keys.add(k.size(2))
        return real_sdpa(q, k, v, **kw)

    def pick(state, model, rows, row_logits, k_max):  # the logits each slot's token is sampled from
        for slot, row in zip(torch.arange(state.last.size(0))[rows].tolist(), row_logits):
            logits.setdefault(slot, []).append(row.clone())
        return real_pick(state, model, rows, row_logits, k_max)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)
    for module in (engine_module, decode_module):
        monkeypatch.setattr(module, "pick", pick)

    runs = []  # per run: the decode steps' key counts, the target's logits

    def on_run(target):
        runs.append((set(keys), logits[target.slot]))
        keys.clear(), logits.clear()
    alone_tokens, crowded_tokens = short_and_beside_a_long_one(model, False, on_run=on_run)
    (short_keys, alone), (long_keys, crowded) = runs
    # eager: exactly the longest row's keys (its prompt, its tokens): 5..9 alone, 181..185 beside
    assert short_keys == set(range(5, 10)) and long_keys == set(range(181, 186))
    for a, b in zip(alone, crowded):  # masked keys weigh exactly 0: the tolerance still holds
        torch.testing.assert_close(b, a, rtol=0, atol=engine_module.ROW_LOGIT_TOLERANCE)
        top2 = a.topk(2).values
        assert top2[0] - top2[1] > 2 * engine_module.ROW_LOGIT_TOLERANCE
    assert len(alone) == 6 and crowded_tokens == alone_tokens


def test_a_compiled_step_rounds_the_keys_up_to_a_span(dynamo_only):
    model, spans = model_of_256(), []
    tokens = short_and_beside_a_long_one(model, True, lambda engine: spans.append((engine.cache.n, engine.cache.span)))
    assert set(spans[:5]) == {(1, 64)} and set(spans[5:]) == {(4, 256)}  # spans of 256: 64, 256
    assert tokens == short_and_beside_a_long_one(model, False)
