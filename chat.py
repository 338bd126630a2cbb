"""
Chat with a fine-tuned checkpoint in the terminal (or one reply for scripts).

    python chat.py --ckpt out/chat/best.pt
    python chat.py --ckpt out/chat/best.pt --system "You are a helpful assistant."
    python chat.py --ckpt out/chat/best.pt --prompt "What is a river?"     # one reply, then exit
    python chat.py --ckpt out/chat/best.pt --rag                  # answers from Wikipedia, with sources
    python chat.py --ckpt out/chat/best.pt --rag --copy 0         # the model alone reads the evidence
    printf 'Hello!\\n你好\\n' | python chat.py --ckpt out/chat/best.pt          # a scripted chat

Commands: /reset clears the conversation (with --rag, the article it was about too), /quit (or Ctrl-D) leaves;
another /word is refused as an unknown command (it would otherwise go to the model).
Replies are decoded by wikigpt/decoding/engine.py exactly as serve.py decodes them: same seed, same reply
(in float32; 16-bit weights: within their rounding). One engine serves every turn, each prefilling only
its new message (the last turn's keys are kept); --compile compiles its step once, before the first reply.
"""
import argparse
import re
import sys

from wikigpt.decoding.load import add_model_args, add_rag_args, check_rag_args, load_model
from wikigpt.cli import UsageError, run_main
from wikigpt.decoding.generate import generate, warmed_engine
from wikigpt.knowledge.evidence import RETRIEVE_K, Reader
from wikigpt.knowledge.conversation import find_in_conversation
from wikigpt.knowledge.grounding import cited, copy_plan, evidence_prompt, listed, reader_of
from wikigpt.knowledge.questions import small_talk
from wikigpt.knowledge.retrieval import open_index
from wikigpt.decoding.sampling import CHAT_DEFAULTS, add_copy_arg, add_sampling_args, params_from_args
from wikigpt.chat.chat_template import ContextOverflow, Message, fit_history, prompt_room
from wikigpt.tokenizer import stream_text


def reply(model, tok, history: list[Message], args, reader: Reader | None = None, out=sys.stdout) -> str:
    """Stream one assistant reply to `out` and return its text (without <|end|>). With a
    reader (--rag; small talk such as "Hello!" goes to the model alone), the evidence found for
    the last turn, read in the conversation (a follow-up
    that names nothing is about the entity of the turns before it), goes into the prompt, best
    first, and the sources are listed after the reply, each with what it is. With copying on (--copy > 0, the default with
    --rag) the reply copies the best evidence, or, when it scores below the threshold, says
    that the articles do not answer and shows what was closest; --copy 0 shows the model alone."""
    block = model.cfg.block_size
    room = prompt_room(block, args.max_new_tokens)
    if reader is not None and small_talk(history[-1].content):
        reader = None  # "Hello!", "Thanks": the model alone, not the articles
    found = find_in_conversation(reader, history) if reader is not None else None  # before turns are dropped
    ids, history[:] = fit_history(tok, history, room, limit=block - 1)  # oldest turns go first
    params, sources, copy, text = params_from_args(args), [], None, None
    if reader is not None:
        ids, found, sources = evidence_prompt(reader, tok, history, room, block - 1, found)
        params, text, copy = copy_plan(tok, found, params)  # "not found", or the evidence to copy
    pieces = [text] if text is not None else []
    if text is None:
        tokens = generate(model, ids, args.max_new_tokens, params, stop_tokens=tok.stops,
                          seed=args.seed, tok=tok, copy_from=copy, compile=getattr(args, "compile", False),
                          reuse=True)  # the last turn's prompt and reply: not prefilled again
        pieces = stream_text(tok, tokens)
    shown = []
    for piece in pieces:
        out.write(piece)
        out.flush()
        shown.append(piece)
    out.write("\n")
    for i, source in listed(cited(found, sources, params.copy > 0)):  # each once, under its number in the prompt
        out.write(f"  [{i}] {source.label}{'  ' + source.url if source.url else ''}\n")
    return "".join(shown).strip()


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, ckpt="out/chat/best.pt")
    add_sampling_args(p, CHAT_DEFAULTS)
    p.set_defaults(max_new_tokens=128)
    p.add_argument("--system", default="", help="system prompt")
    p.add_argument("--prompt", default=None, help="one-shot: print a single reply and exit")
    add_rag_args(p, RETRIEVE_K)
    add_copy_arg(p)
    args = p.parse_args(argv)
    check_rag_args(p, args)
    params_from_args(args)  # refuse out-of-range options before loading anything
    model, tok, info = load_model(args.ckpt, args.device, args.dtype)
    if not tok.has_chat_tokens():
        raise UsageError(f"{args.ckpt}: its tokenizer has no chat tokens; fine-tune it with chat_sft.py first.")
    if info["kind"] == "pretrain":
        print(f"note: {args.ckpt} is a base (pretrained) model, never taught the chat turns: it continues "
              "text as Wikipedia would. Fine-tune it with chat_sft.py for replies.", file=sys.stderr)
    if args.prompt is not None and not args.prompt.strip():
        raise UsageError("--prompt is empty: give a question, e.g. --prompt \"What is the capital of Andorra?\"")
    reader = reader_of(open_index(args.data, args.rag_k, info["data"]), args.rag_k) if args.rag else None
    if reader is not None and reader.note:
        print(f"note: {reader.note}", file=sys.stderr)
    start = [Message("system", args.system)] if args.system else []
    if args.compile:  # every graph now: the replies compile nothing, however long the chat
        warmed_engine(model, tok)

    if args.prompt is not None:
        try:
            reply(model, tok, start + [Message("user", args.prompt.strip())], args, reader)
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
        if re.fullmatch(r"/[A-Za-z]+", text):  # a command mistyped, or one from another tool: not for the model
            print(f"(unknown command {text}: /reset starts over, /quit leaves)")
            continue
        history.append(Message("user", text))
        print("bot> ", end="", flush=True)
        try:
            history.append(Message("assistant", reply(model, tok, history, args, reader)))
        except ContextOverflow as e:
            history.pop()
            print(f"(not sent: {e})")


if __name__ == "__main__":
    run_main(main)
