"""
A checkpoint file -> a model ready to run, and the options that choose it: the one way every
inference tool (sample.py, chat.py, serve.py, eval.py, the benchmarks) gets its model. Training
reads checkpoints with wikigpt/checkpoint.py alone and never imports this module.

    model, tok, info = load_model("out/chat/best.pt")   # eval mode, on the best device here
"""
import argparse
import os

import torch

from model import GPT
from wikigpt.checkpoint import DTYPES, load_checkpoint, model_from_checkpoint
from wikigpt.cli import UsageError
from wikigpt.run.cores import usable_cores
from wikigpt.run.device import enable_tf32, gpu_dtype, pick_device
from wikigpt.tokenizer import Tokenizer


def load_model(path, device: str = "auto", dtype: str | None = None) -> tuple[GPT, Tokenizer, dict]:
    """Checkpoint file -> (model in eval mode on the device, its tokenizer, info). The single
    place where inference tools turn a path into a model: device choice and weight dtype are
    decided here for all of them. dtype None: bfloat16 on a GPU that runs it natively (float16
    on older ones), the stored float32 elsewhere; an int8 checkpoint runs on the CPU only."""
    ckpt = load_checkpoint(path, map_location="cpu")
    int8 = ckpt.get("quant") == "int8" or dtype == "int8"
    device = pick_device("cpu" if device == "auto" and int8 else device)  # int8's kernel is the CPU's
    if ckpt.get("kind") not in ("pretrain", "sft"):
        raise UsageError(f"{path}: a {ckpt.get('kind')!r} checkpoint holds no model to run.")
    if ckpt.get("quant") == "int8" and dtype not in (None, "int8"):
        raise UsageError(f"{path} holds int8 weights: run it as it is (no --dtype, or --dtype int8); for "
                         f"{dtype}, use the checkpoint it was quantised from.")
    if int8:
        from wikigpt.adapt.quant import check_int8_support
        check_int8_support(device)  # before any weight moves: refused whatever the checkpoint says
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # torch reads the affinity, not a container's
        torch.set_num_threads(min(torch.get_num_threads(), usable_cores()))  # quota: 64 threads on 2 cores' time
    if device.startswith("cuda"):
        enable_tf32()
        dtype = dtype or gpu_dtype()
    model, tok = model_from_checkpoint(ckpt, device, path)
    if "lora" in ckpt:
        from wikigpt.adapt.lora import merge_lora
        merge_lora(model)  # folded in once: inference runs at the base model's speed
    if dtype == "int8":
        from wikigpt.adapt.quant import quantize_model
        if ckpt.get("quant") != "int8":
            quantize_model(model)
    elif dtype is not None:
        if dtype not in DTYPES:
            raise UsageError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)} or int8.")
        model.to(DTYPES[dtype])
    info = {"path": str(path), "kind": ckpt["kind"], "step": ckpt.get("step"), "val": ckpt.get("val"),
            "model_config": ckpt["model_config"], "device": device,
            "data": ckpt.get("train_config", {}).get("data", ""),  # the dataset it learned from
            "train_config": ckpt.get("train_config", {})}
    return model.eval(), tok, info


# ----------------------------------------------------------------------------------------
# Options shared by the commands that run a checkpoint (sample.py, chat.py, serve.py, eval.py);
# the sampling knobs are wikigpt/decoding/sampling.py's


def add_model_args(p: argparse.ArgumentParser, ckpt: str = "out/demo/best.pt", ckpt_help: str = "checkpoint to load"):
    """--ckpt, --device, --dtype: which checkpoint to run, where and in which precision."""
    p.add_argument("--ckpt", default=ckpt, help=ckpt_help)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    add_dtype_arg(p)


def add_dtype_arg(p: argparse.ArgumentParser):
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16", "int8"),
                   help="weights to run with (default: bfloat16 on a GPU that runs it natively, else float16 there; as stored on CPU); int8: weight-only int8, see wikigpt/adapt/quant.py")


def add_rag_args(p: argparse.ArgumentParser, rag_k: int):
    """--rag, --data, --rag_k: answering from Wikipedia (chat.py, serve.py). rag_k: the default
    number of passages (knowledge.evidence.RETRIEVE_K; this module imports no library module
    that imports it back)."""
    p.add_argument("--rag", action="store_true", help="answer (chat turns) from passages retrieved from Wikipedia")
    p.add_argument("--data", default="", help="with --rag: the dataset folder with the index "
                   "(default: the one the checkpoint was trained on)")
    p.add_argument("--rag_k", type=int, default=rag_k,
                   help="with --rag: passages retrieved per question, whose sentences compete as evidence")


def check_rag_args(p: argparse.ArgumentParser, args: argparse.Namespace):
    """--data, --rag_k (and --copy) say how --rag answers: without --rag they would do nothing,
    so they are refused rather than ignored."""
    given = [name for name, set_ in (("--copy", getattr(args, "copy", None) is not None), ("--data", bool(args.data)),
                                     ("--rag_k", args.rag_k != p.get_default("rag_k"))) if set_]
    if given and not args.rag:
        raise UsageError(f"{' and '.join(given)} choose how --rag answers from Wikipedia: add --rag (or drop them).")
