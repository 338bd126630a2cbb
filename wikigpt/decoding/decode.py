"""
The decode step of wikigpt/decoding/engine.py, on the device: the shapes it runs at (row buckets, key
spans), the state it reads and writes (every piece of a request's state lives on the device),
and the step itself, forward + sampling with no host sync, compiled whole (fullgraph=True) with a
graph limit of its own. Why rows and keys come in buckets: the engine's docstring.
"""
import inspect
import sys
from collections import Counter

import torch
import torch.nn.functional as F

from model import GPT
from wikigpt.decoding.sampling import KNOBS, mix_dense, sample_tokens, uniform

ROW_GROUP = 4  # the smallest bucket of decode rows beside other rows (see wikigpt/decoding/engine.py)
# Decode attention's key spans. Each is a graph of its own per row bucket, compiled (seconds to
# tens of seconds each on a GPU) before a server listens: growing by 4 keeps 3 spans for a
# 1,024-token context (by 2: 5), and a request reads at most 4x the keys it needs, where it read
# up to 16x (64 of 1,024). Under 64 keys, attention is too small a part of a step to matter.
KEY_SPAN_MIN, KEY_SPAN_GROWTH = 64, 4


def compile_error(e: Exception) -> bool:
    """Did the compiler raise it (FailOnRecompileLimitHit is not a TorchDynamoException)? Read
    only from a compiled step: torch._dynamo takes 1.2 s to import, each process that decodes."""
    return any(isinstance(e, getattr(torch._dynamo.exc, name, ()))
               for name in ("TorchDynamoException", "FailOnRecompileLimitHit"))


def bucket(rows: int, n_slots: int) -> int:
    """Rows a decode step runs for `rows` (the highest busy slot + 1): 1, then 4, 8, 16... up to
    n_slots (one compiled graph each). A request alone in slot 0 runs as one row, as
    model.generate runs it: the row group is about a row's neighbours, and it has none."""
    if rows == 1:
        return 1
    return min(max(ROW_GROUP, 1 << (rows - 1).bit_length()), n_slots)


def key_spans(block_size: int) -> list[int]:
    """The key lengths decode attention runs at, shortest first (see KEY_SPAN_MIN)."""
    spans = [block_size]
    while spans[-1] // KEY_SPAN_GROWTH >= KEY_SPAN_MIN:
        spans.append(spans[-1] // KEY_SPAN_GROWTH)
    return spans[::-1]


def cache_bytes(model: GPT, n_slots: int) -> int:
    """What SlotCache holds for n_slots: keys and values of every layer, each (S, H, T, D)."""
    cfg = model.cfg
    return 2 * cfg.n_layer * n_slots * cfg.n_head * cfg.block_size * cfg.head_size * model.act_dtype.itemsize


class SlotCache:
    """Keys and values of n_slots independent sequences: k, v, per layer (S, H, T, D). One idea,
    not model.KVCache's (all rows at one position): one row per request, each at its own
    position pos[s], joining and leaving at any step. A forward runs either one slot's prefill or
    a decode step over slots 0..n-1 and keys 0..span-1 (the cache interface: model.KVCache)."""

    def __init__(self, model: GPT, n_slots: int):
        cfg, device = model.cfg, model.device
        # one tensor per layer, not slices of one: a compiled step then writes each in place
        # (the write into a slice of a larger tensor was copied whole, per layer and step)
        shape = (n_slots, cfg.n_head, cfg.block_size, cfg.head_size)
        self.k = [torch.zeros(shape, device=device, dtype=model.act_dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=model.act_dtype) for _ in range(cfg.n_layer)]
        self.pos = torch.zeros(n_slots, dtype=torch.long, device=device)  # (S,)
        self.live = torch.zeros(n_slots, dtype=torch.bool, device=device)  # (S,) rows with a request
        # this forward: a prefill of slot `slot` from position `start` (a prompt's chunk), or a decode
        # of n rows over `span` keys, masked unless every one is a key of the row (one row, its own
        # keys: an eager step alone)
        self.slot, self.start, self.n, self.span, self.masked = None, 0, 0, cfg.block_size, True
        self.decoding = None  # a decode step's (where the new keys go, key mask), made once for all layers

    def positions(self, T: int):
        device = self.pos.device
        if self.slot is not None:
            return self.start + torch.arange(T, device=device)[None]  # (1, T)
        H, T_max = self.k[0].shape[1:3]
        # rows without a request compute at the last position, unused: no prompt reaches it (at most
        # block_size - 1 tokens), so a prompt a slot holds or is being prefilled with stays whole,
        # and a row that reaches it writes its own key there before it reads it
        at = torch.where(self.live[:self.n], self.pos[:self.n], T_max - 1)  # (n,)
        # row r's new key, head h, in a layer's (S*H*T, D) view: one index_copy_ per layer
        heads = torch.arange(self.n, device=device)[:, None] * H + torch.arange(H, device=device)[None]  # (n, H)
        rows = (heads * T_max + at[:, None]).view(-1)  # (n*H,)
        visible = torch.arange(self.span, device=device)[None] <= at[:, None]  # (n, span)
        self.decoding = rows, visible[:, None, None] if self.masked else None
        return at[:, None]  # (n, 1)

    def attend(self, layer: int, q, k, v):
        if self.slot is not None:  # prefill a slot: causal attention over its prompt so far
            s, T = self.start, k.size(2)
            self.k[layer][self.slot, :, s:s + T], self.v[layer][self.slot, :, s:s + T] = k[0], v[0]
            if s == 0:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (1, H, T, D)
            keys, values = self.k[layer][self.slot, None, :, :s + T], self.v[layer][self.slot, None, :, :s + T]
            # a later chunk: its query i sits at position s + i and sees keys 0 .. s + i
            visible = torch.arange(s + T, device=q.device)[None] <= s + torch.arange(T, device=q.device)[:, None]
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)  # (1, H, T, D)
        rows, visible = self.decoding
        D = k.size(-1)
        self.k[layer].view(-1, D).index_copy_(0, rows, k.reshape(-1, D))  # k, v: (n, H, 1, D)
        self.v[layer].view(-1, D).index_copy_(0, rows, v.reshape(-1, D))
        keys, values = self.k[layer][:self.n, :, :self.span], self.v[layer][:self.n, :, :self.span]  # views
        # in the cache's dtype (the model's), through the fused kernel; masked keys weigh exactly 0
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)  # (n, H, 1, D)

    def advance(self, T: int):
        if self.slot is not None:
            self.pos[self.slot] = self.start + T
        else:
            self.pos[:self.n] += self.live[:self.n].long()  # rows without a request stay where they are
        self.decoding = None
class DecodeState:
    """What a decode step reads and writes, per slot, on the device (S slots, V ids)."""

    def __init__(self, model: GPT, n_slots: int, tok=None):
        S, V, device = n_slots, model.cfg.padded_vocab, model.device
        self.cache = SlotCache(model, S)
        self.last = torch.zeros(S, dtype=torch.long, device=device)  # each slot's newest token
        self.seen = torch.zeros(S, V, dtype=torch.bool, device=device)  # ids in its text so far
        self.knobs = torch.zeros(S, len(KNOBS), device=device)  # its sampling options (sampling.KNOBS)
        self.counts = torch.zeros(S, V, device=device)  # times each id is in its reply (presence, frequency)
        self.bias = torch.zeros(S, V, device=device)  # added to its logits (logit_bias)
        self.key = torch.zeros(S, dtype=torch.long, device=device)  # its random stream...
        self.count = torch.zeros(S, dtype=torch.long, device=device)  # ...and the draws taken
        self.copy_w = torch.zeros(S, device=device)  # its copy weight this step (0: none)
        self.copy_q = torch.zeros(S, V, device=device)  # its copy distribution this step
        # with a tokenizer: only ids that keep each reply valid UTF-8 (tokenizer.utf8_table)
        self.utf8 = tok.utf8_table(V).to(device) if tok is not None else None  # (8, V)
        self.utf8_state = torch.zeros(S, dtype=torch.long, device=device)  # its decoder state
        self.raw = torch.zeros(S, V, device=device)  # its last logits as the model gave them (for logprobs)
        self.copying = self.penalty = self.nucleus = self.sampling = self.logprobs = True  # see use()
        self.counting = self.biased = True
        if device.type == "cuda":  # CUDA graphs replay on these very buffers (no copy in or out)
            for t in self.buffers():
                torch._dynamo.mark_static_address(t)

    def buffers(self) -> list:
        """Every tensor a step reads or writes besides the model's. Under CUDA graphs one not marked
        static is copied into the graph's own buffer at every replay (the UTF-8 table was: 3.2 MB a
        step at V=50304)."""
        c = self.cache
        return [*c.k, *c.v, c.pos, c.live, self.last, self.seen, self.knobs, self.counts, self.bias, self.key,
                self.count, self.copy_w, self.copy_q, self.utf8_state, self.raw,
                *([self.utf8] if self.utf8 is not None else [])]

    def use(self, params: list, copying: bool, logprobs: bool, everything: bool):
        """Which parts of sampling this step's rows use, from their options (the host knows them):
        an eager step skips the others, whose ops would leave every logit as it is (or, logprobs,
        keeps no copy of them); a compiled step (everything) runs them all, one graph whatever the rows ask."""
        self.copying = everything or copying
        self.logprobs = everything or logprobs
        self.penalty = everything or any(p.repetition_penalty != 1 for p in params)
        self.nucleus = everything or any(p.top_p < 1 for p in params)
        self.sampling = everything or any(p.temperature > 0 for p in params)
        self.counting = everything or any(p.counting for p in params)
        self.biased = everything or any(p.logit_bias for p in params)

    def mutable(self) -> tuple:
        """What a step changes besides the keys and values (which a rerun writes again the same)."""
        return self.cache.pos, self.last, self.seen, self.counts, self.count, self.utf8_state

    def snapshot(self) -> list:
        return [t.clone() for t in self.mutable()]

    def restore(self, saved: list):
        for t, s in zip(self.mutable(), saved):
            t.copy_(s)


def pick(state: DecodeState, model: GPT, rows, logits, k_max: int):
    """Sample the next token of `rows` (a slice or index tensor) from their logits (n, V) and
    update their state: all on the device. k_max: see sampling.candidates. Returns the
    tokens, (n,) int64."""
    if state.logprobs:  # what the model gave, before copying and sampling options: for Engine.logprobs
        state.raw[rows] = logits
    if state.copying:
        logits = mix_dense(logits, state.copy_q[rows], state.copy_w[rows])
    if state.biased:  # on the distribution the reply is drawn from: -100 bans an id even from a copy
        logits = logits + state.bias[rows]
    allowed = state.utf8[state.utf8_state[rows]] >= 0 if state.utf8 is not None else None
    u = uniform(state.key[rows], state.count[rows]) if state.sampling else None
    tokens = sample_tokens(logits, model.cfg.vocab_size, state.seen[rows], state.knobs[rows], u, allowed, k_max,
                           state.penalty, state.nucleus, state.counts[rows] if state.counting else None)
    n = tokens.size(0)
    idx = torch.arange(state.last.size(0), device=tokens.device)[rows]  # (n,) the slots
    state.seen[idx, tokens] = True
    if state.counting:
        state.counts[idx, tokens] += 1
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


_graphs_in_process = 0  # compiled engines' graphs, for torch versions without a per-compile limit


def compiled_step(graphs: int, cuda: bool):
    """decode_step under torch.compile, allowed the `graphs` graphs its engine plans (dynamo's
    default limit of 8 is below a 16-slot engine's: with fullgraph=True the 9th graph raised)."""
    options = dict(fullgraph=True, dynamic=False, mode="reduce-overhead" if cuda else None)
    if "isolate_recompiles" in inspect.signature(torch.compile).parameters:
        # a limit of this engine's own: other engines' graphs of decode_step do not count
        return torch.compile(decode_step, recompile_limit=graphs, isolate_recompiles=True, **options)
    # older torch: one limit per code object, shared by every engine in the process: raise it to all of theirs
    global _graphs_in_process
    _graphs_in_process += graphs
    config = torch._dynamo.config
    config.cache_size_limit = max(config.cache_size_limit, _graphs_in_process)
    config.accumulated_cache_size_limit = max(config.accumulated_cache_size_limit, _graphs_in_process)
    return torch.compile(decode_step, **options)


class Step:
    """decode_step, compiled when `graphs` > 0 (the graphs its engine plans), as its tokens (the
    step's one host read). A compile that fails (dynamo's or the backend's error, the recompile
    limit, anything raised by a graph's first call, or on CUDA its second, which records the CUDA
    graph: out of memory in the graph pool, say) decodes eagerly from then on, and says so once."""

    def __init__(self, graphs: int, cuda: bool):
        self.fn = compiled_step(graphs, cuda) if graphs else None
        self.calls = Counter()  # (rows, keys, k_max) -> calls that ran that compiled graph
        # the calls of a graph that may still fail for the compiler's reasons: under mode=
        # "reduce-overhead" CUDA graph trees run a graph's first call as a warm-up and record it on the second
        self.setting_up = 2 if cuda else 1

    @property
    def compiled(self) -> bool:
        return self.fn is not None

    def __call__(self, model: GPT, state: DecodeState, k_max: int) -> list[int]:
        if self.fn is None:
            return decode_step(model, state, k_max).tolist()
        graph = (state.cache.n, state.cache.span, k_max)
        early = self.calls[graph] < self.setting_up
        saved = state.snapshot() if early else None  # a call that fails there may stop half-way
        try:
            tokens = self.fn(model, state, k_max).tolist()
        except Exception as e:
            if not (early or compile_error(e)):
                raise  # a graph set up and run before: a real failure, not the compiler's
            self.fall_back(e, state, saved)
            return decode_step(model, state, k_max).tolist()
        self.calls[graph] += 1
        return tokens

    def fall_back(self, error: Exception, state: DecodeState, saved: list | None):
        if saved is not None:
            state.restore(saved)
        what = (str(error).strip().splitlines() or [""])[0][:150]
        print(f"warning: the decode step does not compile ({type(error).__name__}: {what}); decoding eagerly "
              "instead.", file=sys.stderr)
        self.fn = None
