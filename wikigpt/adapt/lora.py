"""
LoRA: fine-tune a frozen model through small low-rank adapters.

    python chat_sft.py config/sft_demo.toml --lora_rank=16             # adapters only
    python train.py config/demo_cpu.toml --init_from=out/demo/best.pt --lora_rank=8 --out_dir=out/more
    python chat.py --ckpt out/chat_lora/best.pt                        # loads base + adapters
    python convert.py lora out/chat_lora/best.pt out/chat_merged.pt    # a plain checkpoint

Each chosen nn.Linear y = W x becomes y = W x + (alpha / r) * B A dropout(x), with A (r, in)
random and B (out, r) zero, so a fresh adapter changes nothing. Only A and B train: no
gradients and no optimizer state for W. A LoRA checkpoint holds the adapters, the LoRA settings
and the base checkpoint's path and SHA-256; loading checks the hash.
"""
import fnmatch
import hashlib
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from wikigpt.cli import UsageError

# every attention and MLP matrix, and the output head: on the demo's chat SFT (100 steps, rank
# 16) adapting the head too took the held-out loss from 5.89 to 5.16, against 4.99 for full SFT
DEFAULT_TARGETS = "attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj,lm_head"


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank  # keeps the update's size independent of the rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.drop = nn.Dropout(dropout)

    def forward(self, x):  # x: (..., in)
        return self.base(x) + F.linear(F.linear(self.drop(x), self.lora_A), self.lora_B) * self.scale

    def merged(self) -> nn.Linear:
        """The base Linear with B A folded into its weight."""
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scale  # (out, in)
        self.base.weight.data += delta.to(self.base.weight.dtype)
        return self.base


class LowRankDelta(nn.Module):
    """The same update as LoRALinear, as a parametrization W -> W + (alpha / r) B A: for the
    output head, whose weight the fused loss reads directly instead of calling the layer."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float, device=None):
        super().__init__()
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, weight):  # (out, in)
        return weight + (self.lora_B @ self.lora_A).to(weight.dtype) * self.scale


class TrainableRows(nn.Module):
    """Trainable changes to a few rows of a (V, C) token matrix: the special tokens' rows of the
    embedding and the output head. Chat SFT teaches <|user|>, <|assistant|>, <|end|>, which
    pretraining never showed: with those rows frozen, the model could not learn to end a turn."""

    def __init__(self, ids: list[int], dim: int, device=None):
        super().__init__()
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.long, device=device))
        self.delta = nn.Parameter(torch.zeros(len(ids), dim, device=device))

    def forward(self, weight):  # (V, C) -> (V, C) with the rows' deltas added
        return weight.index_add(0, self.ids, self.delta.to(weight.dtype))


def _parent(model: nn.Module, name: str):
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def target_names(model: nn.Module, targets: str) -> list[str]:
    """The Linear layers whose names match a comma-separated pattern (fnmatch; a pattern
    without wildcards matches the end of a name, e.g. mlp.c_fc -> blocks.3.mlp.c_fc)."""
    patterns = [p.strip() for p in targets.split(",") if p.strip()]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = [n for n in linears
              if any(fnmatch.fnmatch(n, p) or n == p or n.endswith("." + p) for p in patterns)]
    if not chosen:
        sample = sorted({n.split(".", 2)[-1] for n in linears})
        raise UsageError(f"lora_targets {targets!r} match no linear layer. The layers are named like: "
                         f"{', '.join(sample)} (in blocks.0 ... blocks.N).")
    if "lm_head" in chosen and model.lm_head.weight is model.wte.weight:
        if targets == DEFAULT_TARGETS:  # the default's "every matrix": the tied head is the embedding
            return [n for n in chosen if n != "lm_head"]
        raise UsageError("lora_targets: this model's output head is its token embedding (gpt2 preset, "
                         "tied); adapt the attention and MLP matrices.")
    return chosen


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float, targets: str = DEFAULT_TARGETS,
               token_rows: list[int] = ()) -> list[str]:
    """Freeze every parameter, wrap the target Linears in adapters and, for the ids in
    token_rows, make those rows of the embedding and head trainable. Returns the names."""
    names = target_names(model, targets)
    for name in names:
        layer = model.get_submodule(name)
        if not 1 <= rank <= min(layer.in_features, layer.out_features):
            raise UsageError(f"lora_rank {rank}: must be between 1 and {min(layer.in_features, layer.out_features)} "
                             f"(the smaller side of {name}, {layer.out_features}x{layer.in_features}).")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent, attr = _parent(model, name)
        layer = getattr(parent, attr)
        if name == "lm_head":  # its weight is read directly (fused loss): adapt it as a parametrization
            parametrize.register_parametrization(layer, "weight", LowRankDelta(
                layer.out_features, layer.in_features, rank, alpha, layer.weight.device))
        else:
            setattr(parent, attr, LoRALinear(layer, rank, alpha, dropout))
    if token_rows:
        tied = model.lm_head.weight is model.wte.weight
        rows = TrainableRows(list(token_rows), model.wte.weight.size(1), model.wte.weight.device)
        parametrize.register_parametrization(model.wte, "weight", rows)
        # tied (gpt2): the head reads the same rows, so it shares the same deltas
        head_rows = rows if tied else TrainableRows(list(token_rows), model.lm_head.weight.size(1), rows.ids.device)
        parametrize.register_parametrization(model.lm_head, "weight", head_rows)
    return names


def adapter_state(model: nn.Module) -> dict:
    return {k: v for k, v in model.state_dict().items() if ".lora_" in k or k.endswith(".delta")}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight: a plain model, as fast as the base."""
    tied = model.lm_head.weight is model.wte.weight or (
        parametrize.is_parametrized(model.wte) and parametrize.is_parametrized(model.lm_head)
        and model.lm_head.parametrizations.weight.original is model.wte.parametrizations.weight.original)
    for module in (model.wte, model.lm_head):
        if parametrize.is_parametrized(module):
            # the row deltas are written into the original weight in place; a tied head shares
            # that weight, so it must not add them a second time
            keep = not (tied and module is model.lm_head)
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=keep)
    if tied:
        model.lm_head.weight = model.wte.weight  # one matrix again
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            parent, attr = _parent(model, name)
            setattr(parent, attr, m.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def base_reference(path) -> dict:
    return {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}


def resolve_base(info: dict, adapter_path) -> Path:
    """The base checkpoint of a LoRA checkpoint, checked against its recorded hash."""
    base = Path(info["base"]["path"])
    if not base.is_file():
        raise UsageError(f"{adapter_path}: its base checkpoint {base} is gone. LoRA checkpoints hold only "
                         "the adapters: put the base back at that path (or merge while you still have it).")
    if file_sha256(base) != info["base"]["sha256"]:
        raise UsageError(f"{adapter_path}: the base checkpoint {base} has changed since these adapters were "
                         "trained (SHA-256 differs), so they would run on the wrong weights. Restore the "
                         "original base or train the adapters again.")
    return base
