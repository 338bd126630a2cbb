"""
Structured pruning: a smaller model of a regular shape cut out of a trained one. Whole layers,
the same number of attention heads in every layer and the same number of MLP hidden units in
every layer are removed, so the result is an ordinary GPT (GPTConfig.head_dim, mlp_hidden) that
every tool loads, the exporter included. prune.py is the command; this module owns the
importance scores and the surgery, and knows nothing about files.

What to remove is measured on calibration windows from the train split:
  layers, heads  the loss increase when that one unit is masked (its block skipped, its head's
                 output zeroed): a measurement, not an estimate, and cheap at these counts (the
                 demo: 4 + 3 layer forwards, then 12 head forwards, of 4,096 tokens each)
  MLP units      first-order Taylor: zeroing a unit's output a changes the loss by about
                 -a * dL/da at each token; its square, summed over the tokens, scores the unit
                 (Fisher pruning). One backward scores every unit at once, where masking each
                 of the demo's 4 x 704 units alone would take 2,816 forwards. Measured on the
                 demo base model, keeping half / a quarter of the units (val loss 5.572 whole):
                 squared 5.575 / 5.644, |a * dL/da| per token 5.576 / 5.673, |sum of a * dL/da|
                 5.591 / 5.762, random units 5.990 / 6.614: squaring lets no token's need for
                 a unit cancel another's, and weighs the tokens that need it most.
Layers go first, greedily (drop the least missed one, measure again: two layers that each seem
redundant can be each other's backup), then the heads of the kept layers, then the MLP units;
each choice is measured on the model that the previous ones leave.

    plan = choose(model, x, y, keep_layers=3, keep_heads=4, mlp_width=352)
    with masked(model, plan): ...   # the original, with the plan's removed units zeroed
    small = prune(model, plan)      # the same function with fewer weights (tests check it)
"""
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from model import GPT
from wikigpt.run.throughput import sum_dtype


@dataclass
class Plan:
    """What a pruned model keeps, as indices into the original (each list sorted)."""
    layers: list[int]  # the kept blocks
    heads: list[list[int]]  # per kept block: its kept heads (the same count in each)
    units: list[list[int]]  # per kept block: its kept MLP hidden units (the same count in each)

    @staticmethod
    def everything(model: GPT) -> "Plan":
        c = model.cfg
        return Plan(list(range(c.n_layer)), [list(range(c.n_head)) for _ in range(c.n_layer)],
                    [list(range(c.mlp_width)) for _ in range(c.n_layer)])


def pruned_config(model: GPT, plan: Plan):
    """The GPTConfig of the pruned model: each head keeps its size (head_size), so pruning
    nothing gives the very same config."""
    c = model.cfg
    n_head, width = len(plan.heads[0]), len(plan.units[0])
    return replace(c, n_layer=len(plan.layers), n_head=n_head,
                   mlp_width=width)


# ----------------------------------------------------------------------------------------
# Masking (the reference) and surgery (the product)

def _mask(n: int, keep: list[int], repeat: int, device) -> torch.Tensor:
    m = torch.zeros(n, device=device)
    m[keep] = 1.0
    return m.repeat_interleave(repeat)


@contextmanager
def masked(model: GPT, plan: Plan):
    """The original model computing what the pruned one will: a dropped block passes its input
    through, a dropped head's or MLP unit's output is multiplied by 0 before the output
    projection (so the projection's bias stays, as it does in the pruned model)."""
    c, hooks = model.cfg, []
    kept = {layer: i for i, layer in enumerate(plan.layers)}
    for layer, block in enumerate(model.blocks):
        if layer not in kept:
            hooks.append(block.register_forward_hook(lambda m, args, out: args[0]))  # x + 0 + 0
            continue
        heads = _mask(c.n_head, plan.heads[kept[layer]], c.head_size, model.device)  # (H*D,)
        units = _mask(c.mlp_width, plan.units[kept[layer]], 1, model.device)  # (hidden,)
        hooks.append(block.attn.c_proj.register_forward_pre_hook(lambda m, args, k=heads: (args[0] * k,)))
        hooks.append(block.mlp.c_proj.register_forward_pre_hook(lambda m, args, k=units: (args[0] * k,)))
    try:
        yield model
    finally:
        for h in hooks:
            h.remove()


def _rows(name: str, cfg, heads: list[int], units: list[int]) -> tuple[int, torch.Tensor] | None:
    """Which slice of a block parameter survives: (dim, indices), or None for all of it."""
    D, HD, W = cfg.head_size, cfg.n_head * cfg.head_size, cfg.mlp_width
    head_idx = torch.tensor([h * D + d for h in heads for d in range(D)])  # into H*D
    unit_idx = torch.tensor(units)
    if name in ("attn.c_attn.weight", "attn.c_attn.bias"):  # rows: q, k, v, each H*D
        return 0, torch.cat([part * HD + head_idx for part in range(3)])
    if name == "attn.c_proj.weight":  # columns: H*D
        return 1, head_idx
    if name in ("mlp.c_fc.weight", "mlp.c_fc.bias"):  # rows: hidden, or gate then up for SwiGLU
        return 0, torch.cat([unit_idx, W + unit_idx]) if cfg.mlp == "swiglu" else unit_idx
    if name == "mlp.c_proj.weight":  # columns: hidden
        return 1, unit_idx
    return None  # norms and the output projections' biases are untouched


@torch.no_grad()
def prune(model: GPT, plan: Plan) -> GPT:
    """A new, smaller GPT holding the weights the plan keeps (on the model's device)."""
    c = model.cfg
    kept = {layer: i for i, layer in enumerate(plan.layers)}
    state = {}
    for name, tensor in model.state_dict().items():
        if not name.startswith("blocks."):
            state[name] = tensor.clone()
            continue
        _, layer, rest = name.split(".", 2)
        if int(layer) not in kept:
            continue
        i = kept[int(layer)]
        cut = _rows(rest, c, plan.heads[i], plan.units[i])
        state[f"blocks.{i}.{rest}"] = tensor.clone() if cut is None else tensor.index_select(cut[0], cut[1].to(tensor.device))
    small = GPT(pruned_config(model, plan)).to(model.device)
    small.load_state_dict(state)
    return small.train(model.training)


# ----------------------------------------------------------------------------------------
# Importance

@torch.no_grad()
def mean_loss(model: GPT, x, y, batch_size=8) -> float:
    """Mean loss over all target tokens of the calibration windows x, y (n, T)."""
    total = 0.0
    for i in range(0, len(x), batch_size):
        total += float(model(x[i:i + batch_size], y[i:i + batch_size])[1]) * len(x[i:i + batch_size])
    return total / len(x)


def mean_loss_masked(model: GPT, x, y, plan: Plan) -> float:
    with masked(model, plan):
        return mean_loss(model, x, y)


def choose_layers(model: GPT, x, y, keep: int, log=print) -> list[int]:
    """Drop layers one at a time, each time the one whose absence raises the loss least."""
    layers = list(range(model.cfg.n_layer))
    everything = Plan.everything(model)
    while len(layers) > keep:
        cost = {}
        for drop in layers:
            rest = [layer for layer in layers if layer != drop]
            with masked(model, replace(everything, layers=rest, heads=everything.heads[:len(rest)],
                                       units=everything.units[:len(rest)])):
                cost[drop] = mean_loss(model, x, y)
        drop = min(cost, key=cost.get)
        log(f"  layers: dropping {drop} (loss without it {cost[drop]:.4f}; "
            + ", ".join(f"{k}: {v:.3f}" for k, v in cost.items()) + ")")
        layers.remove(drop)
    return layers


def head_scores(model: GPT, x, y, plan: Plan) -> list[list[float]]:
    """Per kept layer, per head: the loss increase when that head alone is masked as well."""
    base = mean_loss_masked(model, x, y, plan)
    scores = []
    for i in range(len(plan.layers)):
        row = []
        for h in range(model.cfg.n_head):
            heads = [list(hs) for hs in plan.heads]
            heads[i] = [k for k in heads[i] if k != h]
            row.append(mean_loss_masked(model, x, y, replace(plan, heads=heads)) - base)
        scores.append(row)
    return scores


def unit_scores(model: GPT, x, y, plan: Plan, batch_size=8) -> torch.Tensor:
    """(kept layers, hidden) importance of each MLP unit: the sum over calibration tokens of
    (a * dL/da)^2, the first-order loss change from zeroing it, in the masked model."""
    acts = {}

    def keep_act(i):
        def hook(module, args):
            args[0].retain_grad()
            acts[i] = args[0]  # (B, T, hidden)
        return hook

    kept = {layer: i for i, layer in enumerate(plan.layers)}
    total = torch.zeros(len(plan.layers), model.cfg.mlp_width, dtype=sum_dtype(model.device), device=model.device)
    was_training = model.training
    model.eval()  # no dropout in the estimate
    with masked(model, plan):
        hooks = [model.blocks[layer].mlp.c_proj.register_forward_pre_hook(keep_act(i)) for layer, i in kept.items()]
        try:
            for b in range(0, len(x), batch_size):
                xb, yb = x[b:b + batch_size], y[b:b + batch_size]
                (model(xb, yb)[1] * yb.numel()).backward()  # the summed loss: a per-token scale
                for i, a in acts.items():
                    total[i] += (a.detach() * a.grad).to(total.dtype).square().sum((0, 1))  # (hidden,)
        finally:
            for h in hooks:
                h.remove()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return total


def choose(model: GPT, x, y, keep_layers: int, keep_heads: int, mlp_width: int, log=print) -> Plan:
    """The plan that keeps keep_layers blocks, keep_heads heads and mlp_width MLP units in each."""
    c = model.cfg
    layers = choose_layers(model, x, y, keep_layers, log) if keep_layers < c.n_layer else list(range(c.n_layer))
    everything = Plan.everything(model)
    plan = Plan(layers, everything.heads[:len(layers)], everything.units[:len(layers)])
    if keep_heads < c.n_head:
        scores = head_scores(model, x, y, plan)
        plan.heads = [sorted(sorted(range(c.n_head), key=lambda h: -row[h])[:keep_heads]) for row in scores]
        for layer, row, kept in zip(layers, scores, plan.heads):
            log(f"  heads of layer {layer}: keeping {kept} (loss increase when masked: "
                + ", ".join(f"{v:+.3f}" for v in row) + ")")
    if mlp_width < c.mlp_width:
        scores = unit_scores(model, x, y, plan)
        plan.units = [sorted(row.topk(mlp_width).indices.tolist()) for row in scores]
        share = [float(row[kept].sum() / row.sum().clamp(min=1e-30)) for row, kept in zip(scores, plan.units)]
        log(f"  MLP units: keeping {mlp_width} of {c.mlp_width} per layer, the ones holding "
            + ", ".join(f"{100 * s:.0f}%" for s in share) + " of each layer's importance")
    return plan
