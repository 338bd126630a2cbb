"""
Continuous batching: many requests decoded together, one batched forward per step.

Each request owns a slot (one row) of a batched KV cache and sits at its own position in it.
A new request is prefilled alone into a free slot (its first token comes out of that prefill),
then joins the next decode step; a finished or cancelled one leaves and frees its slot. On a
2-core CPU one decode step of the demo model costs 7.4 ms for 1 row and 11 ms for 8: batching
is worth several times the throughput of serving one request at a time.

Same seed -> same tokens, whatever else is in the batch. Floating-point sums depend on how a
kernel blocks its work, and that depends on the batch shape, so two rules keep every row's
arithmetic independent of the others:
  - decode attention always spans the whole cache (block_size keys, future ones masked), so
    its matmuls have one shape whatever the other rows' lengths;
  - the decode batch is padded to a multiple of ROW_GROUP rows: the CPU matmul kernels here
    (oneDNN/MKL, AVX2) handle rows in groups of 4, and a row's result differs in the last bit
    when it falls in a leftover group of another size (measured: M=5 vs M=8).
tests/test_serve.py checks bitwise-equal logits across batch compositions on this machine;
another BLAS may group rows differently, and then sampled tokens can differ in rare near-ties.

    engine = Engine(model, n_slots=16)
    engine.add(Request(prompt_ids, 64, SamplingParams(), stop_tokens={end}, seed=0, emit=print))
    while engine.active: engine.step()
"""
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from model import GPT
from wikigpt.sampling import CopySource, SamplingParams, make_generator, mix_copy, sample_rows

ROW_GROUP = 4


class SlotCache:
    """Keys and values of n_slots independent sequences: k, v (L, S, H, T, D). Slot s holds
    one request at position pos[s]. A forward runs either one slot's prefill or a decode
    step over slots 0..n-1 (see the cache interface in model.KVCache)."""

    def __init__(self, model: GPT, n_slots: int):
        cfg, device = model.cfg, model.device
        shape = (cfg.n_layer, n_slots, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        self.k = torch.zeros(shape, device=device, dtype=model.act_dtype)
        self.v = torch.zeros(shape, device=device, dtype=model.act_dtype)
        self.pos = torch.zeros(n_slots, dtype=torch.long, device=device)  # (S,)
        self.slot, self.n = None, 0  # this forward: a prefill of slot `slot`, or a decode of n rows
        self.live = torch.zeros(n_slots, dtype=torch.bool, device=device)  # which rows advance

    def positions(self, T: int):
        if self.slot is not None:
            return self.pos[self.slot] + torch.arange(T, device=self.pos.device)[None]  # (1, T)
        return self.pos[:self.n, None]  # (n, 1)

    def attend(self, layer: int, q, k, v):
        if self.slot is not None:  # prefill one fresh slot: causal attention within the prompt
            T = k.size(2)
            self.k[layer, self.slot, :, :T], self.v[layer, self.slot, :, :T] = k[0], v[0]
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (1, H, T, D)
        rows = torch.arange(self.n, device=q.device)
        at = self.pos[:self.n]
        self.k[layer, rows, :, at], self.v[layer, rows, :, at] = k[:, :, 0], v[:, :, 0]  # (n, H, D)
        keys, values = self.k[layer, :self.n], self.v[layer, :self.n]  # (n, H, T_max, D), views
        t_max = keys.size(2)
        visible = torch.arange(t_max, device=q.device)[None] <= at[:, None]  # (n, T_max)
        scores = (q @ keys.transpose(-1, -2)) / math.sqrt(q.size(-1))  # (n, H, 1, T_max)
        scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
        return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ values  # (n, H, 1, D)

    def advance(self, T: int):
        if self.slot is not None:
            self.pos[self.slot] += T
        else:
            self.pos[:self.n] += self.live[:self.n].long()  # padding rows stay where they are


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
    copy_from: CopySource | None = None  # retrieved passages, when params.copy > 0
    # state, owned by the engine
    tokens: list = field(default_factory=list)  # generated so far
    slot: int | None = None
    gen: torch.Generator | None = None
    finished: bool = False
    cancelled: bool = False


class Engine:
    """The batch: slots, the cache, one step at a time. Not thread-safe (see EngineThread)."""

    def __init__(self, model: GPT, n_slots: int = 16, tok=None):
        self.model = model
        self.capacity = n_slots  # requests decoded together (1: batching off)
        self.n_slots = math.ceil(n_slots / ROW_GROUP) * ROW_GROUP  # cache rows, padding included
        self.cache = SlotCache(model, self.n_slots)
        self.by_slot: dict[int, Request] = {}
        self.device = model.device
        # ids each slot's sequence holds so far, for the repetition penalty: (S, V) bool
        self.seen = torch.zeros(self.n_slots, model.cfg.padded_vocab, dtype=torch.bool, device=self.device)
        # with a tokenizer: only ids that keep each reply valid UTF-8 (tokenizer.utf8_table)
        self.utf8 = tok.utf8_table(model.cfg.padded_vocab).to(self.device) if tok is not None else None
        self.utf8_state = [0] * self.n_slots  # each slot's UTF-8 decoder state

    @property
    def active(self) -> int:
        return len(self.by_slot)

    @property
    def free_slots(self) -> int:
        return self.capacity - len(self.by_slot)

    @torch.no_grad()
    def add(self, req: Request):
        """Prefill the request's prompt into the lowest free slot and emit its first token."""
        if not req.prompt or len(req.prompt) >= self.model.cfg.block_size:
            raise ValueError(f"prompt of {len(req.prompt)} tokens: need 1..{self.model.cfg.block_size - 1}")
        slot = min(set(range(self.n_slots)) - set(self.by_slot))
        req.slot, req.gen = slot, make_generator(self.device, req.seed)
        self.by_slot[slot] = req
        self.cache.pos[slot], self.cache.slot = 0, slot
        prompt = torch.tensor([req.prompt], device=self.device)  # (1, T)
        self.seen[slot] = False
        self.seen[slot, prompt[0]] = True
        self.utf8_state[slot] = 0  # a prompt is whole characters
        try:
            x = self.model.hidden_states(prompt, self.cache)
        finally:
            self.cache.slot = None
        self._sample([req], self.model.lm_head(x[:, -1]).float())

    @torch.no_grad()
    def step(self):
        """One decode step for every active request: one batched forward, one token each."""
        self.drop_cancelled()
        if not self.by_slot:
            return
        n = min(math.ceil((max(self.by_slot) + 1) / ROW_GROUP) * ROW_GROUP, self.n_slots)
        last = torch.zeros(n, 1, dtype=torch.long, device=self.device)  # (n, 1); free rows: token 0
        self.cache.live.zero_()
        for s, req in self.by_slot.items():
            last[s, 0] = req.tokens[-1]
            self.cache.live[s] = True
        self.cache.n = n
        self.cache.pos[:n][~self.cache.live[:n]] = 0  # padding rows compute at position 0, unused
        logits = self.model.lm_head(self.model.hidden_states(last, self.cache)[:, -1]).float()  # (n, V)
        slots = sorted(self.by_slot)
        self._sample([self.by_slot[s] for s in slots], logits[slots])

    def _sample(self, reqs: list[Request], logits):
        """One new token for each request from its row of logits (len(reqs), V)."""
        slots = [r.slot for r in reqs]
        for i, r in enumerate(reqs):  # the copy distribution, for rows that answer from passages
            if r.params.copy > 0 and r.copy_from is not None and (q := r.copy_from.prior(r.tokens)):
                logits[i] = mix_copy(logits[i], q, r.params.copy)
        allowed = self.utf8[[self.utf8_state[s] for s in slots]] >= 0 if self.utf8 is not None else None
        tokens = sample_rows(logits, self.model.cfg.vocab_size, self.seen[slots], [r.params for r in reqs],
                             [r.gen for r in reqs], allowed)
        for req, token in zip(reqs, tokens):
            req.tokens.append(token)
            self.seen[req.slot, token] = True
            if self.utf8 is not None:
                self.utf8_state[req.slot] = int(self.utf8[self.utf8_state[req.slot], token])
            finish = None
            if token in req.stop_tokens:
                finish = "stop"
            elif len(req.tokens) >= req.max_new_tokens or int(self.cache.pos[req.slot]) >= self.model.cfg.block_size:
                finish = "length"  # asked-for length, or the context is full
            if finish:
                self.release(req)
            req.emit(req, token, finish)

    def release(self, req: Request):
        req.finished = True
        if req.slot is not None and self.by_slot.get(req.slot) is req:
            del self.by_slot[req.slot]

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
    submit() queues a request (at most max_queue waiting); cancel() frees its slot at the next
    step. Requests join the batch as soon as a slot is free."""

    def __init__(self, model: GPT, n_slots: int = 16, max_queue: int = 64, start: bool = True, tok=None):
        self.engine = Engine(model, n_slots, tok)
        self.max_queue = max_queue
        self.waiting: deque[Request] = deque()
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

    def submit(self, requests: list[Request]):
        """Queue requests together (all or none), or raise QueueFull."""
        with self.wake:
            if len(self.waiting) + len(requests) > self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (limit {self.max_queue})")
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
            for req in joining:  # prefill newcomers; a failure fails that request alone
                if req.cancelled:
                    continue
                try:
                    self.engine.add(req)
                except Exception as e:
                    self.engine.release(req)
                    req.emit(req, None, f"error: {type(e).__name__}: {e}")
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
