"""
Chat with a fine-tuned checkpoint in the terminal (or one reply for scripts).

    python chat.py --ckpt out/chat/best.pt
    python chat.py --ckpt out/chat/best.pt --system "You are a helpful assistant."
    python chat.py --ckpt out/chat/best.pt --prompt "What is a river?"     # one reply, then exit
    python chat.py --ckpt out/chat/best.pt --rag                  # answers from Wikipedia, with sources
    printf 'Hello!\\n你好\\n' | python chat.py --ckpt out/chat/best.pt          # a scripted chat

Commands: /reset clears the conversation, /quit (or Ctrl-D) leaves.
Replies are decoded by wikigpt/engine.py exactly as serve.py decodes them: same seed, same reply.
"""
import argparse
import sys

from wikigpt.checkpoint import load_model
from wikigpt.cli import UsageError, run_main
from wikigpt.engine import generate
from wikigpt.grounding import grounded_prompt
from wikigpt.retrieval import open_index
from wikigpt.sampling import CHAT_DEFAULTS, CopySource, add_sampling_args, params_from_args
from wikigpt.chat_template import ContextOverflow, Message, fit_history, prompt_room
from wikigpt.tokenizer import stream_text


def reply(model, tok, history: list[Message], args, index=None, out=sys.stdout) -> str:
    """Stream one assistant reply to `out` and return its text (without <|end|>). With an
    index, passages retrieved for the last turn go into the prompt and are listed after."""
    block = model.cfg.block_size
    room = prompt_room(block, args.max_new_tokens)
    ids, history[:] = fit_history(tok, history, room, limit=block - 1)  # oldest turns go first
    sources = []
    if index is not None:
        ids, sources = grounded_prompt(index, tok, history, args.rag_k, room, block - 1)
    copy = CopySource.from_passages(tok, [(h.title, h.text) for h in sources]) if sources else None
    tokens = generate(model, ids, args.max_new_tokens, params_from_args(args),
                      stop_tokens={tok.end_of_turn}, seed=args.seed, tok=tok, copy_from=copy)
    pieces = []
    for piece in stream_text(tok, (t for t in tokens if t != tok.end_of_turn)):
        out.write(piece)
        out.flush()
        pieces.append(piece)
    out.write("\n")
    for i, hit in enumerate(sources, 1):
        out.write(f"  [{i}] {hit.title}{'  ' + hit.url if hit.url else ''}\n")
    return "".join(pieces).strip()


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_args(p, CHAT_DEFAULTS)
    p.set_defaults(ckpt="out/chat/best.pt", max_new_tokens=128)
    p.add_argument("--system", default="", help="system prompt")
    p.add_argument("--prompt", default=None, help="one-shot: print a single reply and exit")
    p.add_argument("--rag", action="store_true", help="answer from passages retrieved from Wikipedia")
    p.add_argument("--data", default="", help="with --rag: the dataset folder with the index "
                   "(default: the one the checkpoint was trained on)")
    p.add_argument("--rag_k", type=int, default=3, help="passages retrieved per question")
    args = p.parse_args(argv)
    params_from_args(args)  # refuse out-of-range options before loading anything
    model, tok, info = load_model(args.ckpt, args.device, args.dtype)
    if not tok.has_chat_tokens():
        raise UsageError(f"{args.ckpt}: its tokenizer has no chat tokens; fine-tune it with chat_sft.py first.")
    index = open_index(args.data or info["data"], args.rag_k) if args.rag else None
    start = [Message("system", args.system)] if args.system else []

    if args.prompt is not None:
        try:
            reply(model, tok, start + [Message("user", args.prompt)], args, index)
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
            history.append(Message("assistant", reply(model, tok, history, args, index)))
        except ContextOverflow as e:
            history.pop()
            print(f"(not sent: {e})")


if __name__ == "__main__":
    run_main(main)
