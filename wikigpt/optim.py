"""
Optimizers and the learning-rate schedule of train.py (and so of chat_sft.py): AdamW for
embeddings, head and norms; Muon for the hidden matrices (optimizer=muon, the default).
"""
import functools
import math

import torch

from model import GPT


def zeropower_newton_schulz(G, steps=5):
    """Approximately the orthogonal matrix closest to G (its 'zeroth power' U V^T), by a
    quintic Newton-Schulz iteration tuned to converge fast from a normalised start.
    G: one matrix (m, n) or a batch of same-shape matrices (k, m, n), each on its own."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(newton_schulz_dtype(G.device))
    transposed = X.size(-2) > X.size(-1)
    X = X.mT if transposed else X
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT  # (k, m, m), m the shorter side
        X = a * X + (b * A + c * A @ A) @ X
    return (X.mT if transposed else X).to(G.dtype)


@functools.cache
def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a GPU that runs it natively (the iteration converges in it, at tensor-core
    speed); float32 on a CPU and on GPUs that only emulate bfloat16 (V100, T4), where it is slower."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float32


class Muon(torch.optim.Optimizer):
    """Momentum SGD whose update for each hidden matrix is orthogonalised (all its singular
    values set to ~1), so every direction learns at the same speed. For 2-D weights only."""
    # fp16: GradScaler hands step() its scale and overflow flag as tensors (for an optimizer
    # without this it reads the flag back to the host first: a sync in every training step)
    _step_supports_amp_scaling = True

    def __init__(self, params, lr=0.02, momentum=0.95):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self, closure=None):  # closure: the Optimizer interface (DCP's state init passes it)
        unscale, overflow = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)  # fp16 only
        for group in self.param_groups:
            updates = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if unscale is None else p.grad / unscale.to(p.grad.dtype)
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p.grad))
                moved = buf.lerp(grad, 1 - group["momentum"])
                updates.append((p, grad.lerp(moved, group["momentum"])))  # Nesterov
                buf.copy_(moved if overflow is None else torch.where(overflow > 0, buf, moved))  # overflow: no step
            for p, ortho in orthogonalise(updates):
                ortho = ortho if overflow is None else torch.where(overflow > 0, 0.0, ortho)
                p.add_(ortho, alpha=-group["lr"] * max(1.0, p.size(0) / p.size(1)) ** 0.5)


def orthogonalise(updates: list) -> list:
    """[(param, update)] -> [(param, orthogonalised update)]. Same-shape matrices go through
    Newton-Schulz as one batch. Under torchrun the work is divided among the processes, as
    nanochat's distributed Muon does: each orthogonalises its share of a batch and one
    all-gather per shape gives every process all of them: N times less arithmetic, and with
    DDP (whose updates are the same everywhere) every process ends with the same weights.
    FSDP's updates (DTensors: each process holds some rows) are gathered first, one all-gather
    per shape too, and each process keeps its own rows of the result."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor  # FSDP's

    shared = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    by_shape = {}
    for p, u in updates:
        by_shape.setdefault((tuple(p.shape), isinstance(u, DTensor)), []).append((p, u))
    out = []
    for (_, sharded), items in by_shape.items():
        params, us = zip(*items)
        if sharded:
            group = us[0].device_mesh.get_group()
            full = gather_rows(us, group)  # (k, m, n) on every process
            ortho = orthogonalise_shared(full, group)
            out += [(p, rows_of(o, u)) for p, o, u in zip(params, ortho, us)]
        else:
            full = torch.stack(us)  # (k, m, n)
            out += zip(params, orthogonalise_shared(full, None) if shared else zeropower_newton_schulz(full))
    return out


def orthogonalise_shared(full, group):
    """Newton-Schulz of a batch (k, m, n) that every process holds: process r does the r-th
    share (the batch padded with zeros to a multiple of N), one all-gather shares the results."""
    import torch.distributed as dist

    world, rank, k = dist.get_world_size(group), dist.get_rank(group), full.size(0)
    per = -(-k // world)
    padded = torch.cat([full, full.new_zeros((per * world - k, *full.shape[1:]))])  # (per * N, m, n)
    mine = zeropower_newton_schulz(padded[rank * per:(rank + 1) * per])  # (per, m, n)
    gathered = torch.empty_like(padded)
    dist.all_gather(list(gathered.chunk(world)), mine.contiguous(), group=group)
    return gathered[:k]


def gather_rows(updates, group):
    """Whole matrices (k, m, n) from FSDP's row shards of k same-shape DTensors, in one
    all-gather (each process's rows padded to the largest share, torch.chunk's split)."""
    import torch.distributed as dist
    from torch.distributed.tensor import Shard

    world, (m, n) = dist.get_world_size(group), updates[0].shape
    if any(u.placements != (Shard(0),) for u in updates):  # not FSDP's usual split: one at a time
        return torch.stack([u.full_tensor() for u in updates])
    share = -(-m // world)
    local = torch.stack([u.to_local() for u in updates])  # (k, rows here, n)
    local = torch.cat([local, local.new_zeros((local.size(0), share - local.size(1), n))], dim=1)  # (k, share, n)
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local, group=group)
    return torch.cat(parts, dim=1)[:, :m]  # (k, m, n)


def rows_of(full, like):
    """This process's rows of a whole matrix, as a DTensor shaped like `like` (no communication)."""
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


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
