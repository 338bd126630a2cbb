"""
Cut a smaller model out of a trained one: whole layers, attention heads (the same number in
every layer) and MLP hidden units (the same width in every layer), the least important first,
as measured on a few thousand train tokens (wikigpt/adapt/prune.py says how). The result is an
ordinary checkpoint of a smaller shape that every tool loads; it records where it came from.

    python prune.py --ckpt out/chat/best.pt --out out/small.pt --keep_layers 2
    python prune.py --ckpt out/chat/best.pt --out out/small.pt --keep_layers 3 --mlp_width 0.5
    python prune.py --ckpt out/chat/best.pt --ratio 0.5 --dry_run   # sizes and speed only

Then heal it by distillation from the original (docs/prune.md):
    python chat_sft.py config/sft_demo.toml --init_from=out/small.pt --teacher=out/chat/best.pt
"""
import argparse
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from model import GPT
from wikigpt.batches import PretrainBatches
from wikigpt.checkpoint import build_checkpoint, load_checkpoint, model_from_checkpoint, refuse_unrunnable
from wikigpt.run.device import pick_device
from wikigpt.cli import CHECKPOINTS_INTACT, UsageError, output_file, run_main
from wikigpt.prep.data import load_dataset
from wikigpt.adapt.lora import base_reference
from wikigpt.adapt.prune import Plan, choose, mean_loss, mean_loss_masked, prune, pruned_config
from wikigpt.run.new_checkpoint import save_new


def count(text: str | None, total: int, what: str, fraction_ok=False) -> int:
    """A --keep_* value: a count in 1..total, or (fraction_ok, written with a '.') a share of total."""
    if text is None:
        return total
    try:
        value = float(text) if fraction_ok and "." in text else int(text)
    except ValueError:
        raise UsageError(f"--{what} {text!r}: give a whole number{' or a fraction like 0.5' if fraction_ok else ''}.")
    if isinstance(value, float):
        if not 0 < value <= 1:
            raise UsageError(f"--{what} {text}: a fraction must be in (0, 1].")
        value = max(1, round(value * total))
    if not 1 <= value <= total:
        raise UsageError(f"--{what} {text}: the model has {total}; keep between 1 and {total}.")
    return value


def target_shape(cfg, args) -> tuple[int, int, int]:
    """(layers, heads per layer, MLP units per layer) to keep."""
    explicit = [a for a in ("keep_layers", "keep_heads", "mlp_width") if getattr(args, a) is not None]
    if args.ratio is not None:
        if explicit:
            raise UsageError(f"--ratio sets layers, heads and MLP width together: drop --{explicit[0]}, or "
                             "give --keep_layers / --keep_heads / --mlp_width without --ratio.")
        if not 0 < args.ratio <= 1:
            raise UsageError(f"--ratio {args.ratio}: the share of each dimension to keep, in (0, 1].")
        return tuple(max(1, round(args.ratio * n)) for n in (cfg.n_layer, cfg.n_head, cfg.mlp_width))
    return (count(args.keep_layers, cfg.n_layer, "keep_layers"), count(args.keep_heads, cfg.n_head, "keep_heads"),
            count(args.mlp_width, cfg.mlp_width, "mlp_width", fraction_ok=True))


@torch.no_grad()
def decode_ms(configs: list, device: str, tokens=16, rounds=5) -> list[float]:
    """Measured ms per new token at batch 1 with the KV cache, for random weights of each
    shape. The shapes take turns, best of `rounds` each: a moment when something else runs on
    the machine slows one round, not one shape."""
    torch.manual_seed(0)
    models = [GPT(replace(cfg, dropout=0.0)).to(device).eval() for cfg in configs]
    best = [float("inf")] * len(models)
    for _ in range(rounds):
        for i, model in enumerate(models):
            list(model.generate([1, 2, 3], 2, temperature=0))  # warm-up: first-call allocations
            t0 = time.perf_counter()
            list(model.generate([1, 2, 3], tokens, temperature=0))
            best[i] = min(best[i], 1000 * (time.perf_counter() - t0) / tokens)
    return best


def shape_table(model: GPT, shape: tuple[int, int, int], device: str) -> str:
    """One row per choice, each applied on top of the ones above: size and decode speed."""
    c = model.cfg
    steps = [("original", c.n_layer, c.n_head, c.mlp_width)]
    for name, i in (("keep_layers", 0), ("keep_heads", 1), ("mlp_width", 2)):
        row = list(steps[-1][1:])
        if shape[i] != row[i]:
            row[i] = shape[i]
            steps.append((f"{name} {shape[i]}", *row))
    configs = [pruned_config(model, Plan(list(range(n)), [list(range(h))] * n, [list(range(w))] * n))
               for _, n, h, w in steps]
    ms = decode_ms(configs, device)
    lines = [f"{'':16s} {'layers':>6s} {'heads':>5s} {'MLP':>5s} {'parameters':>11s} {'MFLOP/token':>11s} "
             f"{'est. speed-up':>13s} {'measured ms/token':>17s}"]
    rows = []
    for (name, layers, heads, width), cfg in zip(steps, configs):
        with torch.device("meta"):  # counting only: no memory, no init
            n, n_flop = GPT(cfg).n_params(), GPT(cfg).n_params(for_flops=True)
        # forward FLOPs of one decoded token at half the context: 2 per weight, plus attention
        rows.append((name, layers, heads, width, n, 2 * n_flop + 4 * layers * heads * cfg.head_size * (cfg.block_size // 2)))
    for (name, layers, heads, width, n, flops), t in zip(rows, ms):
        lines.append(f"{name:16s} {layers:6d} {heads:5d} {width:5d} {n / 1e6:10.2f}M {flops / 1e6:11.1f} "
                     f"{rows[0][5] / flops:12.2f}x {t:10.2f} ({ms[0] / t:.2f}x)")
    return "\n".join(lines)


def calibration(data: str, ckpt: dict, block_size: int, n_tokens: int, seed: int, device: str):
    """About n_tokens of the train split (whole windows, a seeded draw) as (x, y), (n, T) each."""
    if not data or not (Path(data) / "meta.json").is_file():
        raise UsageError(f"calibration data: {data or 'the checkpoint names no dataset'} is not a prepared "
                         "dataset here. Pass --data FOLDER (the one the model was trained on).")
    ds = load_dataset(data)
    if ds.tokenizer.spec != ckpt["tokenizer"]:
        raise UsageError(f"--data {data} uses another tokenizer than the checkpoint: calibrate on its own data.")
    windows, wanted = sum(max(len(s) - 1, 0) // block_size for s in ds.train), max(1, n_tokens // block_size)
    if not windows:
        raise UsageError(f"calibration data: every train shard of {data} is shorter than a {block_size}-token window: "
                         "give --data a dataset with larger shards (prepare_wiki.py --shard_tokens).")
    if wanted > windows:  # (PretrainBatches' own message names train.py's options)
        raise UsageError(f"--calib_tokens {n_tokens}: the train split of {data} holds {windows * block_size:,} tokens in "
                         f"whole windows of {block_size}; give --calib_tokens {windows * block_size} or less.")
    return PretrainBatches(ds.train, block_size, wanted, seed, device=device).next_batch()


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="the trained checkpoint to prune (left as it is)")
    p.add_argument("--out", help="the pruned checkpoint to write (must not exist)")
    p.add_argument("--keep_layers", help="layers to keep (default: all)")
    p.add_argument("--keep_heads", help="attention heads to keep in every layer (default: all)")
    p.add_argument("--mlp_width", help="MLP hidden units to keep in every layer: a count, or a fraction like 0.5")
    p.add_argument("--ratio", type=float, help="instead of the three above: keep this share of each")
    p.add_argument("--dry_run", action="store_true", help="print sizes and speed-ups only, write nothing")
    p.add_argument("--data", default="", help="calibration dataset (default: the one the checkpoint trained on)")
    p.add_argument("--calib_tokens", type=int, default=4096, help="train tokens to measure importance on")
    p.add_argument("--seed", type=int, default=0, help="which train windows are drawn for calibration")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    args = p.parse_args(argv)
    ckpt = load_checkpoint(args.ckpt)
    refuse_unrunnable(ckpt, args.ckpt, "--ckpt")
    device = pick_device(args.device)
    model, tok = model_from_checkpoint(ckpt, device, args.ckpt)
    shape = target_shape(model.cfg, args)
    if not args.dry_run:  # everything a pruning needs, checked before the table's timings
        if all(v is None for v in (args.keep_layers, args.keep_heads, args.mlp_width, args.ratio)):
            raise UsageError("nothing to prune: give --keep_layers, --keep_heads, --mlp_width or --ratio "
                             "(--dry_run shows the sizes and speed-ups of a cut).")
        if not args.out:
            raise UsageError("--out: where to write the pruned checkpoint (or --dry_run to only see the sizes).")
        out = output_file(args.out, "--out")  # a dangling link or a file above: refused before the calibration
        if out.exists():  # (checked again, atomically, when it is written: save_new)
            raise UsageError(f"{out} exists: choose another path (nothing was overwritten).")
        if args.calib_tokens < 1:
            raise UsageError(f"--calib_tokens must be >= 1, got {args.calib_tokens}.")
        data = args.data or ckpt.get("train_config", {}).get("data", "")
        x, y = calibration(data, ckpt, model.cfg.block_size, args.calib_tokens, args.seed, device)
    print(shape_table(model, shape, device))
    if args.dry_run:
        print("dry run: nothing written.")
        return
    model.eval()
    print(f"measuring importance on {x.numel():,} train tokens of {data} ...")
    plan = choose(model, x, y, *shape)
    before, masked_loss = mean_loss(model, x, y), mean_loss_masked(model, x, y, plan)
    small = prune(model, plan)
    after = mean_loss(small, x, y)
    assert abs(after - masked_loss) < 1e-3 * max(1.0, abs(masked_loss)), "pruned model differs from the masked one"
    record = {**base_reference(args.ckpt), "model_config": ckpt["model_config"], "keep": asdict(plan),
              "importance": "layers and heads: masked loss increase; MLP units: sum of (a*dL/da)^2",
              "calibration": {"data": data, "tokens": x.numel(), "seed": args.seed},
              "calibration_loss": {"original": before, "pruned": after}}
    save_new(out, build_checkpoint(ckpt["kind"], small.state_dict(), asdict(small.cfg), tok.spec,
                                   train_config=ckpt.get("train_config"), step=ckpt.get("step"), pruned_from=record))
    c, n0 = small.cfg, model.n_params()
    heal = "chat_sft.py" if ckpt["kind"] == "sft" else "train.py"
    print(f"wrote {out}: {c.n_layer} layers x {c.n_head} heads x {c.mlp_width} MLP units, {small.n_params():,} "
          f"parameters ({small.n_params() / n0:.0%} of {n0:,}); calibration loss {before:.4f} -> {after:.4f}.\n"
          f"heal it: python {heal} YOUR_CONFIG.toml --init_from={out} --teacher={args.ckpt}")


if __name__ == "__main__":
    run_main(main, CHECKPOINTS_INTACT)
