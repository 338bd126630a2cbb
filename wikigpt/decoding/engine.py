"""
Continuous batching: many requests decoded together, one batched forward per step.

Each request owns a slot (one row) of a batched KV cache and sits at its own position in it.
A new request joins a free slot and its prompt is prefilled there alone (its first token comes
out of that prefill), in chunks between decode steps when the caller bounds the tokens a fill
may run (a server does: a long prompt then holds the other streams for one chunk, not the
whole prompt); then it joins the next decode step. A finished or cancelled one leaves and frees its slot. A
request whose prompt a slot holds already (the n choices of one request) copies that slot's
keys and values instead: one prefill per prompt, not per choice; one whose prompt starts with
what a slot holds (a chat's next turn: the last prompt and its reply) prefills only the rest.
A server runs the engine on its own thread (engine_thread.py).
Batching is worth several times the throughput of serving one request at a time. The step
(wikigpt/decoding/decode.py) runs from state on the device: the host reads one thing per step, the new
tokens (and, for requests that ask, their log-probabilities), so torch.compile takes it whole, on a GPU as CUDA graphs (a handful of launches a step).

What a request may count on, whatever else is in the batch (tests/test_engine.py checks each):
  - its logits agree within ROW_LOGIT_TOLERANCE with those it gets decoded alone (float32);
  - so greedy decoding gives the same tokens, unless its top two logits are closer than that;
  - seeded sampling draws the same random numbers (its own counter-based stream), so it gives
    the same tokens unless a draw lands within that tolerance of a boundary between two tokens
    (about 1e-5 per token at temperature 1: rare, not impossible).
Not promised: bitwise-equal logits. Floating-point sums depend on how a kernel splits its work
(rows, threads, SIMD width), and CPU BLAS libraries and cuBLAS choose differently by batch shape
and machine: on one 2-core AMD EPYC the rows differed by 7e-8 at the default thread count and
not at all with OMP_NUM_THREADS=1. Two rules keep the differences that small and rare:
  - decode attention spans the keys of the longest live row, rounded up when compiled to a
    span (block_size, a quarter of it... down to KEY_SPAN_MIN: 64, 256, 1024 for a 1,024-token
    context); a row's keys past its position are masked, so they weigh exactly 0 at any span;
  - the decode batch is padded to a bucket of rows (1 for a request alone in slot 0, then 4, 8,
    16, ... up to n_slots): the CPU matmul kernels here (oneDNN/MKL, AVX2) handle rows in groups
    of 4, and a row's result differs in the last bit when it falls in a leftover group of
    another size (measured: M=5 vs M=8).
A compiled step has one graph per (row bucket, key span, candidate count): warm_up() compiles
and records them all, on the thread that will step the engine.

    engine = Engine(model, n_slots=16)
    engine.add(Request(prompt_ids, 64, SamplingParams(), stop_tokens={end}, seed=0, emit=print))
    while engine.active: engine.step()
    # or, the prefill in chunks of at most 512 prompt tokens between two steps (EngineThread's way):
    engine.join(request); while engine.active: engine.fill(512); engine.step()
"""
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from model import GPT
from wikigpt.decoding.decode import ROW_GROUP, DecodeState, Step, bucket, key_spans, pick
from wikigpt.decoding.sampling import CopySource, SamplingParams, candidates, knobs_row, seed_of

# a row's float32 logits alone vs in any batch (see the docstring): 100x the differences seen
ROW_LOGIT_TOLERANCE = 1e-5
# the most alternatives a token's log-probability comes with (OpenAI's API allows 20), and the
# log-probability given for an impossible token (OpenAI's -9999.0)
MAX_TOP_LOGPROBS, NO_LOGPROB = 20, -9999.0
# Calls of each graph in warm_up(): CUDA graph trees run a new graph once as a warm-up, record it
# on the second call and replay it from the third (on a CPU the first call compiles it).
WARM_CALLS = 3


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
    utf8_state: int = 0  # the UTF-8 decoder's state where the prompt ends (0: whole characters; see sample.py)
    logprobs: int | None = None  # each token's log-probability and this many likeliest others (None: none)
    prompt_logprobs: bool = False  # the prompt's tokens' too (after the first): prefilled whole, nothing reused
    reply_before: list = field(default_factory=list)  # a reply's tokens before this request (sample.py's last
    # context window): counted by the presence and frequency penalties as this request's own
    # state, owned by the engine
    tokens: list = field(default_factory=list)  # generated so far
    token_logprobs: list = field(default_factory=list)  # with logprobs, per token: (its logprob, [(id, logprob)])
    prompt_token_logprobs: list = field(default_factory=list)  # with prompt_logprobs, the same for prompt[1:]
    slot: int | None = None
    filled: int = 0  # prompt tokens prefilled into its slot so far
    reused: int = 0  # of them, the ones whose keys and values a slot held already (reuse_prefix, shared_prefill)
    finished: bool = False
    cancelled: bool = False


class Engine:
    """The batch: slots, the cache, one step at a time. Not thread-safe (see EngineThread).
    compile: torch.compile the decode step (None: on CUDA, as CUDA graphs; eager elsewhere). A
    compiled step that fails to compile, or fails on a graph's first call (on CUDA its first two:
    the second records the CUDA graph), decodes eagerly."""

    def __init__(self, model: GPT, n_slots: int = 16, tok=None, compile: bool | None = None):
        self.model = model
        self.capacity = n_slots  # requests decoded together (1: batching off)
        # cache rows, padding included (one slot needs none: its bucket is one row)
        self.n_slots = 1 if n_slots == 1 else math.ceil(n_slots / ROW_GROUP) * ROW_GROUP
        self.state = DecodeState(model, self.n_slots, tok)
        self.cache = self.state.cache
        self.by_slot: dict[int, Request] = {}
        self.filling: list[Request] = []  # in a slot, their prompts being prefilled: in the order they joined
        # prompt -> [the slots whose first keys and values are its own, its last logits (1, V)] (see
        # shared_prefill). A slot's stay intact while it decodes and after it leaves, until it is
        # taken again (a step's padding rows write only the last position, which no prompt reaches)
        self.prefilled: dict[tuple, list] = {}
        self.prompt_in: dict[int, tuple] = {}  # slot -> the prompt of `prefilled` it holds
        # a free slot -> the tokens whose keys and values its rows hold from position 0: the last request's
        # prompt and reply (a request in a slot: see holding). A new prompt that starts with them reuses them
        self.left: dict[int, tuple] = {}
        self.device = model.device
        compile = self.device.type == "cuda" if compile is None else compile
        self.step_fn = Step(self.graph_count if compile else 0, self.device.type == "cuda")
        self.warmed = False
        self.leased = False  # held by a generate() call (see generate.leased)

    @property
    def compiled(self) -> bool:
        return self.step_fn.compiled

    @property
    def active(self) -> int:
        return len(self.by_slot)

    @property
    def decoding(self) -> int:
        """Requests in a slot whose prompt is in (they have a token): what a step decodes."""
        return len(self.by_slot) - len(self.filling)

    @property
    def free_slots(self) -> int:
        return self.capacity - len(self.by_slot)

    def row_buckets(self) -> list[int]:
        """The batch sizes a step runs at (bucket: 1, ROW_GROUP, 8, 16... up to n_slots)."""
        out = [1]
        while out[-1] < self.n_slots:
            out.append(bucket(out[-1] + 1, self.n_slots))
        return out

    def graph_plan(self) -> list[tuple[int, int, int]]:
        """Every (rows, keys, top_k) a step runs at, one compiled graph each: top_k stands for
        its candidate count (sampling.candidates: top_k on, or off; one count for a small vocab)."""
        V = self.model.cfg.padded_vocab
        top_ks = {candidates([k], V): k for k in (0, SamplingParams().top_k)}.values()
        return [(rows, span, k) for rows in self.row_buckets() for span in key_spans(self.model.cfg.block_size)
                for k in top_ks]

    @property
    def graph_count(self) -> int:
        return len(self.graph_plan())

    def warm_up(self, on_graph=lambda: None):
        """Compile every graph of graph_plan() now, not at the first requests: dummy requests run
        each WARM_CALLS times (on a GPU: compiled, recorded as a CUDA graph, replayed). CUDA graph
        trees are per thread: call it on the thread that steps the engine (EngineThread does).
        on_graph() after each graph, for a progress bar."""
        if not self.compiled or self.warmed:
            return
        if self.by_slot:
            raise RuntimeError("warm_up() needs an engine with no request in it")
        for rows, span, top_k in self.graph_plan():
            if not self.compiled:
                break  # compiling failed: decoding is eager, nothing is left to warm
            for i in range(rows):  # the first one's keys fill the span's top (span - 2 .. span)
                prompt = [0] * (max(1, span - WARM_CALLS) if i == 0 else 1)
                self.add(Request(prompt, WARM_CALLS + 1, SamplingParams(temperature=0, top_k=top_k)))
            for _ in range(WARM_CALLS):
                self.step()
            self.clear()
            on_graph()
        self.warmed = True

    def add(self, req: Request):
        """Prefill the request's prompt into the lowest free slot and emit its first token."""
        self.join(req)
        self.fill()

    def join(self, req: Request):
        """Take the lowest free slot for the request (the decode batch spans the slots up to the
        highest in use); fill() prefills its prompt there, after what it reuses (reuse_prefix)."""
        if not req.prompt or len(req.prompt) >= self.model.cfg.block_size:
            raise ValueError(f"prompt of {len(req.prompt)} tokens: need 1..{self.model.cfg.block_size - 1}")
        if req.logprobs is not None and not 0 <= req.logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"logprobs={req.logprobs}: need 0..{MAX_TOP_LOGPROBS} alternatives")
        if any(not 0 <= i < self.model.cfg.vocab_size for i in req.params.logit_bias or {}):
            raise ValueError(f"logit_bias names a token id outside the vocabulary (0..{self.model.cfg.vocab_size - 1})")
        key = tuple(req.prompt)
        req.slot = min(set(range(self.n_slots)) - set(self.by_slot))
        self.keep_left(req.slot, key)
        # (the n choices of one prompt: the first prefills it, the others copy it and share its last logits)
        if key not in self.prefilled and all(tuple(r.prompt) != key for r in self.filling) and not req.prompt_logprobs:
            self.reuse_prefix(req)
        self.left.pop(req.slot, None)
        self.by_slot[req.slot] = req
        self.filling.append(req)
        self.forget(req.slot, keep=key)  # its rows are this request's now

    def keep_left(self, slot: int, prompt: tuple):
        """Before a request takes the slot: unless its prompt goes on from what the slot's last request
        left (that conversation's next turn), copy that to another free slot, one holding nothing
        if there is one, else the one left longest ago. A server's conversations come back in
        turns: each keeps its keys until n_slots others have come since, and the decode batch stays
        on the lowest slots."""
        held = self.left.get(slot)
        if not held or common_prefix(held, prompt) == len(held):
            return
        spares = [s for s in range(self.n_slots) if s != slot and s not in self.by_slot]
        empty = [s for s in spares if s not in self.left]
        oldest = [s for s in self.left if s in spares]  # (in the order they were left)
        spare = max(empty) if empty else oldest[0] if oldest else None
        if spare is not None:
            self.left.pop(spare, None)
            self.forget(spare)
            self.copy_rows(slot, spare, len(held))
            self.left[spare] = held

    def holding(self, slot: int) -> tuple:
        """The tokens whose keys and values the slot's rows hold from position 0: a request's prompt
        as far as it is prefilled and its reply but the newest token (a step writes the keys of the
        token it reads), or what its last request left there."""
        req = self.by_slot.get(slot)
        if req is None:
            return self.left.get(slot, ())
        return tuple(req.prompt[:req.filled]) + tuple(req.tokens[:-1] if req.filled == len(req.prompt) else ())

    def reuse_prefix(self, req: Request):
        """Start the request's prefill after the longest start of its prompt that a slot's rows hold
        (a chat's next turn: the last prompt and reply, then the new message): those keys and
        values are copied into its slot, unless they are there already. At least the prompt's last
        token is prefilled: its logits give the first token (so no reused position reaches the
        last, block_size - 1, which a step's padding rows write). A prompt a slot holds whole
        keeps its last logits too: shared_prefill, nothing prefilled."""
        key = tuple(req.prompt)
        lengths = {s: common_prefix(self.holding(s), key) for s in set(self.left) | set(self.by_slot)}
        src = max(lengths, key=lambda s: (lengths[s], s == req.slot), default=None)
        n = min(lengths.get(src, 0), len(key) - 1)
        if n > 0:
            if src != req.slot:
                self.left.pop(req.slot, None)  # (claimed no more before they are written over)
                self.forget(req.slot)
                self.copy_rows(src, req.slot, n)
            req.filled = req.reused = n

    def fill(self, budget: float = math.inf, on_error=None) -> int:
        """Prefill the joined requests' prompts in the order they joined, running at most `budget`
        prompt tokens through the model (at least one while any is left): a prompt past the budget
        goes on from where it stopped at the next call; a prompt a slot holds costs nothing (copied).
        Each request whose prompt is in emits its first token. A request whose prefill fails is
        released, then on_error(request, error) is called, or (without on_error) the error raised.
        Returns the prompt tokens run."""
        ran = 0
        for req in list(self.filling):
            if req.cancelled:
                self.release(req)
                continue
            if ran >= max(budget, 1) and tuple(req.prompt) not in self.prefilled:
                break  # the streams decoding get their next token first
            try:
                ran += self.fill_one(req, budget - ran)
            except Exception as e:
                self.release(req)
                if on_error is None:
                    raise
                on_error(req, e)
        return ran

    @torch.no_grad()
    def fill_one(self, req: Request, budget: float) -> int:
        """Run the next chunk of the request's prompt (at most `budget` tokens, at least one); once it
        is all in, write the slot's state and emit the first token. Returns the tokens run."""
        key, slot = tuple(req.prompt), req.slot
        logits = self.shared_prefill(key, slot) if req.filled == 0 and not req.prompt_logprobs else None
        ran = 0
        if logits is not None:
            req.reused = len(key)
        else:
            ran = int(min(len(key) - req.filled, max(budget, 1)))
            chunk = torch.tensor([req.prompt[req.filled:req.filled + ran]], device=self.device)  # (1, ran)
            self.cache.slot, self.cache.start = slot, req.filled
            try:
                x = self.model.hidden_states(chunk, self.cache)  # (1, ran, C)
            finally:
                self.cache.slot = None
            if req.prompt_logprobs:
                self.prompt_logprobs(req, x[0], req.filled)
            req.filled += ran
            if req.filled < len(key):
                return ran
            logits = self.model.lm_head(x[:, -1]).float()  # (1, V)
            self.prefilled[key] = [set(), logits]
        self.prefilled[key][0].add(slot)
        self.prompt_in[slot] = key
        req.filled = len(key)
        self.filling.remove(req)
        # the slot's state, written once its prompt is in (host -> device copies, no sync): not as it
        # joins, since the decode steps between its chunks compute its row as padding
        st, prompt = self.state, torch.tensor(req.prompt, device=self.device)
        st.seen[slot] = False
        st.seen[slot, prompt] = True
        st.knobs[slot] = torch.tensor(knobs_row(req.params))
        st.counts[slot] = 0.0
        if req.reply_before:  # sample.py's next context window: the reply so far counts
            before = torch.tensor(req.reply_before, device=self.device)
            st.counts[slot].index_add_(0, before, torch.ones(len(before), device=self.device))
        st.bias[slot] = 0.0
        if req.params.logit_bias:
            bias = req.params.logit_bias
            st.bias[slot, list(bias)] = torch.tensor(list(bias.values()), dtype=st.bias.dtype, device=self.device)
        st.key[slot], st.count[slot], st.utf8_state[slot] = seed_of(req.seed), 0, req.utf8_state
        st.copy_w[slot] = 0.0
        self.cache.pos[slot], self.cache.live[slot] = len(key), True
        self.set_copy([req])
        token = pick(st, self.model, torch.tensor([slot], device=self.device), logits,
                     candidates([req.params.top_k], self.model.cfg.padded_vocab))
        self.emitted([req], token.tolist())
        return ran

    def shared_prefill(self, prompt: tuple, slot: int) -> torch.Tensor | None:
        """When a slot holds this very prompt's keys and values (the n choices of a request),
        copy them into `slot` (a device copy: 8 choices of a 950-token prompt were 8 prefills)
        and return the prompt's last logits, from which each choice draws its own first token;
        else None."""
        held = self.prefilled.get(prompt)
        if held is None:
            return None
        slots, logits = held
        T = len(prompt)
        if slot not in slots:  # (a slot that held it, taken again, holds it still)
            self.copy_rows(min(slots), slot, T)  # keys past T are the source's own reply: not copied
        return logits

    def copy_rows(self, src: int, dst: int, n: int):
        """The keys and values of positions [0, n) from one slot's rows to another's (a device copy)."""
        for k, v in zip(self.cache.k, self.cache.v):  # (S, H, block_size, D) per layer
            k[dst, :, :n] = k[src, :, :n]
            v[dst, :, :n] = v[src, :, :n]

    def forget(self, slot: int, keep: tuple | None = None):
        """The slot's rows no longer hold its prompt's keys (unless that prompt is `keep`)."""
        prompt = self.prompt_in.get(slot)
        if prompt is None or prompt == keep:
            return
        del self.prompt_in[slot]
        slots = self.prefilled.get(prompt, [set()])[0]
        slots.discard(slot)
        if not slots:
            self.prefilled.pop(prompt, None)

    @torch.no_grad()
    def step(self):
        """One decode step for every request whose prompt is in: one batched forward, one token each."""
        self.drop_cancelled()
        reqs = [self.by_slot[s] for s in sorted(self.by_slot) if self.by_slot[s] not in self.filling]
        if not reqs:
            return
        self.cache.n = bucket(reqs[-1].slot + 1, self.n_slots)
        # the longest row's keys: its prompt and tokens, the newest of which this step writes; a
        # compiled step rounds them up to a span (one graph each), an eager one attends to just those
        keys = max(len(r.prompt) + len(r.tokens) for r in reqs)
        self.cache.span = next(s for s in key_spans(self.model.cfg.block_size) if s >= keys) if self.compiled else keys
        self.cache.masked = self.compiled or self.cache.n > 1
        self.set_copy(reqs)
        tokens = self.step_fn(self.model, self.state, candidates([r.params.top_k for r in reqs], self.model.cfg.padded_vocab))
        self.emitted(reqs, [tokens[r.slot] for r in reqs])

    def set_copy(self, reqs: list[Request]):
        """This step's copy distribution of the rows that copy evidence (CopySource): q is
        computed on the host from the reply so far and written to the device. And what of
        sampling the rows use (DecodeState.use)."""
        st = self.state
        copying = [r for r in reqs if r.params.copy > 0 and r.copy_from is not None]
        st.use([r.params for r in reqs], bool(copying), any(r.logprobs is not None for r in reqs), self.compiled)
        for r in copying:
            q = r.copy_from.prior(r.tokens)
            st.copy_w[r.slot] = r.params.copy if q else 0.0
            if q:
                row = torch.zeros(st.copy_q.size(1))
                row[list(q)] = torch.tensor(list(q.values()))
                st.copy_q[r.slot] = row.to(self.device, non_blocking=True)

    def emitted(self, reqs: list[Request], tokens: list[int]):
        """The host's side of a step: record each request's new token, finish it if it is done."""
        self.logprobs(reqs, tokens)
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

    def logprobs(self, reqs: list[Request], tokens: list[int]):
        """For the requests that ask (Request.logprobs), their new token's log-probability and the
        likeliest ids' (scored), from the logits pick() kept: before the copy, the penalty and
        temperature reshaped them, as vLLM reports them. Only when some request asks: one more
        small read from the device."""
        asking = [(r, t) for r, t in zip(reqs, tokens) if r.logprobs is not None]
        if asking:
            slots = torch.tensor([r.slot for r, _ in asking], device=self.device)
            rows = self.scored(self.state.raw[slots], [t for _, t in asking], max(r.logprobs for r, _ in asking))
            for (r, _), (logprob, top) in zip(asking, rows):
                r.token_logprobs.append((logprob, top[:r.logprobs]))

    def prompt_logprobs(self, req: Request, x, start: int):
        """The same for the prompt's tokens that follow the chunk's positions (x (T, C), from position
        `start`): what a completion's `echo` scores."""
        targets = req.prompt[start + 1:start + 1 + x.size(0)]  # (the last position's next token is generated)
        if targets and req.logprobs is not None:
            req.prompt_token_logprobs += self.scored(self.model.lm_head(x[:len(targets)]), targets, req.logprobs)

    def scored(self, logits, targets: list[int], k: int) -> list[tuple[float, list]]:
        """Per row of logits (n, V): (the log-probability of its target id, [(id, logprob)] of its k
        likeliest ids), under the model's own distribution."""
        lp = torch.log_softmax(logits[:, :self.model.cfg.vocab_size].float(), dim=-1)  # (n, vocab)
        lp = lp.nan_to_num(nan=NO_LOGPROB).clamp(min=NO_LOGPROB)  # JSON has no -inf or NaN (a broken model's)
        chosen = lp.gather(1, torch.tensor(targets, device=self.device)[:, None])[:, 0]  # (n,)
        top = lp.topk(k, dim=-1)  # (n, k) each, likeliest first
        return [(c, list(zip(ids, values))) for c, values, ids in
                zip(chosen.tolist(), top.values.tolist(), top.indices.tolist())]

    def release(self, req: Request):
        req.finished = True
        if req in self.filling:
            self.filling.remove(req)
        if req.slot is not None and self.by_slot.get(req.slot) is req:
            self.left[req.slot] = self.holding(req.slot)
            del self.by_slot[req.slot]
            self.cache.live[req.slot] = False

    def drop_cancelled(self):
        for req in [r for r in self.by_slot.values() if r.cancelled]:
            self.release(req)

    def fail_all(self, message: str):
        for req in list(self.by_slot.values()):
            self.release(req)
            req.emit(req, None, f"error: {message}")

    def clear(self, forget: bool = True):
        """Release every request (a generate() closed half-way, warm-up's dummies) and forget
        every prompt held (unless not `forget`): the weights may change before the next call (a
        training run's samples)."""
        for req in list(self.by_slot.values()):
            self.release(req)
        if not forget:
            return
        self.prefilled.clear()
        self.prompt_in.clear()
        self.left.clear()


def common_prefix(a: tuple, b: tuple) -> int:
    """How many tokens two sequences share from the start. A binary search over slices compared
    whole (C loops): a join compares the prompt with every slot's, up to a context each."""
    lo, hi = 0, min(len(a), len(b)) + 1  # a[:lo] == b[:lo]; a[:hi] differs from b[:hi] (or is past the end)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if a[:mid] == b[:mid] else (lo, mid)
    return lo
