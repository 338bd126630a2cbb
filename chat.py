"""
Chat with a fine-tuned checkpoint in the terminal (or one reply for scripts).

    python chat.py --ckpt out/chat/best.pt
    python chat.py --ckpt out/chat/best.pt --system "You are a helpful assistant."
    python chat.py --ckpt out/chat/best.pt --prompt "What is a river?"     # one reply, then exit
    printf 'Hello!\\n你好\\n' | python chat.py --ckpt out/chat/best.pt          # a scripted chat

Commands: /reset clears the conversation, /quit (or Ctrl-D) leaves.
"""
import argparse
import sys

from sample import add_sampling_args, load_for_inference, sampling_kwargs
from tokenizer import Message, render_chat, stream_text
from train import UsageError, run_main


def fit_history(tok, history: list[Message], room: int):
    """Render the conversation plus the assistant prompt, dropping the oldest exchanges
    (never the system turn) until it fits in `room` tokens."""
    system = history[:1] if history and history[0].role == "system" else []
    turns = history[len(system):]
    while True:
        ids, _ = render_chat(tok, system + turns, add_generation_prompt=True)
        if len(ids) <= room or len(turns) <= 1:
            return ids[-room:], system + turns
        turns = turns[2:]  # drop the oldest user/assistant exchange


def reply(model, tok, history: list[Message], args, out=sys.stdout) -> str:
    """Stream one assistant reply to `out` and return its text (without <|end|>)."""
    room = model.cfg.block_size - args.max_new_tokens
    ids, history[:] = fit_history(tok, history, max(room, model.cfg.block_size // 2))
    pieces = []
    tokens = model.generate(ids, args.max_new_tokens, stop_tokens={tok.end_of_turn},
                            seed=args.seed, **sampling_kwargs(args))
    for piece in stream_text(tok, (t for t in tokens if t != tok.end_of_turn)):
        out.write(piece)
        out.flush()
        pieces.append(piece)
    out.write("\n")
    return "".join(pieces).strip()


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_args(p)
    # chat defaults: shorter, a little cooler, and firmer against loops than plain sampling
    p.set_defaults(ckpt="out/chat/best.pt", max_new_tokens=128, temperature=0.7, top_k=40,
                   top_p=0.9, repetition_penalty=1.15)
    p.add_argument("--system", default="", help="system prompt")
    p.add_argument("--prompt", default=None, help="one-shot: print a single reply and exit")
    args = p.parse_args(argv)
    model, tok = load_for_inference(args)
    if not tok.has_chat_tokens():
        raise UsageError(f"{args.ckpt}: its tokenizer has no chat tokens; fine-tune it with chat_sft.py first.")
    start = [Message("system", args.system)] if args.system else []

    if args.prompt is not None:
        reply(model, tok, start + [Message("user", args.prompt)], args)
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
        history.append(Message("assistant", reply(model, tok, history, args)))


if __name__ == "__main__":
    run_main(main)
