"""
The engine for a server: a background thread steps it, so the event loop never blocks. Requests
are submitted from any thread, wait in a bounded queue for a free slot, and take it between two
decode steps; their prompts are prefilled there within a budget of prompt tokens between two steps
(a long one in chunks); a compiled engine warms up on this thread first (CUDA graph trees are per thread).

    thread = EngineThread(model, n_slots=16, max_queue=64)
    thread.submit([Request(prompt_ids, 64, emit=on_token)])   # or QueueFull: answer 429
"""
import queue
import threading
from collections import deque

from model import GPT
from wikigpt.decoding.engine import Engine, Request

# Prompt tokens prefilled between two decode steps while others decode; a longer prompt goes on
# after the next step (Engine.fill: a chunked prefill). Prefilling each newcomer whole before the
# next step held every stream for ~3 s a time here (one client's 8 choices of a ~950-token
# prompt), and one long prompt still held them for its whole prefill (1.2 s); a choice of a
# prompt a slot holds costs nothing here (Engine.shared_prefill copies it).
PREFILL_TOKENS = 512


class QueueFull(Exception):
    pass


class EngineThread:
    """Runs an Engine in a background thread so that the server's event loop never blocks.
    submit() queues a request (at most max_queue beyond the free slots: 0, no waiting); cancel()
    frees its slot at the next step. Requests join the batch as soon as a slot is free."""

    def __init__(self, model: GPT, n_slots: int = 16, max_queue: int = 64, start: bool = True, tok=None,
                 compile: bool | None = None):
        self.engine = Engine(model, n_slots, tok, compile)
        self.max_queue = max_queue
        self.waiting: deque[Request] = deque()
        self.wake = threading.Condition()
        self.stopped = False
        self.progress: queue.SimpleQueue | None = None
        self.warm_error: Exception | None = None  # what stopped warm-up, if anything did
        self.thread = threading.Thread(target=self._run, name="wikigpt-engine", daemon=True)
        if start:
            self.start()

    def start(self, progress: queue.SimpleQueue | None = None):
        """Start the thread. A compiled engine warms up there first, since CUDA graph trees are
        per thread (a graph recorded on one thread fails on another); requests submitted
        meanwhile wait. progress, if given, gets True after each graph and False at the end."""
        self.progress = progress
        self.thread.start()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a slot (one in a slot, its prompt being prefilled, counts as active)."""
        return len(self.waiting)

    @property
    def active(self) -> int:
        return self.engine.active

    @property
    def capacity(self) -> int:
        """Requests held at once: decoding in a slot or waiting for one."""
        return self.engine.capacity + self.max_queue

    @property
    def held(self) -> int:
        """Requests in a slot or waiting for one: what the capacity bounds."""
        with self.wake:
            return len(self.waiting) + self.placed()

    def submit(self, requests: list[Request]):
        """Queue requests together (all or none), or raise QueueFull."""
        with self.wake:  # (a re-entrant lock: held takes it too)
            held = self.held
            if held + len(requests) > self.capacity:
                raise QueueFull(f"{held} requests are running or waiting (limit {self.engine.capacity} slots + "
                                f"{self.max_queue} waiting)")
            self.waiting.extend(requests)
            self.wake.notify()

    def placed(self) -> int:
        """Requests in a slot (a request moves from `waiting` to a slot under the lock: counted once)."""
        held = list(self.engine.by_slot.values())  # copied at once (the engine thread changes them)
        return sum(1 for r in held if not r.finished and not r.cancelled)

    def cancel(self, req: Request):
        req.cancelled = True  # the engine thread drops it before its next step
        with self.wake:
            if req in self.waiting:
                self.waiting.remove(req)

    def stop(self):
        with self.wake:
            self.stopped = True
            self.wake.notify()
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    def warm_up(self):
        tick = (lambda: self.progress.put(True)) if self.progress else (lambda: None)
        try:
            self.engine.warm_up(tick)
        except Exception as e:  # e.g. out of memory at a large --slots: serve.py says so and stops
            self.warm_error = e
            self.engine.clear()
        finally:
            if self.progress:
                self.progress.put(False)

    def _admit(self, budget: float):
        """On the engine thread, between two steps: the requests waiting take the free slots
        (Engine.join: no model work, at most copies of keys a slot holds), then at most `budget`
        tokens of the prompts joined are prefilled (at least one). A failure fails that request alone."""
        failed = []
        with self.wake:
            while not self.stopped and self.waiting and self.engine.free_slots:
                req = self.waiting.popleft()
                if req.cancelled:  # (cancel() sets the flag before it takes the lock to remove it)
                    continue
                try:
                    self.engine.join(req)
                except Exception as e:
                    failed.append((req, e))
        self.engine.fill(budget, on_error=lambda req, e: failed.append((req, e)))
        for req, e in failed:  # (outside the lock: emit may call back into cancel)
            req.emit(req, None, f"error: {type(e).__name__}: {e}")

    def _run(self):
        self.warm_up()
        while True:
            with self.wake:
                while not self.stopped and not self.waiting and not self.engine.active:
                    self.wake.wait()
                if self.stopped:
                    return
            self._admit(PREFILL_TOKENS if self.engine.decoding else float("inf"))
            try:
                self.engine.step()
            except Exception as e:  # one batched forward: its failure fails the requests in it
                self.engine.fail_all(f"{type(e).__name__}: {e}")
