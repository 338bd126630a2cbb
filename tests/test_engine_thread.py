"""wikigpt/decoding/engine_thread.py: the engine behind a server: cancel, the bounded queue, requests
counted once whether waiting, in a slot or being prefilled, and the prefill budget between two decode
steps (a long prompt in chunks while streams decode, all at once when none does)."""
import math
import threading
import time

import pytest
from test_engine import tiny_model

import wikigpt.decoding.engine_thread as engine_thread_module
from wikigpt.decoding.engine import Engine, Request
from wikigpt.decoding.engine_thread import EngineThread, QueueFull
from wikigpt.decoding.sampling import SamplingParams


def test_cancel_frees_the_slot_and_stops_the_tokens():
    model, got = tiny_model(), []
    thread = EngineThread(model, n_slots=4)
    real_step = thread.engine.step
    thread.engine.step = lambda: (time.sleep(0.005), real_step())  # a model slow enough to catch mid-reply
    try:
        cancelled_at = []

        def emit(r, t, f):  # cancel as the 3rd token arrives: no race with the engine thread
            got.append(t)
            if len(got) == 3:
                thread.cancel(r)
                cancelled_at.append(len(got))
        req = Request([1, 2, 3], 60, SamplingParams(temperature=1.0), emit=emit)
        thread.submit([req])
        deadline = time.time() + 30  # a loaded machine may be slow to run the steps
        while (not cancelled_at or thread.active) and time.time() < deadline:
            time.sleep(0.001)
        n = len(got)
        time.sleep(0.1)
        at_cancel = cancelled_at[0]
        # the slot is free, and no step begun after cancel() emitted a token
        assert thread.active == 0 and len(got) == n == at_cancel == 3
    finally:
        thread.stop()


def test_a_full_queue_is_refused_and_a_failing_request_fails_alone():
    model = tiny_model()
    idle = EngineThread(model, n_slots=4, max_queue=2, start=False)  # holds 4 slots + 2 waiting
    idle.submit([Request([i], 5) for i in range(6)])
    with pytest.raises(QueueFull):
        idle.submit([Request([7], 5)])
    events = {}
    thread = EngineThread(model, n_slots=4)
    try:
        bad = Request(list(range(64)), 5, emit=lambda r, t, f: events.setdefault("bad", f))  # over the context
        good = Request([1, 2], 5, emit=lambda r, t, f: events.__setitem__("good", f))
        thread.submit([bad, good])
        deadline = time.time() + 30  # a loaded machine may be slow
        while not events.get("good") and time.time() < deadline:
            time.sleep(0.01)
        assert events["bad"].startswith("error: ValueError") and events["good"] == "length"
    finally:
        thread.stop()


def test_max_queue_0_means_no_waiting_not_always_busy():
    thread, done = EngineThread(tiny_model(), n_slots=4, max_queue=0), threading.Event()
    try:
        thread.submit([Request([1, 2], 3, emit=lambda r, t, f: f and done.set())])  # a free slot takes it
        assert done.wait(30)
        with pytest.raises(QueueFull):
            thread.submit([Request([i], 5) for i in range(5)])  # more than the 4 slots at once
    finally:
        thread.stop()



def test_requests_in_their_slots_before_their_prefill_are_counted_once_so_requests_that_fit_are_taken():
    thread = EngineThread(tiny_model(), n_slots=4, max_queue=0)
    fill, entered, go = thread.engine.fill, threading.Event(), threading.Event()

    def slow_fill(*args, **kwargs):  # the batch has taken its slots; its prompts are not prefilled yet
        entered.set()
        assert go.wait(30)
        return fill(*args, **kwargs)
    thread.engine.fill = slow_fill
    try:
        thread.submit([Request([1, 2], 3) for _ in range(3)])
        assert entered.wait(30) and thread.active == 3  # in their slots, not yet decoding
        assert thread.queue_depth == 0 and thread.held == 3  # what /health says is queued: none; each counted once
        thread.submit([Request([3], 3)])  # 3 held + 1 = the 4 slots: taken, not refused as busy
        with pytest.raises(QueueFull):
            thread.submit([Request([4], 3)])
    finally:
        go.set()
        thread.stop()


def test_streams_get_a_token_between_chunks_of_the_prefills_of_long_newcomers(monkeypatch):
    """One client's 8 choices of a long prompt were all prefilled before the next decode step, then
    one long prompt still was: every stream stood still meanwhile (~3 s, then ~1.2 s here at a
    950-token prompt). While any stream decodes, at most PREFILL_TOKENS of prompts run between two
    steps; a long one goes on after the next."""
    monkeypatch.setattr(engine_thread_module, "PREFILL_TOKENS", 40)
    thread, calls, done = EngineThread(tiny_model(), n_slots=8), [], threading.Event()
    fill, step = thread.engine.fill, thread.engine.step

    def counted_fill(budget, on_error=None):  # each fill's budget and the prompt tokens it ran
        calls.append((budget, fill(budget, on_error)))
        return calls[-1][1]
    thread.engine.fill = counted_fill
    thread.engine.step = lambda: (calls.append("step"), time.sleep(0.01), step())  # the stream outlasts the joins
    try:
        stream = Request([200, 201], 60, SamplingParams(temperature=1.0), emit=lambda r, t, f: f and done.set())  # (no prompt below starts like it)
        thread.submit([stream])
        deadline = time.time() + 30
        while not thread.active and time.time() < deadline:
            time.sleep(0.001)
        thread.submit([Request(list(range(1 + i, 31 + i)), 1) for i in range(2)])  # 2 x 30 prompt tokens, beside it
        thread.submit([Request(list(range(100, 155)), 1)])  # 55 tokens: more than a step's budget
        # 3 choices of one prompt, each ending at its first token (its slot left, its keys still there)
        thread.submit([Request(list(range(50, 80)), 1, seed=i) for i in range(3)])
        assert done.wait(30)
        fills = [c for c in calls if c != "step"][1:]  # (the first: the stream's own prompt, nothing decoding)
        assert all(b == 40 and ran <= 40 for b, ran in fills), calls  # the stream decodes throughout
        assert sum(ran for _, ran in fills) == 2 * 30 + 55 + 30, calls  # the choices: one prefill, two copies
        assert all(calls[i + 1] == "step" for i, c in enumerate(calls[:-1]) if c != "step")  # a step after each fill
        while thread.active and time.time() < deadline:
            time.sleep(0.001)
        calls.clear()
        ended, all_ended = [], threading.Event()
        end = lambda r, t, f: f and (ended.append(r), len(ended) == 4 and all_ended.set())  # noqa: E731
        thread.submit([Request(list(range(210 + i, 240 + i)), 2, emit=end) for i in range(4)])  # prompts no slot holds
        assert all_ended.wait(30)
        assert calls[:2] == [(math.inf, 120), "step"]  # with nothing decoding, nobody waits: all join at once
    finally:
        thread.stop()


def test_a_prompt_left_alone_by_the_streams_that_finished_is_prefilled_whole_and_a_budget_of_0_still_moves(
        monkeypatch):
    monkeypatch.setattr(engine_thread_module, "PREFILL_TOKENS", 4)
    thread, calls, done = EngineThread(tiny_model(), n_slots=4, start=False), [], threading.Event()
    fill = thread.engine.fill
    thread.engine.fill = lambda budget, on_error=None: (calls.append(budget), fill(budget, on_error))[1]
    stream = Request([1, 2], 2)  # its prompt in, then one more step and it is done
    thread.submit([stream, Request(list(range(3, 63)), 1, emit=lambda r, t, f: f and done.set())])
    thread.engine.join(thread.waiting.popleft())
    fill()  # the stream decodes; the 60-token prompt is left to the thread
    thread.start()
    try:
        assert done.wait(30)
        assert calls.count(4) <= 2 and math.inf in calls, calls  # chunks only while the stream decoded
    finally:
        thread.stop()
    engine = Engine(tiny_model(), n_slots=2)
    engine.join(Request([5, 6, 7], 2))
    assert engine.fill(0) == 1 and engine.fill(-3) == 1 and engine.fill(0) == 1  # at least one token, each call
    assert engine.decoding == 1
