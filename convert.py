"""
Turn one checkpoint into another: merge LoRA adapters, quantise to int8, or gather a sharded
(FSDP) checkpoint folder into one file. Every output is an ordinary checkpoint that sample.py,
chat.py, serve.py, eval.py and export.py load; the input is never changed.

    python convert.py lora out/chat_lora/best.pt out/chat_merged.pt   # adapters folded in
    python convert.py int8 out/chat/best.pt out/chat/int8.pt          # int8 weights, ~0.26x the file
    python convert.py dcp out/gpt2_350m/last.dcp out/gpt2_350m/last_full.pt
"""
import argparse
import sys
from pathlib import Path

from model import GPT, GPTConfig
from wikigpt.checkpoint import build_checkpoint, load_checkpoint, model_from_checkpoint
from wikigpt.decoding.load import load_model
from wikigpt.cli import UsageError, output_file, run_main
from wikigpt.run.new_checkpoint import save_new
from wikigpt.run.fsdp import TRAIN_STATE, load_shards, load_train_state
from wikigpt.adapt.lora import merge_lora


def merge_adapters(src: str, out: Path):
    ckpt = load_checkpoint(src)
    if "lora" not in ckpt:
        raise UsageError(f"{src} is not a LoRA checkpoint (no adapters in it): nothing to merge.")
    model, _ = model_from_checkpoint(ckpt, path=src)  # its base's errors name this file
    merge_lora(model)
    save_new(out, build_checkpoint(ckpt["kind"], model.state_dict(), ckpt["model_config"], ckpt["tokenizer"],
                                   train_config=ckpt.get("train_config"), step=ckpt.get("step"),
                                   val=ckpt.get("val"), merged_from={"adapter": str(src), **ckpt["lora"]}))
    print(f"wrote {out}: {Path(ckpt['lora']['base']['path']).name} with the adapters of {src} merged in")


def quantise(src: str, out: Path):
    if load_checkpoint(src).get("quant") == "int8":
        raise UsageError(f"{src} holds int8 weights already: nothing to convert.")
    model, tok, info = load_model(src, "cpu", "int8")
    save_new(out, build_checkpoint(info["kind"], model.state_dict(), info["model_config"], tok.spec,
                                   train_config=info["train_config"], step=info["step"], val=info["val"],
                                   quant="int8"))
    fp32_bytes = 4 * GPT(GPTConfig(**info["model_config"])).n_params()  # the same weights in float32
    size = out.stat().st_size
    print(f"wrote {out}: int8 weights, {size / 1e6:.1f} MB ({size / fp32_bytes:.2f}x the {fp32_bytes / 1e6:.1f} MB "
          "of float32 weights)", file=sys.stderr)


def gather_shards(src: Path, out: Path):
    """last.dcp -> one weights-only checkpoint file, read by one process without a process group."""
    if src.is_file():
        raise UsageError(f"{src} is a file, and `convert.py dcp` reads a sharded checkpoint folder (out_dir/last.dcp): "
                         "a checkpoint file is one file already, loaded as it is by sample.py, chat.py, serve.py.")
    if not src.is_dir():
        raise UsageError(f"{src}: no such checkpoint folder (train.py --shard=fsdp writes out_dir/last.dcp).")
    if (src / "last.dcp").is_dir():  # the run's out_dir
        raise UsageError(f"{src} is a training run's folder: convert its sharded checkpoint, {src / 'last.dcp'}.")
    if not (src / TRAIN_STATE).is_file():  # (load_train_state's own message is train.py's: --resume)
        raise UsageError(f"{src} is not a complete sharded checkpoint (no {TRAIN_STATE}): give the last.dcp folder "
                         "that train.py --shard=fsdp wrote.")
    meta = load_train_state(src)  # refuses a folder whose metadata names code, before any work
    model = GPT(GPTConfig(**meta["model_config"]))
    weights = {"model": model.state_dict()}
    load_shards(weights, src, no_dist=True)  # fills our tensors, whatever the sharding; never runs code
    save_new(out, build_checkpoint(meta["kind"], weights["model"], meta["model_config"], meta["tokenizer"],
                                   train_config=meta.get("train_config"), step=meta.get("step"),
                                   val=meta.get("val")))
    load_checkpoint(out)  # what the tools will do: fail here, not there
    print(f"wrote {out} (step {meta['step']}): load it with sample.py, chat.py, serve.py")


CONVERSIONS = {"lora": (merge_adapters, "a LoRA checkpoint (--lora_rank run) -> a plain one, adapters merged"),
               "int8": (quantise, "a checkpoint -> int8 weights (CPU inference, ~0.26x the file)"),
               "dcp": (gather_shards, "a sharded checkpoint folder (--shard=fsdp's last.dcp) -> one file")}


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="conversion", required=True)
    for name, (_, help) in CONVERSIONS.items():
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("src", help="the checkpoint to read (left as it is)")
        c.add_argument("out", help="the checkpoint to write (must not exist)")
    args = p.parse_args(argv)
    out = output_file(args.out, "out")
    if out.exists():  # (checked again, atomically, when it is written: save_new)
        raise UsageError(f"{out} exists: choose another path (nothing was overwritten).")
    convert, _ = CONVERSIONS[args.conversion]
    convert(Path(args.src) if args.conversion == "dcp" else args.src, out)


if __name__ == "__main__":
    run_main(main)
