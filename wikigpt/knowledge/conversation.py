"""
The evidence for the last question of a conversation: what chat.py --rag and serve.py --rag call
with their messages list, so a follow-up that names nothing ("When was it first published?"
after "Who wrote Animal Farm?") is read as about the entity the conversation was on.

    found = find_in_conversation(reader, [Message("user", "Who wrote Animal Farm?"),
                                          Message("assistant", "George Orwell"),
                                          Message("user", "When was it first published?")])
    found.best    # Animal Farm's evidence; the sources listed are this question's own

/reset is the caller's: a cleared messages list carries nothing. A "not found" reply counts too:
it names the closest evidence's article, and "Where was he born?" after it means that one.
"""
from wikigpt.knowledge.evidence import Found, Reader


def find_in_conversation(reader: Reader, messages: list, k: int | None = None) -> Found:
    """Reader.find for the last user message, with the earlier user and assistant turns as its
    history. Messages: chat_template.Message or
    {"role", "content"} dicts; system messages are skipped."""
    turns = [(m["role"], m["content"]) if isinstance(m, dict) else (m.role, m.content) for m in messages]
    turns = [(role, text) for role, text in turns if role in ("user", "assistant")]
    if not turns or turns[-1][0] != "user":
        raise ValueError("find_in_conversation: the last message must be the user's question")
    history = []
    for role, text in turns[:-1]:
        if role == "user":
            history += [text, ""]  # a question, then its reply (filled in below when there is one)
        elif history:
            history[-1] = text
    return reader.find(turns[-1][1], k, history=history)
