"""
Chat with a fine-tuned checkpoint in the terminal (or one reply for scripts).

    python chat.py --ckpt out/chat/best.pt
    python chat.py --ckpt out/chat/best.pt --system "You are a helpful assistant."
    python chat.py --ckpt out/chat/best.pt --prompt "What is a river?"     # one reply, then exit
    printf 'Hello!\\n你好\\n' | python chat.py --ckpt out/chat/best.pt          # a scripted chat

Commands: /reset clears the conversation, /quit (or Ctrl-D) leaves.
Replies are decoded by engine.py exactly as serve.py decodes them: same seed, same reply.
"""
import argparse
import sys

from checkpoint import load_model
from cli import UsageError, run_main
from engine import generate
from sampling import CHAT_DEFAULTS, add_sampling_args, params_from_args
from tokenizer import ContextOverflow, Message, fit_history, prompt_room, stream_text


def reply(model, tok, history: list[Message], args, out=sys.stdout) -> str:
    """Stream one assistant reply to `out` and return its text (without <|end|>)."""
    block = model.cfg.block_size
    ids, history[:] = fit_history(tok, history, prompt_room(block, args.max_new_tokens), limit=block - 1)
    tokens = generate(model, ids, args.max_new_tokens, params_from_args(args),
                      stop_tokens={tok.end_of_turn}, seed=args.seed)
    pieces = []
    for piece in stream_text(tok, (t for t in tokens if t != tok.end_of_turn)):
        out.write(piece)
        out.flush()
        pieces.append(piece)
    out.write("\n")
    return "".join(pieces).strip()


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_args(p, CHAT_DEFAULTS)
    p.set_defaults(ckpt="out/chat/best.pt", max_new_tokens=128)
    p.add_argument("--system", default="", help="system prompt")
    p.add_argument("--prompt", default=None, help="one-shot: print a single reply and exit")
    args = p.parse_args(argv)
    params_from_args(args)  # refuse out-of-range options before loading anything
    model, tok, _ = load_model(args.ckpt, args.device)
    if not tok.has_chat_tokens():
        raise UsageError(f"{args.ckpt}: its tokenizer has no chat tokens; fine-tune it with chat_sft.py first.")
    start = [Message("system", args.system)] if args.system else []

    if args.prompt is not None:
        try:
            reply(model, tok, start + [Message("user", args.prompt)], args)
        except ContextOverflow as e:
            raise UsageError(str(e))
        return

    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.ckpt} - /reset to start over, /quit to leave")
    history = list(start)
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":
            break
        text = line.strip()
        if not interactive:  # a scripted chat: echo the question so the transcript reads well
            print(f"you> {text}")
        if not text:
            continue
        if text == "/reset":
            history = list(start)
            print("(conversation cleared)")
            continue
        history.append(Message("user", text))
        print("bot> ", end="", flush=True)
        try:
            history.append(Message("assistant", reply(model, tok, history, args)))
        except ContextOverflow as e:
            history.pop()
            print(f"(not sent: {e})")


if __name__ == "__main__":
    run_main(main)
