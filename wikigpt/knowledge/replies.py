"""
What a grounded reply says: the best evidence copied token by token (EvidenceCopy, the engine's
CopySource), or "not found" with the closest evidence (not_found), in the question's language.

    copy = EvidenceCopy.from_item(tok, found.best)   # the reply reads the evidence back, then ends
    not_found(found)   # "The articles I have do not answer this. The closest I found (Andorra): ..."
"""
ABSTAIN = {"en": "The articles I have do not answer this.", "zh": "我的资料里没有这个问题的答案。"}
CLOSEST = {"en": " The closest I found ({title}): {text}", "zh": "最接近的是（{title}）：{text}"}


def not_found(found) -> str:
    """The reply when the best evidence is below the threshold (evidence.Found): say so, and show
    the closest."""
    lang = found.lang if found.lang in ABSTAIN else "en"
    best = found.best
    if best is None:
        return ABSTAIN[lang]
    return ABSTAIN[lang] + CLOSEST[lang].format(title=best.label, text=best.text)


def without_abstention(reply: str) -> str:
    """A reply without the "not found" sentence (its closest evidence, titled, stays)."""
    for sentence in ABSTAIN.values():
        reply = reply.replace(sentence, " ")
    return reply


def is_abstention(reply: str) -> bool:
    return any(a[:20] in reply for a in ABSTAIN.values())


class EvidenceCopy:
    """A CopySource for the engine (prior(reply) -> {id: p} | None, see wikigpt/decoding/sampling.py)
    that copies one piece of evidence and stops at its end: the reply starts at the evidence's
    first token, follows it (after its last n tokens, n = 8 down to 1, the token that comes next
    in it) and ends the turn after the evidence's last token - a sentence's end, a list item's
    line end, a fact's value. Nothing is copied from the passages around it."""

    def __init__(self, ids: list[int], end_of_turn: int, max_n: int = 8):
        self.ids, self.end_of_turn, self.max_n = ids, end_of_turn, max_n

    @classmethod
    def from_item(cls, tok, item) -> "EvidenceCopy":  # item: found.Item
        return cls(tok.encode(item.quoted), tok.end_of_turn)

    def prior(self, reply: list[int]) -> dict | None:
        ids = self.ids
        if not ids:
            return None
        if not reply:
            return {ids[0]: 1.0}
        for n in range(min(self.max_n, len(reply), len(ids)), 0, -1):
            tail = reply[-n:]
            for end in range(n, len(ids) + 1):  # the first place the reply's last n tokens occur
                if ids[end - n:end] == tail:
                    return {self.end_of_turn: 1.0} if end == len(ids) else {ids[end]: 1.0}
        return None
