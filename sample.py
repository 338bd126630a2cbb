"""
Sample text from a checkpoint, streaming tokens as they are generated.

    python sample.py --ckpt out/demo/best.pt --prompt "The history of Alabama"
    python sample.py --ckpt out/demo/best.pt --prompt_file prompt.txt --num_samples 3
    echo "Aristotle was" | python sample.py --ckpt out/demo/best.pt --prompt -
"""
import argparse
import sys

from model import context_window
from wikigpt.decoding.load import add_model_args, load_model
from wikigpt.cli import UsageError, run_main
from wikigpt.decoding.generate import generate, warmed_engine
from wikigpt.decoding.sampling import add_sampling_args, params_from_args
from wikigpt.tokenizer import stream_text


def read_prompt(args) -> str:
    if args.prompt_file:
        try:
            return open(args.prompt_file, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read --prompt_file {args.prompt_file}: {e}")
    return sys.stdin.read() if args.prompt == "-" else args.prompt


def continuation(model, ids: list[int], max_new_tokens: int, params, stop_tokens=(), seed=None, tok=None,
                 compile=False):
    """The engine's decoding, past the end of the context too: when the context is full, go on
    from model.context_window (its last 3/4), until max_new_tokens or a stop token. Yields each
    token as the engine makes it (tok: keeps the text valid UTF-8, as the server does)."""
    ids, start, end = list(ids), len(ids), len(ids) + max_new_tokens
    state = 0  # the UTF-8 decoder's where the text ends: a window may end inside a character
    while len(ids) < end:  # (the penalties count the whole reply, not the window's part of it)
        for token in generate(model, context_window(ids, model.cfg.block_size), end - len(ids), params, stop_tokens,
                              seed, tok, compile=compile, utf8_state=state, reply_before=ids[start:]):
            ids.append(token)
            state = tok.utf8_state_after([token], state) if tok is not None else 0
            yield token
        if ids[-1] in stop_tokens:
            return
        seed = None if seed is None else seed + 1_000_003  # a fresh stream for the next window


# the sampling knobs model.generate (--no_cache) does not apply, each with its value that is "off"
# (what --no_cache does anyway): it samples with temperature and top_k only
NO_CACHE_IGNORES = {"top_p": 1.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}


def check_no_cache_knobs(p: argparse.ArgumentParser, args):
    """Refuse a knob that --no_cache would silently ignore: one set to neither its default nor 'off'."""
    given = [f"--{name} {getattr(args, name):g}" for name, off in NO_CACHE_IGNORES.items()
             if getattr(args, name) not in (p.get_default(name), off)]
    if given:
        raise UsageError(f"{', '.join(given)}: --no_cache applies only temperature and top_k (drop --no_cache "
                         "to use them).")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--prompt", default="", help="text to continue; '-' reads stdin")
    p.add_argument("--prompt_file", default="", help="read the prompt from this file")
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--no_cache", action="store_true", help="model.py's own generate, the sampler to read: the whole "
                   "context per token, temperature and top_k only, refusing the other knobs (greedy: the engine's tokens)")
    args = p.parse_args(argv)
    if args.prompt and args.prompt_file:
        raise UsageError("--prompt and --prompt_file both give the prompt: choose one.")
    if args.num_samples < 1:
        raise UsageError(f"--num_samples must be >= 1, got {args.num_samples}.")
    params = params_from_args(args)
    if args.no_cache:
        check_no_cache_knobs(p, args)
    model, tok, _ = load_model(args.ckpt, args.device, args.dtype)
    prompt = read_prompt(args)
    # articles were trained as "<|endoftext|>Title\n\ntext": start the same way
    ids = [tok.doc_sep] + tok.encode(prompt)
    if (kept := len(context_window(ids, model.cfg.block_size))) < len(ids):  # what either decoding keeps
        print(f"(prompt is {len(ids)} tokens; keeping its last {kept})", file=sys.stderr)
    if args.compile and not args.no_cache:  # every graph once, for every sample and window
        warmed_engine(model, tok)
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        if args.no_cache:  # the model's plain sampler, as a check on the engine's cached decoding
            new = model.generate(ids, args.max_new_tokens, params.temperature, params.top_k, tok.stops, seed,
                                 use_cache=False)
        else:
            new = continuation(model, ids, args.max_new_tokens, params, tok.stops, seed, tok, args.compile)
        sys.stdout.write(prompt)
        for piece in stream_text(tok, new):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n" + "-" * 40 + "\n")


if __name__ == "__main__":
    run_main(main)
