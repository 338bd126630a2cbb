"""
Sampling: how the next token is picked, and the options every tool shares for it
(sample.py, chat.py, serve.py). One definition of each knob, its default and its valid range.
"""
import argparse
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# valid ranges, checked the same way on the command line and in server requests
RANGES = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "top_k": (0, 10**6),
          "repetition_penalty": (0.5, 2.0), "copy": (0.0, 1.0)}


@dataclass
class SamplingParams:
    temperature: float = 0.8  # 0: greedy
    top_k: int = 50  # keep the k most likely tokens (0: off)
    top_p: float = 0.95  # nucleus: the smallest set reaching this mass (1: off)
    repetition_penalty: float = 1.1  # CTRL-style penalty on tokens already seen (1: off)
    copy: float = 0.0  # with retrieved passages: weight of copying from them (see CopySource; 0: off)

    def problems(self) -> list[str]:
        """What is out of range, as messages naming the field and its valid range."""
        out = []
        for name, (lo, hi) in RANGES.items():
            value = getattr(self, name)
            if not lo <= value <= hi or (name == "top_p" and value == 0):
                bounds = f"in (0, {hi}]" if name == "top_p" else f"between {lo} and {hi}"
                out.append(f"{name} must be {bounds}, got {value}")
        return out

    def kwargs(self) -> dict:
        """The keyword arguments of sample_next / GPT.generate."""
        return dict(temperature=self.temperature, top_k=self.top_k or None, top_p=self.top_p,
                    repetition_penalty=self.repetition_penalty)


# copying from retrieved passages (CopySource) when answering from them: chosen on the demo's
# *train* questions (token F1 0.06 / 0.46 / 0.89 / 0.89 / 0.89 at 0 / 0.3 / 0.5 / 0.7 / 0.9); at 0.5
# a found continuation always wins greedy decoding
RAG_COPY = 0.5
CHAT_DEFAULTS = SamplingParams(temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.15)
# chat: a little cooler and firmer against loops than plain continuation


def add_sampling_args(p: argparse.ArgumentParser, defaults: SamplingParams = SamplingParams()):
    """The options shared by sample.py and chat.py."""
    p.add_argument("--ckpt", default="out/demo/best.pt", help="checkpoint to load")
    p.add_argument("--max_new_tokens", type=int, default=200)
    add_sampling_knobs(p, defaults)
    p.add_argument("--seed", type=int, default=None, help="for reproducible samples")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    add_dtype_arg(p)


def add_dtype_arg(p: argparse.ArgumentParser):
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16", "int8"),
                   help="weights to run with (default: as stored); int8: weight-only int8, see quant.py")


def add_sampling_knobs(p: argparse.ArgumentParser, defaults: SamplingParams = SamplingParams()):
    """The SamplingParams fields as options (params_from_args reads them back)."""
    p.add_argument("--temperature", type=float, default=defaults.temperature, help="0: greedy")
    p.add_argument("--top_k", type=int, default=defaults.top_k, help="keep the k most likely tokens (0: off)")
    p.add_argument("--top_p", type=float, default=defaults.top_p, help="nucleus sampling mass (1: off)")
    p.add_argument("--repetition_penalty", type=float, default=defaults.repetition_penalty, help="1: off")
    p.add_argument("--copy", type=float, default=None, help="with retrieved passages (--rag): weight of "
                   f"copying from them, 0-1 (0: off; default {RAG_COPY} with --rag, else {defaults.copy})")


def params_from_args(args) -> SamplingParams:
    from wikigpt.cli import UsageError

    copy = args.copy if args.copy is not None else RAG_COPY if getattr(args, "rag", False) else 0.0
    params = SamplingParams(args.temperature, args.top_k, args.top_p, args.repetition_penalty, copy)
    if params.problems():
        raise UsageError("; ".join(params.problems()))
    return params


def sample_next(logits, vocab_size, history, temperature, top_k, top_p, repetition_penalty, gen) -> int:
    """Pick the next token from logits (V,) after the ids in `history`. temperature 0 = greedy."""
    seen = torch.zeros(1, logits.size(-1), dtype=torch.bool, device=logits.device)
    if history:
        seen[0, torch.tensor(sorted(set(history)), device=logits.device)] = True
    params = SamplingParams(temperature, top_k or 0, top_p if top_p is not None else 1.0, repetition_penalty)
    return sample_rows(logits[None], vocab_size, seen, [params], [gen])[0]


def sample_rows(logits, vocab_size: int, seen, params: list[SamplingParams], gens: list, allowed=None) -> list[int]:
    """Pick one token per row: logits (n, V), seen (n, V) bool (ids already in each row's
    sequence, for the repetition penalty), each row with its own options and random stream;
    allowed (n, V) bool, if given, rules ids out (e.g. those that would break UTF-8).
    Every step is row-wise, so a row's token never depends on the other rows."""
    n, V = logits.shape
    col = lambda values: torch.tensor(values, dtype=logits.dtype, device=logits.device)[:, None]  # (n, 1)
    logits = logits.clone()
    logits[:, vocab_size:] = -float("inf")  # the padding ids are never real tokens
    if allowed is not None:
        logits = logits.masked_fill(~allowed, -float("inf"))
    penalty = col([p.repetition_penalty for p in params])
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)  # CTRL-style
    logits = torch.where(seen & (penalty != 1.0), penalised, logits)
    greedy = logits.argmax(dim=-1)
    temperature = col([p.temperature if p.temperature > 0 else 1.0 for p in params])
    logits = logits / temperature
    ks = [min(p.top_k, vocab_size) if p.top_k else 0 for p in params]
    top = None
    if any(ks):
        top = torch.topk(logits, max(ks), dim=-1)  # (n, k_max), best first
        kth = torch.stack([top.values[i, k - 1] if k else torch.tensor(-float("inf")) for i, k in enumerate(ks)])
        logits = logits.masked_fill(logits < kth[:, None], -float("inf"))
    probs = F.softmax(logits, dim=-1)
    top_p = col([p.top_p for p in params])
    nucleus = top_p < 1.0  # (n, 1)
    if nucleus.any():
        if top is not None and all(k for k, p in zip(ks, params) if p.top_p < 1.0):
            order = top.indices  # with top-k on, only its k_max candidates can be kept: sort those,
            sorted_p = probs.gather(1, order)  # not all V (~4x less sampling time at k=40, V=8192)
        else:
            # stable sort: equal probabilities keep index order, whatever the batch
            sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
        drop = (sorted_p.cumsum(-1) - sorted_p > top_p) & nucleus  # keep the smallest set reaching top_p
        kept = torch.zeros_like(probs).scatter(1, order, sorted_p.masked_fill(drop, 0.0))
        probs = torch.where(nucleus, kept, probs)
    # inverse-CDF sampling: one uniform number per row instead of multinomial's one per vocab
    # entry (~0.2 ms less per token on CPU); right=True never picks a zero-probability token
    cdf = probs.cumsum(-1)  # (n, V)
    u = torch.stack([torch.rand((), generator=g, device=logits.device) for g in gens])[:, None] * cdf[:, -1:]
    picked = torch.searchsorted(cdf, u, right=True)[:, 0].clamp(max=V - 1)
    return [int(greedy[i]) if p.temperature <= 0 else int(picked[i]) for i, p in enumerate(params)]


MAX_COPY_N = 8  # the longest run of generated tokens looked up in the passages


class CopySource:
    """Retrieved passages a reply may copy from: a copy distribution mixed into the model's,
    p = (1 - copy) p_model + copy q, as a kNN-LM mixes in its neighbours' (Khandelwal et al.
    2020), with q from the passages themselves: at the start of the reply, the passages' first
    tokens (the best-ranked weighs most: 1, 1/2, 1/3...); then after the reply's last n tokens
    (n = 8 down to 1, the longest found), the tokens that follow those n in the passages; after
    a sentence's last token, the end of the turn. A small model that cannot yet read a passage back in its
    context (the demo's: see the README) can then answer from it; a model that can, needs less."""

    def __init__(self, passages: list[list[int]], sentence_ends: set, end_of_turn: int):
        self.follow: dict[tuple, Counter] = {}  # n-gram -> what follows it, counted
        self.starts = Counter()
        for rank, ids in enumerate(p for p in passages if p):
            self.starts[ids[0]] += 1 / (rank + 1)
        for ids in passages:
            for i in range(1, len(ids)):
                for n in range(1, min(MAX_COPY_N, i) + 1):
                    self.follow.setdefault(tuple(ids[i - n:i]), Counter())[ids[i]] += 1
        self.sentence_ends, self.end_of_turn = sentence_ends, end_of_turn

    @classmethod
    def from_passages(cls, tok, passages: list[tuple[str, str]]) -> "CopySource":
        """From (title, text) passages as retrieved (their texts: what an answer quotes)."""
        return cls([tok.encode(text) for _, text in passages], tok.sentence_end_ids(), tok.end_of_turn)

    def prior(self, reply: list[int]) -> dict | None:
        """q over the next token as {id: probability}, or None: nothing to copy here."""
        if not reply:
            total = sum(self.starts.values())
            return {t: w / total for t, w in self.starts.items()} if total else None
        if reply[-1] in self.sentence_ends:
            return {self.end_of_turn: 1.0}
        for n in range(min(MAX_COPY_N, len(reply)), 0, -1):
            if follow := self.follow.get(tuple(reply[-n:])):
                total = sum(follow.values())
                return {t: c / total for t, c in follow.items()}
        return None


def mix_copy(logits, q: dict, weight: float):
    """Logits (V,) of the model mixed with a copy distribution q: log((1-w) softmax + w q)."""
    p = F.softmax(logits, dim=-1) * (1 - weight)
    ids = torch.tensor(list(q), device=logits.device)
    p[ids] += weight * torch.tensor(list(q.values()), dtype=p.dtype, device=logits.device)
    return p.log()


def make_generator(device, seed: int | None) -> torch.Generator:
    """A private random stream: same seed -> same samples, whatever else runs meanwhile."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else torch.seed())
    return gen
