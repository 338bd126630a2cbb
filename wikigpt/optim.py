"""
Optimizers and the learning-rate schedule of train.py (and so of chat_sft.py): AdamW for
embeddings, head and norms; Muon for the hidden matrices (optimizer=muon, the default).
"""
import math

import torch

from model import GPT


def zeropower_newton_schulz(G, steps=5):
    """Approximately the orthogonal matrix closest to G (its 'zeroth power' U V^T), by a
    quintic Newton-Schulz iteration tuned to converge fast from a normalised start."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    transposed = X.size(0) > X.size(1)
    X = X.mT if transposed else X
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return (X.mT if transposed else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum SGD whose update for each hidden matrix is orthogonalised (all its singular
    values set to ~1), so every direction learns at the same speed. For 2-D weights only."""

    def __init__(self, params, lr=0.02, momentum=0.95):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self, closure=None):  # closure: the Optimizer interface (DCP's state init passes it)
        for group in self.param_groups:
            sharded = []  # (param, update, scale) of FSDP's matrices, orthogonalised together below
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"])  # Nesterov
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                if is_sharded(update):
                    sharded.append((p, update, scale))
                else:
                    p.add_(zeropower_newton_schulz(update), alpha=-group["lr"] * scale)
            for p, ortho, scale in orthogonalise_sharded(sharded):
                p.add_(ortho, alpha=-group["lr"] * scale)


def is_sharded(t) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


def orthogonalise_sharded(items: list) -> list:
    """zeropower_newton_schulz of FSDP's sharded matrices (DTensors, each process holding some
    rows), the work divided among the processes: matrix i is gathered whole and orthogonalised
    by process i mod N alone, then broadcast (asynchronously: the next matrices are worked on
    meanwhile), and every process keeps its own rows. The same arithmetic on one process as
    before on all: exact, and N times less of it (~30 n^3 FLOPs a matrix)."""
    import torch.distributed as dist
    from torch.distributed.tensor import distribute_tensor

    out, pending = [], []
    for i, (p, update, scale) in enumerate(items):
        group = update.device_mesh.get_group()
        owner = i % dist.get_world_size(group)
        full = update.full_tensor()  # an all-gather: every process takes part
        ortho = zeropower_newton_schulz(full) if dist.get_rank(group) == owner else torch.empty_like(full)
        work = dist.broadcast(ortho, src=dist.get_global_rank(group, owner), group=group, async_op=True)
        pending.append((p, update, scale, ortho, work))
    for p, update, scale, ortho, work in pending:
        work.wait()
        out.append((p, distribute_tensor(ortho, update.device_mesh, update.placements, src_data_rank=None), scale))
    return out


def build_optimizers(model: GPT, cfg, device_type: str) -> list:
    """AdamW, decaying matrices only (not norms/biases); with optimizer=muon the hidden
    (block) matrices go to Muon instead. Each param group keeps its peak lr in 'base_lr'.
    Frozen parameters (LoRA's base) get no optimizer state; LoRA's low-rank A and B train
    with AdamW, since orthogonalising a rank-r update (Muon) would set all r directions to
    the same size."""
    hidden = {id(p) for n, p in model.blocks.named_parameters() if p.dim() == 2 and ".lora_" not in n}
    use_muon = cfg.optimizer == "muon"
    decay, no_decay, muon = [], [], []
    for p in {id(p): p for p in model.parameters()}.values():  # a tied weight once
        if not p.requires_grad:
            continue
        if use_muon and id(p) in hidden:
            muon.append(p)
        elif p.dim() >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
              {"params": no_decay, "weight_decay": 0.0, "base_lr": cfg.lr}]
    optimizers = [torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                    fused=device_type == "cuda")]  # fused: one kernel for all params
    if muon:
        optimizers.append(Muon([{"params": muon, "base_lr": cfg.muon_lr}], lr=cfg.muon_lr))
    return optimizers


def lr_factor(step: int, cfg) -> float:
    """Multiplier on the peak LR: linear warmup, then cosine / warmup-stable-decay / constant."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    lo = cfg.min_lr_frac
    if cfg.schedule == "cosine":
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if cfg.schedule == "wsd":
        decay_start = 1 - cfg.decay_frac
        return 1.0 if progress < decay_start else 1 - (1 - lo) * min(1.0, (progress - decay_start) / cfg.decay_frac)
    return 1.0
