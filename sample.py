"""
Sample text from a checkpoint, streaming tokens as they are generated.

    python sample.py --ckpt out/demo/best.pt --prompt "The history of Alabama"
    python sample.py --ckpt out/demo/best.pt --prompt_file prompt.txt --num_samples 3
    echo "Aristotle was" | python sample.py --ckpt out/demo/best.pt --prompt -
"""
import argparse
import sys

from checkpoint import load_model
from cli import UsageError, run_main
from sampling import add_sampling_args, params_from_args
from tokenizer import stream_text


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
    p.add_argument("--no_cache", action="store_true", help="recompute the whole context per token")
    args = p.parse_args(argv)
    params = params_from_args(args)
    model, tok, _ = load_model(args.ckpt, args.device, args.dtype)
    prompt = read_prompt(args)
    # articles were trained as "<|endoftext|>Title\n\ntext": start the same way
    ids = [tok.doc_sep] + tok.encode(prompt)
    if len(ids) >= model.cfg.block_size:
        print(f"(prompt is {len(ids)} tokens; keeping its last {model.cfg.block_size - 1})", file=sys.stderr)
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        new = model.generate(ids, args.max_new_tokens, seed=seed, stop_tokens={tok.doc_sep},
                             use_cache=not args.no_cache, **params.kwargs())
        sys.stdout.write(prompt)
        for piece in stream_text(tok, (t for t in new if t != tok.doc_sep)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n" + "-" * 40 + "\n")


if __name__ == "__main__":
    run_main(main)
