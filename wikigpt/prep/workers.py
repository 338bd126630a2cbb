"""
The worker processes of prepare_wiki.py's passes: jobs handed out in order with at most
2 x workers in flight (Pool.imap would read a 20 GB dump ahead), results back in order, and a
time bound on each page a worker cleans.

A worker notes in shared memory which page of its job it is cleaning and since when
(page_starts, called by the cleaner before each page). When one page takes longer than
page_seconds, the main process kills that worker (a parser stuck in C code can be stopped no
other way), starts a new one, and hands the job out again with that page marked: the new worker
skips it (jobs.py counts it as "timeout" and names it) and cleans the rest. A worker that dies
while cleaning a page (a crash in the parser's C code) is replaced the same way, the page
counted as "crashed". Each worker has a pipe of its own, so killing one never leaves a lock
held that the others wait on.
"""
import multiprocessing as mp
import os
import pickle
import signal
import time
import traceback
from collections import deque
from contextlib import contextmanager
from multiprocessing.connection import wait

# fork where the platform has it: workers start at once with the parent's modules already imported
# (Python 3.14 makes forkserver Linux's default, which would import them again in each worker)
CONTEXT = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()

# In a worker process: its shared slot, the pages of the current job to skip, the page count.
_slot, _skips, _page = None, {}, -1


def page_starts() -> str | None:
    """Called before each page is cleaned: why to skip it ("timeout", "crashed": what an earlier
    try of the same job met on it), or None to clean it. Outside a worker it only counts."""
    global _page
    _page += 1
    if _page in _skips:
        return _skips[_page]
    if _slot is not None:
        array, i = _slot
        array[i], array[i + 1] = _page, time.monotonic()  # CLOCK_MONOTONIC: the same in every process
    return None


def page_ends():
    """Called after each page: the time until the next one (reading the range on) is not its."""
    if _slot is not None:
        _slot[0][_slot[1] + 1] = 0.0


class WorkerLost(RuntimeError):
    """A worker process died without a reason the run can handle (e.g. killed for memory)."""


class _RemoteTraceback(Exception):
    def __str__(self):
        return self.args[0]


def die_with_parent(parent: int):
    """In a forked worker: the kernel kills it when its parent dies (Linux's parent-death signal,
    sent when the thread that forked it ends), and it ends now if the parent is gone already. A
    worker whose parent was SIGKILLed (the OOM killer's signal) otherwise waits for work forever:
    each worker forked after another holds that one's end of its pipe too, so none sees its pipe
    close, and each keeps what it inherited open (an index build's writer locks)."""
    import ctypes
    PR_SET_PDEATHSIG = 1  # prctl's option
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl off Linux: the pipe's end is all there is
        return
    if os.getppid() != parent:
        os._exit(1)


def worker_start(parent: int):
    """What a forked worker does first: die with its parent (die_with_parent) and leave Ctrl-C to
    it (the terminal sends SIGINT to the whole process group: each worker printed a traceback)."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker(conn, slot, fn, initializer, initargs, parent):
    global _slot, _skips, _page
    worker_start(parent)
    _slot = slot
    if initializer:
        initializer(*initargs)
    array, i = slot
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the main process is gone
            return
        if message is None:
            return
        job, _skips = message
        _page = -1
        try:
            out = (True, fn(job), "")
        except Exception as e:
            out = (False, e, traceback.format_exc())
        array[i + 1] = 0.0  # no page in progress
        try:
            conn.send(out)
        except (pickle.PicklingError, TypeError, AttributeError):
            conn.send((False, RuntimeError(f"{out[1]!r}"), out[2]))
        except OSError:
            return


class Workers:
    """A fixed number of worker processes running fn on jobs (see the module doc)."""

    def __init__(self, fn, workers: int, initializer=None, initargs=(), page_seconds: float | None = None):
        self.fn, self.initializer, self.initargs, self.page_seconds = fn, initializer, initargs, page_seconds
        self.slots = mp.RawArray("d", 2 * workers)  # per worker: page index, since (0: none)
        self.procs, self.conns, self.busy = [None] * workers, [None] * workers, [None] * workers
        self.jobs, self.queue, self.done, self.next_seq = {}, deque(), {}, 0
        for i in range(workers):
            self._start(i)

    def _start(self, i: int):
        parent, child = CONTEXT.Pipe()
        self.slots[2 * i + 1] = 0.0
        proc = CONTEXT.Process(target=_worker, args=(child, (self.slots, 2 * i), self.fn, self.initializer,
                                                self.initargs, os.getpid()), daemon=True)
        proc.start()
        child.close()
        self.procs[i], self.conns[i], self.busy[i] = proc, parent, None

    def submit(self, job, first: bool = False) -> int:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        self.jobs[seq] = (job, {})  # pages to skip: index -> why
        self.queue.appendleft(seq) if first else self.queue.append(seq)
        return seq

    def result(self, seq: int):
        """Wait for job seq's result (others that come meanwhile are kept)."""
        while seq not in self.done:
            for i, proc in enumerate(self.procs):
                if self.busy[i] is None and self.queue:
                    self.busy[i] = self.queue.popleft()
                    job, skips = self.jobs[self.busy[i]]
                    self.conns[i].send((job, skips))
            self._collect()
        ok, value, remote = self.done.pop(seq)
        del self.jobs[seq]
        if not ok:
            raise value from (_RemoteTraceback(remote) if remote else None)
        return value

    def _collect(self):
        busy = [i for i, seq in enumerate(self.busy) if seq is not None]
        poll = min(self.page_seconds / 4, 1.0) if self.page_seconds else None
        wait([self.conns[i] for i in busy] + [self.procs[i].sentinel for i in busy], poll)
        for i in busy:
            if self.conns[i].poll():
                try:
                    self.done[self.busy[i]] = self.conns[i].recv()
                    self.busy[i] = None
                    continue
                except (EOFError, OSError):
                    pass
            page, since = self.slots[2 * i], self.slots[2 * i + 1]
            if not self.procs[i].is_alive():
                if not since:  # not in a page: nothing to skip that would help
                    code = self.procs[i].exitcode
                    why = ", killed by the system: out of memory?" if code == -signal.SIGKILL else ""
                    raise WorkerLost(f"a worker process died (exit code {code}{why}) while cleaning or tokenizing. "
                                     "Progress is saved: run the same command again, with fewer --workers if "
                                     "memory is short.")
                self._retry(i, int(page), "crashed")
            elif self.page_seconds and since and time.monotonic() - since > self.page_seconds:
                os.kill(self.procs[i].pid, signal.SIGKILL)
                self._retry(i, int(page), "timeout")

    def _retry(self, i: int, page: int, why: str):
        """Worker i is gone (killed, or died) in the middle of a page: a new worker, and its job
        again, first in line, that page skipped."""
        self.procs[i].join()
        self.conns[i].close()
        seq = self.busy[i]
        self.jobs[seq][1][page] = why
        self.queue.appendleft(seq)
        self._start(i)

    def close(self):
        for i, proc in enumerate(self.procs):
            if self.busy[i] is None:
                try:
                    self.conns[i].send(None)
                except OSError:
                    pass
            else:
                proc.kill()  # an error or Ctrl-C in the main process: its job is not wanted
        for proc, conn in zip(self.procs, self.conns):
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()


class _InProcess:
    """One worker: the jobs run in the main process, as map() would (no time bound)."""

    def __init__(self, fn, initializer, initargs):
        self.fn = fn
        if initializer:
            initializer(*initargs)


@contextmanager
def worker_pool(fn, workers: int, initializer=None, initargs=(), page_seconds: float | None = None):
    """Workers for fn; with one worker and no time bound, the main process itself."""
    if workers <= 1 and not page_seconds:
        yield _InProcess(fn, initializer, initargs)
        return
    pool = Workers(fn, workers, initializer, initargs, page_seconds)
    try:
        yield pool
    finally:
        pool.close()


def ordered_map(pool, jobs):
    """Like map(fn, jobs) in the pool's workers, in order, with at most 2 x workers in flight."""
    if isinstance(pool, _InProcess):
        yield from map(pool.fn, jobs)
        return
    pending, jobs = deque(), iter(jobs)
    window = 2 * len(pool.procs)
    for job in jobs:
        pending.append(pool.submit(job))
        if len(pending) >= window:
            yield pool.result(pending.popleft())
    while pending:
        yield pool.result(pending.popleft())


def run_now(pool, job):
    """One job's result, ahead of the jobs queued (the pages joined across two ranges)."""
    return pool.fn(job) if isinstance(pool, _InProcess) else pool.result(pool.submit(job, first=True))
