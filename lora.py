"""
LoRA: fine-tune a frozen model through small low-rank adapters.

    python chat_sft.py config/sft_demo.toml --lora_rank=16             # adapters only
    python train.py config/demo_cpu.toml --init_from=out/demo/best.pt --lora_rank=8 --out_dir=out/more
    python chat.py --ckpt out/chat_lora/best.pt                        # loads base + adapters
    python lora.py merge out/chat_lora/best.pt out/chat_merged.pt      # a plain checkpoint

Each chosen nn.Linear y = W x becomes y = W x + (alpha / r) * B A dropout(x), with A (r, in)
random and B (out, r) zero, so a fresh adapter changes nothing. Only A and B train: no
gradients and no optimizer state for W. A LoRA checkpoint holds the adapters, the LoRA settings
and the base checkpoint's path and SHA-256; loading checks the hash.
"""
import argparse
import fnmatch
import hashlib
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cli import UsageError, run_main

DEFAULT_TARGETS = "attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj"  # every attention and MLP matrix


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
    if "lm_head" in chosen:
        raise UsageError("lora_targets: lm_head cannot take an adapter (the fused loss reads its weight "
                         "directly); adapt the attention and MLP matrices.")
    return chosen


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float, targets: str = DEFAULT_TARGETS) -> list[str]:
    """Freeze every parameter and wrap the target Linears in adapters. Returns their names."""
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
        setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, alpha, dropout))
    return names


def adapter_state(model: nn.Module) -> dict:
    return {k: v for k, v in model.state_dict().items() if ".lora_A" in k or ".lora_B" in k}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight: a plain model, as fast as the base."""
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


def merge_main(argv):
    from checkpoint import CHECKPOINT_VERSION, load_checkpoint, model_from_checkpoint, save_checkpoint
    from lora import merge_lora  # the module's own, not __main__'s: checkpoint.py built the layers from it

    p = argparse.ArgumentParser(prog="lora.py merge", description="Write a plain checkpoint with the adapters folded in.")
    p.add_argument("adapter", help="a checkpoint written by a --lora_rank run")
    p.add_argument("out", help="the plain checkpoint to write (must not exist)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise UsageError(f"{out} exists: choose another path (nothing was overwritten).")
    ckpt = load_checkpoint(args.adapter)
    if "lora" not in ckpt:
        raise UsageError(f"{args.adapter} is not a LoRA checkpoint (no adapters in it): nothing to merge.")
    model, _ = model_from_checkpoint(ckpt)
    merge_lora(model)
    save_checkpoint(out, {"version": CHECKPOINT_VERSION, "kind": ckpt["kind"], "step": ckpt.get("step"),
                          "model": model.state_dict(), "model_config": ckpt["model_config"],
                          "train_config": ckpt.get("train_config", {}), "tokenizer": ckpt["tokenizer"],
                          "val": ckpt.get("val"), "merged_from": {"adapter": str(args.adapter), **ckpt["lora"]}})
    print(f"wrote {out}: {Path(ckpt['lora']['base']['path']).name} with the adapters of {args.adapter} merged in")


def main(argv):
    if argv[:1] != ["merge"]:
        raise UsageError("usage: python lora.py merge ADAPTER.pt OUT.pt (training: --lora_rank=R in "
                         "train.py or chat_sft.py)")
    merge_main(argv[1:])


if __name__ == "__main__":
    run_main(main)
