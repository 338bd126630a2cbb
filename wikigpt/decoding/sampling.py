"""
Sampling: how the next token is picked, and the options every tool shares for it
(sample.py, chat.py, serve.py). One definition of each knob, its default and its valid range.
"""
import argparse
import hashlib
import random
from dataclasses import dataclass
from typing import Protocol

import torch

# valid ranges, checked the same way on the command line and in server requests
RANGES = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "top_k": (0, 10**6),
          "repetition_penalty": (0.5, 2.0), "copy": (0.0, 1.0),
          "presence_penalty": (-2.0, 2.0), "frequency_penalty": (-2.0, 2.0)}  # (OpenAI's ranges)
# logit_bias: OpenAI's bounds, a bias of -100..100 on at most 300 ids (-100 bans an id, 100 forces it)
MAX_BIAS, MAX_BIASED_IDS = 100.0, 300


@dataclass
class SamplingParams:
    temperature: float = 0.8  # 0: greedy
    top_k: int = 50  # keep the k most likely tokens (0: off)
    top_p: float = 0.95  # nucleus: the smallest set reaching this mass (1: off)
    repetition_penalty: float = 1.1  # CTRL-style penalty on tokens already seen (1: off)
    copy: float = 0.0  # with --rag: weight of copying the best evidence (see CopySource; 0: off)
    # OpenAI's penalties, subtracted from a logit per time its id is in the reply so far (frequency)
    # and once if it is there at all (presence); the prompt does not count (0: off)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict | None = None  # {token id: bias added to its logit, -100..100} (None: none)

    def problems(self) -> list[str]:
        """What is out of range, as messages naming the field and its valid range."""
        out = []
        for name, (lo, hi) in RANGES.items():
            value = getattr(self, name)
            if not lo <= value <= hi or (name == "top_p" and value == 0):
                bounds = f"in (0, {hi}]" if name == "top_p" else f"between {lo} and {hi}"
                out.append(f"{name} must be {bounds}, got {value}")
        bias = self.logit_bias or {}
        if len(bias) > MAX_BIASED_IDS:
            out.append(f"logit_bias may bias at most {MAX_BIASED_IDS} token ids, got {len(bias)}")
        out += [f"logit_bias[{i}] must be between {-MAX_BIAS:g} and {MAX_BIAS:g}, got {b}"
                for i, b in bias.items() if not -MAX_BIAS <= b <= MAX_BIAS][:1]
        return out

    @property
    def counting(self) -> bool:
        """Does it penalise ids by their count in the reply (presence or frequency penalty)?"""
        return self.presence_penalty != 0 or self.frequency_penalty != 0

    def kwargs(self) -> dict:
        """As keyword arguments of a generate() call (transformers' generation config)."""
        return dict(temperature=self.temperature, top_k=self.top_k or None, top_p=self.top_p,
                    repetition_penalty=self.repetition_penalty)


# copying the best evidence (CopySource) when answering from the sources: chosen on the demo's
# *train* questions (token F1 0.06 / 0.46 / 0.89 / 0.89 / 0.89 at 0 / 0.3 / 0.5 / 0.7 / 0.9); at 0.5
# a found continuation always wins greedy decoding
RAG_COPY = 0.5
CHAT_DEFAULTS = SamplingParams(temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.15)
# chat: a little cooler and firmer against loops than plain continuation


def add_sampling_args(p: argparse.ArgumentParser, defaults: SamplingParams = SamplingParams()):
    """The decoding options shared by sample.py and chat.py (the checkpoint's: load.add_model_args)."""
    p.add_argument("--max_new_tokens", type=int, default=200)
    add_sampling_knobs(p, defaults)
    p.add_argument("--seed", type=int, default=None, help="for reproducible samples")
    p.add_argument("--compile", action="store_true", help="compile the decode step (CUDA graphs on a GPU) before "
                   "the first token: a few graphs of seconds each, paid back over a long session (default: eager)")


def add_sampling_knobs(p: argparse.ArgumentParser, defaults: SamplingParams = SamplingParams()):
    """The SamplingParams fields as options (params_from_args reads them back)."""
    p.add_argument("--temperature", type=float, default=defaults.temperature, help="0: greedy")
    p.add_argument("--top_k", type=int, default=defaults.top_k, help="keep the k most likely tokens (0: off)")
    p.add_argument("--top_p", type=float, default=defaults.top_p, help="nucleus sampling mass (1: off)")
    p.add_argument("--repetition_penalty", type=float, default=defaults.repetition_penalty, help="1: off")
    p.add_argument("--presence_penalty", type=float, default=defaults.presence_penalty,
                   help="subtracted once from the logit of each token already in the reply, -2..2 (0: off)")
    p.add_argument("--frequency_penalty", type=float, default=defaults.frequency_penalty,
                   help="subtracted per time a token is already in the reply, -2..2 (0: off)")


def add_copy_arg(p: argparse.ArgumentParser):
    """--copy, for the commands that answer from evidence (chat.py --rag)."""
    p.add_argument("--copy", type=float, default=None, help="with --rag: weight of copying the best "
                   f"evidence, 0-1 (0: the model alone; default {RAG_COPY})")


def params_from_args(args) -> SamplingParams:
    from wikigpt.cli import UsageError

    copy = getattr(args, "copy", None)
    copy = copy if copy is not None else RAG_COPY if getattr(args, "rag", False) else 0.0
    params = SamplingParams(args.temperature, args.top_k, args.top_p, args.repetition_penalty, copy,
                            getattr(args, "presence_penalty", 0.0), getattr(args, "frequency_penalty", 0.0))
    problems = params.problems()
    if getattr(args, "max_new_tokens", 1) < 1:
        problems.append(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    if problems:
        raise UsageError("; ".join(problems))
    return params


# the columns of a knobs tensor
KNOBS = ("temperature", "top_k", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty")


def knobs_row(params: SamplingParams) -> list[float]:
    """A request's sampling options as one row of the (n, len(KNOBS)) knobs tensor (top_k 0: off)."""
    return [float(getattr(params, name)) for name in KNOBS]


def seed_of(seed: int | None) -> int:
    """Any seed (None: a fresh random one) -> the 31-bit key of a request's random stream."""
    if seed is None:
        return random.SystemRandom().getrandbits(31)
    return int.from_bytes(hashlib.blake2b(str(seed).encode(), digest_size=4).digest(), "big") >> 1


def uniform(key, count):
    """A uniform number in [0, 1) per row from (key, count): the count-th draw of the stream that
    `key` names. A counter-based generator (an integer hash on the device): no generator object
    per row, no host round trip, and a row's numbers never depend on the other rows. Every
    product stays below 2^62, so int64 arithmetic never overflows. key, count: (n,) int64."""
    x = (key ^ (count * 40503)) & 0x7FFFFFFF
    for a in (1103515245, 214013, 69069):
        x = (x * a + 12345) & 0x7FFFFFFF
        x = x ^ (x >> 15)
    return (x >> 7).float() * (1.0 / 2**24)  # (n,), 24 random bits: a float32's mantissa


def candidates(top_ks: list[int], vocab: int) -> int:
    """How many of the most likely ids a batch must sort: 64 when every row's top_k is at most
    that (the defaults are 40 and 50), else all of them; two sizes, so two compiled graphs per
    row bucket. The host knows every row's k, so this costs no sync; sorting 64 candidates
    instead of 8192 ids took the demo's decode step from 6.1 to ~4.4 ms on 2 CPU cores."""
    return min(vocab, 64) if top_ks and 0 < max(top_ks) <= 64 and min(top_ks) > 0 else vocab


def sample_tokens(logits, vocab_size: int, seen, knobs, u, allowed=None, k_max: int | None = None,
                  penalty: bool = True, nucleus: bool = True, counts=None):
    """Pick one token per row, all on the device, with no host sync (torch.compile(fullgraph=True)
    takes it): logits (n, V); seen (n, V) bool, ids already in each row's text (for the
    repetition penalty); knobs (n, len(KNOBS)) float, each row's KNOBS; u (n,) uniform numbers (None:
    every row is greedy); allowed (n, V) bool, if given, rules ids out (e.g. those that would
    break UTF-8); k_max: every row's top_k is at most this (see candidates(); None: V);
    penalty, nucleus: False when no row has a repetition penalty, a top_p (their ops would
    change nothing: an eager step skips them); counts (n, V) float, how often each id is in each
    row's reply so far, for the presence and frequency penalties (None: no row has one). Every
    step is row-wise, so a row's token never depends on the other rows. Returns (n,) int64."""
    V = logits.size(-1)
    temperature, top_k, top_p, rep, presence, frequency = (knobs[:, i:i + 1] for i in range(len(KNOBS)))  # (n, 1)
    if vocab_size < V:
        padding = torch.arange(V, device=logits.device) >= vocab_size  # (V,): never real tokens
        logits = logits.masked_fill(padding, -float("inf"))
    if allowed is not None:
        logits = logits.masked_fill(~allowed, -float("inf"))
    if penalty:
        penalised = torch.where(logits > 0, logits / rep, logits * rep)  # CTRL-style
        logits = torch.where(seen & (rep != 1.0), penalised, logits)
    if counts is not None:  # OpenAI's: additive, after the repetition penalty (vLLM's order)
        logits = logits - frequency * counts - presence * (counts > 0).float()
    greedy = logits.argmax(dim=-1)  # (n,)
    if u is None:
        return greedy
    # the best logit made 0 first: divided by a tiny temperature (1e-40 is in range, a float32
    # subnormal) the others reach -inf, never +inf, so the softmax below has no inf - inf (NaN)
    scaled = (logits - logits.amax(dim=-1, keepdim=True)) / torch.where(temperature > 0, temperature, 1.0)
    # One sort of the k_max most likely ids serves top-k (the k-th largest) and top-p (mass in
    # order): ids outside a row's top k are never picked, so they need no place in the order.
    # Equal values keep index order, whatever the batch.
    K = k_max or V
    if K < V:
        sorted_l, order = torch.topk(scaled, K, dim=-1, sorted=True)  # (n, K)
    else:
        sorted_l, order = scaled.sort(dim=-1, descending=True, stable=True)  # (n, V)
    kth = sorted_l.gather(1, (top_k.long() - 1).clamp(0, K - 1))  # (n, 1)
    sorted_l = sorted_l.masked_fill((top_k > 0) & (sorted_l < kth), -float("inf"))
    sorted_p = torch.softmax(sorted_l, dim=-1)
    if nucleus:
        drop = (sorted_p.cumsum(-1) - sorted_p > top_p) & (top_p < 1.0)  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
    # inverse-CDF sampling: one uniform number per row; right=True never picks a zero-probability id
    cdf = sorted_p.cumsum(-1)  # (n, K)
    at = torch.searchsorted(cdf, (u[:, None] * cdf[:, -1:]).contiguous(), right=True).clamp(max=K - 1)
    sampled = order.gather(1, at)[:, 0]  # (n,)
    sane = torch.isfinite(cdf[:, -1]) & (cdf[:, -1] > 0)  # (n,) a NaN row (e.g. NaN logits) picks greedy, not a masked id
    return torch.where((temperature[:, 0] > 0) & sane, sampled, greedy)


class CopySource(Protocol):
    """What a reply may copy from (replies.EvidenceCopy: the best evidence sentence or fact): a
    copy distribution q over the next token, mixed into the model's as a kNN-LM mixes in its
    neighbours' (Khandelwal et al. 2020): p = (1 - copy) p_model + copy q (mix_dense). A small
    model that cannot yet read a source back from its context can then answer from it."""

    def prior(self, reply: list[int]) -> dict | None:
        """q over the token after `reply` as {id: probability}, or None: nothing to copy here."""


def mix_dense(logits, q, weight):
    """The model's logits (n, V) mixed with dense copy distributions q (n, V), one weight per
    row (n,): log((1 - w) softmax(logits) + w q); rows with weight 0 keep their logits exactly."""
    w = weight[:, None]
    mixed = (torch.softmax(logits, dim=-1) * (1 - w) + w * q).log()
    return torch.where(w > 0, mixed, logits)
