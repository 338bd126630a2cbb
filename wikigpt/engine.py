"""
Continuous batching: many requests decoded together, one batched forward per step.

Each request owns a slot (one row) of a batched KV cache and sits at its own position in it.
A new request is prefilled alone into a free slot (its first token comes out of that prefill),
then joins the next decode step; a finished or cancelled one leaves and frees its slot.
Batching is worth several times the throughput of serving one request at a time.

The decode step (forward + sampling) runs on the device from state that lives there: tokens,
positions, each row's options, its random stream (a counter-based hash), the tokens seen, its
UTF-8 state. The host reads one thing per step, the new tokens (one `tolist()`), and writes
only when a request joins or leaves. So the step has no host sync, and torch.compile takes it
whole (fullgraph=True): on a GPU as CUDA graphs per row bucket (mode="reduce-overhead"),
where a step is then a handful of launches instead of hundreds.

What a request may count on, whatever else is in the batch (tests/test_serve.py checks each):
  - its logits agree within ROW_LOGIT_TOLERANCE with those it gets decoded alone (float32);
  - so greedy decoding gives the same tokens, unless its top two logits are closer than that;
  - seeded sampling draws the same random numbers (its own counter-based stream), so it gives
    the same tokens unless a draw lands within that tolerance of a boundary between two tokens
    (about 1e-5 per token at temperature 1: rare, not impossible).
Not promised: bitwise-equal logits. Floating-point sums depend on how a kernel splits its work
(rows, threads, SIMD width), and CPU BLAS libraries and cuBLAS choose differently by batch shape
and machine: on one 2-core AMD EPYC the rows differed by 7e-8 at the default thread count and
not at all with OMP_NUM_THREADS=1. Two rules keep the differences that small and rare:
  - decode attention always spans the whole cache (block_size keys, future ones masked), so
    its kernels have one shape whatever the other rows' lengths;
  - the decode batch is padded to a bucket of rows (4, 8, 16, ... up to n_slots): the CPU matmul
    kernels here (oneDNN/MKL, AVX2) handle rows in groups of 4, and a row's result differs in
    the last bit when it falls in a leftover group of another size (measured: M=5 vs M=8); a
    compiled step has one graph per bucket.

    engine = Engine(model, n_slots=16)
    engine.add(Request(prompt_ids, 64, SamplingParams(), stop_tokens={end}, seed=0, emit=print))
    while engine.active: engine.step()
"""
import math
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from model import GPT
from wikigpt.sampling import (CopySource, SamplingParams, candidates, knobs_row, mix_dense, sample_tokens, seed_of,
                              uniform)

ROW_GROUP = 4  # the smallest bucket of decode rows (see the module's docstring)
# a row's float32 logits alone vs in any batch (see the docstring): 100x the differences seen
ROW_LOGIT_TOLERANCE = 1e-5


def bucket(rows: int, n_slots: int) -> int:
    """Rows a decode step runs for `rows` busy slots: 4, 8, 16... (one compiled graph each)."""
    return min(max(ROW_GROUP, 1 << (rows - 1).bit_length()), n_slots)


class SlotCache:
    """Keys and values of n_slots independent sequences: k, v, per layer (S, H, T, D). Slot s holds
    one request at position pos[s]. A forward runs either one slot's prefill or a decode
    step over slots 0..n-1 (see the cache interface in model.KVCache)."""

    def __init__(self, model: GPT, n_slots: int):
        cfg, device = model.cfg, model.device
        # one tensor per layer, not slices of one: a compiled step then writes each in place
        # (the write into a slice of a larger tensor was copied whole, per layer and step)
        shape = (n_slots, cfg.n_head, cfg.block_size, cfg.head_size)
        self.k = [torch.zeros(shape, device=device, dtype=model.act_dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=model.act_dtype) for _ in range(cfg.n_layer)]
        self.pos = torch.zeros(n_slots, dtype=torch.long, device=device)  # (S,)
        self.live = torch.zeros(n_slots, dtype=torch.bool, device=device)  # (S,) rows with a request
        self.slot, self.n = None, 0  # this forward: a prefill of slot `slot`, or a decode of n rows

    def positions(self, T: int):
        if self.slot is not None:
            return self.pos[self.slot] + torch.arange(T, device=self.pos.device)[None]  # (1, T)
        # rows without a request compute at position 0, unused (theirs may be past the end)
        return torch.where(self.live[:self.n], self.pos[:self.n], 0)[:, None]  # (n, 1)

    def attend(self, layer: int, q, k, v):
        if self.slot is not None:  # prefill one fresh slot: causal attention within the prompt
            T = k.size(2)
            self.k[layer][self.slot, :, :T], self.v[layer][self.slot, :, :T] = k[0], v[0]
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (1, H, T, D)
        rows = torch.arange(self.n, device=q.device)
        at = torch.where(self.live[:self.n], self.pos[:self.n], 0)  # (n,)
        self.k[layer][rows, :, at], self.v[layer][rows, :, at] = k[:, :, 0], v[:, :, 0]  # (n, H, D)
        keys, values = self.k[layer][:self.n], self.v[layer][:self.n]  # (n, H, T_max, D), views
        visible = torch.arange(keys.size(2), device=q.device)[None] <= at[:, None]  # (n, T_max)
        # in the cache's dtype (the model's), through the fused kernel
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible[:, None, None])  # (n, H, 1, D)

    def advance(self, T: int):
        if self.slot is not None:
            self.pos[self.slot] += T
        else:
            self.pos[:self.n] += self.live[:self.n].long()  # rows without a request stay where they are


@dataclass(eq=False)
class Request:
    """One sequence to generate. `emit(request, token, finish_reason)` is called for every new
    token (finish_reason None while it goes on, else "stop" or "length"), or once with
    token None and finish_reason "error: ..." if its generation fails."""
    prompt: list[int]
    max_new_tokens: int
    params: SamplingParams = field(default_factory=SamplingParams)
    stop_tokens: set = field(default_factory=set)
    seed: int | None = None
    emit: Callable = lambda request, token, finish_reason: None
    copy_from: CopySource | None = None  # the evidence to copy, when params.copy > 0
    # state, owned by the engine
    tokens: list = field(default_factory=list)  # generated so far
    slot: int | None = None
    finished: bool = False
    cancelled: bool = False


class DecodeState:
    """What a decode step reads and writes, per slot, on the device (S slots, V ids)."""

    def __init__(self, model: GPT, n_slots: int, tok=None):
        S, V, device = n_slots, model.cfg.padded_vocab, model.device
        self.cache = SlotCache(model, S)
        self.last = torch.zeros(S, dtype=torch.long, device=device)  # each slot's newest token
        self.seen = torch.zeros(S, V, dtype=torch.bool, device=device)  # ids in its text so far
        self.knobs = torch.zeros(S, 4, device=device)  # its sampling options (sampling.KNOBS)
        self.key = torch.zeros(S, dtype=torch.long, device=device)  # its random stream...
        self.count = torch.zeros(S, dtype=torch.long, device=device)  # ...and the draws taken
        self.copy_w = torch.zeros(S, device=device)  # its copy weight this step (0: none)
        self.copy_q = torch.zeros(S, V, device=device)  # its copy distribution this step
        # with a tokenizer: only ids that keep each reply valid UTF-8 (tokenizer.utf8_table)
        self.utf8 = tok.utf8_table(V).to(device) if tok is not None else None  # (8, V)
        self.utf8_state = torch.zeros(S, dtype=torch.long, device=device)  # its decoder state
        if device.type == "cuda":  # CUDA graphs replay on these very buffers (no copy in or out)
            for t in (*self.cache.k, *self.cache.v, self.cache.pos, self.cache.live, self.last, self.seen,
                      self.knobs, self.key, self.count, self.copy_w, self.copy_q, self.utf8_state):
                torch._dynamo.mark_static_address(t)


def pick(state: DecodeState, model: GPT, rows, logits, k_max: int):
    """Sample the next token of `rows` (a slice or index tensor) from their logits (n, V) and
    update their state: all on the device. k_max: see sampling.candidates. Returns the
    tokens, (n,) int64."""
    logits = mix_dense(logits, state.copy_q[rows], state.copy_w[rows])
    allowed = state.utf8[state.utf8_state[rows]] >= 0 if state.utf8 is not None else None
    u = uniform(state.key[rows], state.count[rows])
    tokens = sample_tokens(logits, model.cfg.vocab_size, state.seen[rows], state.knobs[rows], u, allowed, k_max)
    n = tokens.size(0)
    idx = torch.arange(state.last.size(0), device=tokens.device)[rows]  # (n,) the slots
    state.seen[idx, tokens] = True
    if state.utf8 is not None:
        state.utf8_state[idx] = state.utf8[state.utf8_state[idx], tokens]
    state.count[idx] += 1
    state.last[idx] = tokens
    return tokens.view(n)


def decode_step(model: GPT, state: DecodeState, k_max: int):
    """One token for each of the first state.cache.n slots: forward + sampling, no host sync."""
    n = state.cache.n
    x = model.hidden_states(state.last[:n, None], state.cache)[:, -1]  # (n, C)
    return pick(state, model, slice(0, n), model.lm_head(x).float(), k_max)  # (n,)


class Engine:
    """The batch: slots, the cache, one step at a time. Not thread-safe (see EngineThread).
    compile: torch.compile the decode step (None: on CUDA, as CUDA graphs; eager elsewhere)."""

    def __init__(self, model: GPT, n_slots: int = 16, tok=None, compile: bool | None = None):
        self.model = model
        self.capacity = n_slots  # requests decoded together (1: batching off)
        self.n_slots = math.ceil(n_slots / ROW_GROUP) * ROW_GROUP  # cache rows, padding included
        self.state = DecodeState(model, self.n_slots, tok)
        self.cache = self.state.cache
        self.by_slot: dict[int, Request] = {}
        self.device = model.device
        cuda = self.device.type == "cuda"
        self.compiled = cuda if compile is None else compile
        self.step_fn = (torch.compile(decode_step, fullgraph=True, dynamic=False,
                                      mode="reduce-overhead" if cuda else None) if self.compiled else decode_step)

    @property
    def active(self) -> int:
        return len(self.by_slot)

    @property
    def free_slots(self) -> int:
        return self.capacity - len(self.by_slot)

    def row_buckets(self) -> list[int]:
        """The batch sizes a step runs at (bucket: ROW_GROUP, 8, 16... up to n_slots)."""
        out = [bucket(ROW_GROUP, self.n_slots)]
        while out[-1] < self.n_slots:
            out.append(bucket(out[-1] + 1, self.n_slots))
        return out

    def warm_up(self, on_graph=lambda: None):
        """Compile (or capture) the step of every row bucket now, not at the first requests: a
        graph is made the first time a step runs that many rows with that many candidates
        (sampling.candidates: top_k on, or off); on_graph() after each, for a progress bar."""
        if not self.compiled:
            return
        for rows in self.row_buckets():
            for top_k in (SamplingParams().top_k, 0):
                dummies = [Request([0], 2, SamplingParams(temperature=0, top_k=top_k)) for _ in range(rows)]
                for req in dummies:
                    self.add(req)
                self.step()
                for req in dummies:
                    self.release(req)
                on_graph()

    @torch.no_grad()
    def add(self, req: Request):
        """Prefill the request's prompt into the lowest free slot and emit its first token."""
        if not req.prompt or len(req.prompt) >= self.model.cfg.block_size:
            raise ValueError(f"prompt of {len(req.prompt)} tokens: need 1..{self.model.cfg.block_size - 1}")
        slot = min(set(range(self.n_slots)) - set(self.by_slot))
        req.slot, st = slot, self.state
        self.by_slot[slot] = req
        prompt = torch.tensor([req.prompt], device=self.device)  # (1, T)
        # the slot's state, written once as it joins (host -> device copies, no sync)
        st.seen[slot] = False
        st.seen[slot, prompt[0]] = True
        st.knobs[slot] = torch.tensor(knobs_row(req.params))
        st.key[slot], st.count[slot], st.utf8_state[slot] = seed_of(req.seed), 0, 0  # a prompt is whole characters
        st.copy_w[slot] = 0.0
        self.cache.pos[slot], self.cache.live[slot], self.cache.slot = 0, True, slot
        try:
            x = self.model.hidden_states(prompt, self.cache)
        finally:
            self.cache.slot = None
        self.set_copy([req])
        token = pick(st, self.model, torch.tensor([slot], device=self.device), self.model.lm_head(x[:, -1]).float(),
                     candidates([req.params.top_k], self.model.cfg.padded_vocab))
        self.emitted([req], token.tolist())

    @torch.no_grad()
    def step(self):
        """One decode step for every active request: one batched forward, one token each."""
        self.drop_cancelled()
        if not self.by_slot:
            return
        self.cache.n = bucket(max(self.by_slot) + 1, self.n_slots)
        reqs = [self.by_slot[s] for s in sorted(self.by_slot)]
        self.set_copy(reqs)
        k_max = candidates([r.params.top_k for r in reqs], self.model.cfg.padded_vocab)
        try:
            tokens = self.step_fn(self.model, self.state, k_max).tolist()  # the step's one host read
        except torch._dynamo.exc.BackendCompilerFailed as e:  # fails while compiling, before it runs
            print(f"warning: the decode step does not compile ({str(e).splitlines()[0][:150]}); decoding "
                  "eagerly instead.", file=sys.stderr)
            self.compiled, self.step_fn = False, decode_step
            tokens = decode_step(self.model, self.state, k_max).tolist()
        self.emitted(reqs, [tokens[r.slot] for r in reqs])

    def set_copy(self, reqs: list[Request]):
        """This step's copy distribution of the rows that copy evidence (CopySource): q
        is computed on the host from the reply so far and written to the device."""
        st = self.state
        copying = [r for r in reqs if r.params.copy > 0 and r.copy_from is not None]
        for r in copying:
            q = r.copy_from.prior(r.tokens)
            st.copy_w[r.slot] = r.params.copy if q else 0.0
            if q:
                row = torch.zeros(st.copy_q.size(1))
                row[list(q)] = torch.tensor(list(q.values()))
                st.copy_q[r.slot] = row.to(self.device, non_blocking=True)

    def emitted(self, reqs: list[Request], tokens: list[int]):
        """The host's side of a step: record each request's new token, finish it if it is done."""
        for req, token in zip(reqs, tokens):
            req.tokens.append(token)
            finish = None
            if token in req.stop_tokens:
                finish = "stop"
            elif (len(req.tokens) >= req.max_new_tokens
                  or len(req.prompt) + len(req.tokens) - 1 >= self.model.cfg.block_size):
                finish = "length"  # asked-for length, or the context is full
            if finish:
                self.release(req)
            req.emit(req, token, finish)

    def release(self, req: Request):
        req.finished = True
        if req.slot is not None and self.by_slot.get(req.slot) is req:
            del self.by_slot[req.slot]
            self.cache.live[req.slot] = False

    def drop_cancelled(self):
        for req in [r for r in self.by_slot.values() if r.cancelled]:
            self.release(req)

    def fail_all(self, message: str):
        for req in list(self.by_slot.values()):
            self.release(req)
            req.emit(req, None, f"error: {message}")


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
        self.joining = 0  # taken from `waiting`, being prefilled into a slot
        self.wake = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="wikigpt-engine", daemon=True)
        if start:
            self.thread.start()

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def active(self) -> int:
        return self.engine.active

    @property
    def capacity(self) -> int:
        """Requests held at once: decoding in a slot or waiting for one."""
        return self.engine.capacity + self.max_queue

    def submit(self, requests: list[Request]):
        """Queue requests together (all or none), or raise QueueFull."""
        with self.wake:
            held = self.engine.active + self.joining + len(self.waiting)
            if held + len(requests) > self.capacity:
                raise QueueFull(f"{held} requests are running or waiting (limit {self.engine.capacity} slots + "
                                f"{self.max_queue} waiting)")
            self.waiting.extend(requests)
            self.wake.notify()

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

    def _run(self):
        while True:
            with self.wake:
                while not self.stopped and not self.waiting and not self.engine.active:
                    self.wake.wait()
                if self.stopped:
                    return
                joining = []
                while self.waiting and len(joining) < self.engine.free_slots:
                    joining.append(self.waiting.popleft())
                self.joining = len(joining)
            for req in joining:  # prefill newcomers; a failure fails that request alone
                if req.cancelled:
                    continue
                try:
                    self.engine.add(req)
                except Exception as e:
                    self.engine.release(req)
                    req.emit(req, None, f"error: {type(e).__name__}: {e}")
            self.joining = 0  # in a slot now (or failed): counted by engine.active
            try:
                self.engine.step()
            except Exception as e:  # one batched forward: its failure fails the requests in it
                self.engine.fail_all(f"{type(e).__name__}: {e}")


def generate(model: GPT, prompt: list[int], max_new_tokens: int, params: SamplingParams,
             stop_tokens=(), seed=None, tok=None, copy_from=None):
    """Yield the new tokens of one request, decoded exactly as the server decodes it (pass the
    tokenizer, as the server does, to keep the text valid UTF-8)."""
    engine, out = Engine(model, n_slots=ROW_GROUP, tok=tok), []
    req = Request(list(prompt), max_new_tokens, params, set(stop_tokens), seed,
                  emit=lambda r, token, finish: out.append(token), copy_from=copy_from)
    engine.add(req)
    while True:
        yield from out
        out.clear()
        if req.finished:
            return
        engine.step()


def generate_batch(model: GPT, tok, prompts: list[list[int]], max_new_tokens: int, params: SamplingParams,
                   seeds: list | None = None, n_slots: int = 8, on_done=None,
                   copy_from: list | None = None) -> list[list[int]]:
    """The new tokens of many chat replies (each ends at <|end|> or max_new_tokens), decoded
    n_slots at a time; the same tokens as one by one, since a row's logits do not depend on
    the rest of the batch. on_done() is called as each reply ends (for a progress bar);
    copy_from: a CopySource (or None) per prompt, used when params.copy > 0."""
    engine = Engine(model, n_slots=n_slots, tok=tok)
    done = (lambda request, token, finish: finish and on_done()) if on_done else (lambda *_: None)
    requests = [Request(list(p), max_new_tokens, params, {tok.end_of_turn}, seeds[i] if seeds else None, done,
                        copy_from=copy_from[i] if copy_from else None)
                for i, p in enumerate(prompts)]
    waiting = list(reversed(requests))
    while waiting or engine.active:
        while waiting and engine.free_slots:
            engine.add(waiting.pop())
        engine.step()
    return [r.tokens for r in requests]
