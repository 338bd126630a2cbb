"""
Sample text from a checkpoint, streaming tokens as they are generated.

    python sample.py --ckpt out/demo/best.pt --prompt "The history of Alabama"
    python sample.py --ckpt out/demo/best.pt --prompt_file prompt.txt --num_samples 3
    echo "Aristotle was" | python sample.py --ckpt out/demo/best.pt --prompt -
"""
import argparse
import sys

import torch

from train import UsageError, load_checkpoint, model_from_checkpoint, run_main
from tokenizer import stream_text


def add_sampling_args(p: argparse.ArgumentParser):
    """The knobs shared by sample.py and chat.py."""
    p.add_argument("--ckpt", default="out/demo/best.pt", help="checkpoint to load")
    p.add_argument("--max_new_tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top_k", type=int, default=50, help="keep the k most likely tokens (0: off)")
    p.add_argument("--top_p", type=float, default=0.95, help="nucleus sampling mass (1: off)")
    p.add_argument("--repetition_penalty", type=float, default=1.1, help="1: off")
    p.add_argument("--seed", type=int, default=None, help="for reproducible samples")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--no_cache", action="store_true", help="recompute the whole context per token")


def load_for_inference(args):
    """Checkpoint -> (model in eval mode on the chosen device, tokenizer)."""
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    model, tok = model_from_checkpoint(load_checkpoint(args.ckpt, map_location=device), device)
    return model.eval(), tok


def sampling_kwargs(args) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p,
                repetition_penalty=args.repetition_penalty, use_cache=not args.no_cache)


def read_prompt(args) -> str:
    if args.prompt_file:
        try:
            return open(args.prompt_file, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read --prompt_file {args.prompt_file}: {e}")
    return sys.stdin.read() if args.prompt == "-" else args.prompt


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_args(p)
    p.add_argument("--prompt", default="", help="text to continue; '-' reads stdin")
    p.add_argument("--prompt_file", default="", help="read the prompt from this file")
    p.add_argument("--num_samples", type=int, default=1)
    args = p.parse_args(argv)
    model, tok = load_for_inference(args)
    prompt = read_prompt(args)
    # articles were trained as "<|endoftext|>Title\n\ntext": start the same way
    ids = [tok.doc_sep] + tok.encode(prompt)
    if len(ids) >= model.cfg.block_size:
        print(f"(prompt is {len(ids)} tokens; keeping its last {model.cfg.block_size - 1})", file=sys.stderr)
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        new = model.generate(ids, args.max_new_tokens, seed=seed, stop_tokens={tok.doc_sep},
                             **sampling_kwargs(args))
        sys.stdout.write(prompt)
        for piece in stream_text(tok, (t for t in new if t != tok.doc_sep)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n" + "-" * 40 + "\n")


if __name__ == "__main__":
    run_main(main)
