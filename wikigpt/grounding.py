"""
Answers from Wikipedia: retrieved passages put into the chat template. One rendering for the
grounded SFT rows (wikiqa.py), chat.py --rag and the server, so the model reads passages at chat
time exactly as it learned to.
"""
from wikigpt.chat_template import Message, fit_history, render_chat
from wikigpt.retrieval import Index
from wikigpt.tokenizer import Tokenizer

#   <|user|>Sources:
#   [1] Aristotle: Aristotle (384-322 BC) was a Greek philosopher...
#   [2] Plato: ...
#
#   Question: Who was Aristotle?<|end|><|assistant|>

MIN_PASSAGE_CHARS = 40  # a shorter cut of a passage tells the model nothing


def grounded_question(question: str, passages: list[tuple[str, str]]) -> str:
    """The user turn for a question with retrieved (title, text) passages, best first."""
    if not passages:
        return question
    sources = "\n".join(f"[{i}] {title}: {text}" for i, (title, text) in enumerate(passages, 1))
    return f"Sources:\n{sources}\n\nQuestion: {question}"


def fit_grounded(tok: Tokenizer, history: list[Message], passages: list[tuple[str, str]],
                 room: int, limit: int | None = None):
    """fit_history with passages in the last user turn. The conversation is fitted first;
    the passages get what is left of `room`, best first, the last one shortened (at a
    character, never inside one) to fit. Returns (ids, kept messages, passages used)."""
    ids, kept = fit_history(tok, history, room, limit)
    question = kept[-1].content

    def render(trial):
        turn = Message(kept[-1].role, grounded_question(question, trial))
        return render_chat(tok, kept[:-1] + [turn], add_generation_prompt=True)[0]

    used = []
    for title, text in passages:
        trial_ids = render(used + [(title, text)])
        if len(trial_ids) <= room:
            used, ids = used + [(title, text)], trial_ids
            continue
        lo, hi = 0, len(text)  # the longest cut that fits: binary search on characters
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(render(used + [(title, text[:mid].rstrip() + "...")])) <= room:
                lo = mid
            else:
                hi = mid - 1
        if lo >= MIN_PASSAGE_CHARS:
            used = used + [(title, text[:lo].rstrip() + "...")]
            ids = render(used)
        break  # the context is full
    if used:
        kept = kept[:-1] + [Message(kept[-1].role, grounded_question(question, used))]
    return ids, kept, used


def grounded_prompt(index: Index, tok, history: list, k: int, room: int, limit: int):
    """Retrieve k passages for the last user turn and fit them into the prompt (fit_grounded: the conversation first, passages in what is left). Shared by chat.py --rag
    and serve.py --rag. Returns (prompt ids, the passages that made it in)."""
    hits = index.search(history[-1].content, k)
    ids, _, used = fit_grounded(tok, history, [(h.title, h.text) for h in hits], room, limit)
    return ids, hits[:len(used)]
