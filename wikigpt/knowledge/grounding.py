"""
Answers from Wikipedia: the evidence and passages retrieved for a question, put into the chat
template. One rendering for the grounded SFT rows (wikiqa.py), chat.py --rag and the server,
so the model reads sources at chat time exactly as it learned to.
"""
from dataclasses import dataclass, replace

from wikigpt.chat.chat_template import Message, fit_history, render_chat
from wikigpt.knowledge.evidence import RETRIEVE_K, Found, Item, Reader
from wikigpt.knowledge.replies import EvidenceCopy, not_found
from wikigpt.knowledge.retrieval import Index, Passage
from wikigpt.decoding.sampling import SamplingParams
from wikigpt.tokenizer import Tokenizer

#   <|user|>Sources:
#   [1] Andorra (capital): Andorra la Vella                  <- the best evidence first
#   [2] Andorra: Its capital Andorra la Vella is the highest capital city in Europe, ...
#   [3] Andorra: Andorra, officially the Principality of Andorra, ...   <- then the top passage
#
#   Question: What is the capital of Andorra?<|end|><|assistant|>

MIN_PASSAGE_CHARS = 40  # a shorter cut of a passage tells the model nothing
EVIDENCE_K = 3  # evidence items shown before the passage...
CLOSE = 0.3  # ...those within this of the best score ("What is X?": X's lead sentence, not its facts)


def grounded_question(question: str, passages: list[tuple[str, str]]) -> str:
    """The user turn for a question with retrieved (title, text) sources, best first."""
    if not passages:
        return question
    sources = "\n".join(f"[{i}] {title}: {text}" for i, (title, text) in enumerate(passages, 1))
    return f"Sources:\n{sources}\n\nQuestion: {question}"


def fit_grounded(tok: Tokenizer, history: list[Message], passages: list[tuple[str, str]],
                 room: int, limit: int | None = None):
    """fit_history with sources in the last user turn. The conversation is fitted first;
    the sources get what is left of `room`, best first, the last one shortened (at a
    character, never inside one) to fit; where not even the best one fits, the oldest exchange
    gives way to it (an answer without its source would be worse than a shorter memory).
    Returns (ids, kept messages, sources used)."""
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
    first = 1 if kept[0].role == "system" else 0
    if passages and not used and len(kept) - first > 2:  # an exchange to drop before the last turn
        return fit_grounded(tok, kept[:first] + kept[first + 2:], passages, room, limit)
    if used:
        kept = kept[:-1] + [Message(kept[-1].role, grounded_question(question, used))]
    return ids, kept, used


@dataclass
class Source(Passage):
    """A source as the prompt shows it (title: 'Andorra (capital)', as the grounded SFT rows
    were rendered) and as a reader is shown it: the article, and what of it was read."""
    article: str = ""
    what: str = ""  # 'article lead', 'infobox field "capital"', 'section "Economy"', 'article text', 'passage'

    @property
    def label(self) -> str:
        """'Andorra: infobox field "capital"': two sources of one article never read alike."""
        return f"{self.article}: {self.what}"


def what_it_is(item: Item) -> str:
    """What of its article an evidence item is, said for a reader."""
    if item.kind in ("fact", "reverse"):  # a reverse look-up reads a fact of its subject
        return f'infobox field "{item.attribute}"'
    if item.kind == "lead":
        return "article lead"
    if item.kind == "section" or (item.attribute and item.kind in ("sentence", "yes/no")):
        return f'section "{item.attribute}"'  # a section's opening, or a sentence under its heading
    return "article text"


def sources_of(found: Found, passages: int = 1) -> list[Source]:
    """What the prompt shows, in order: the best evidence items (those close to the best), then
    the top retrieved passages that are more than one of those items."""
    close = [i for i in found.items[:EVIDENCE_K] if i.score >= found.score - CLOSE]
    out = [Source(item.label, item.text, item.url, item.score, item.title, what_it_is(item)) for item in close]
    shown = {p.text for p in out}
    out += [Source(p.title, p.text, p.url, p.score, p.title, "passage")
            for p in found.passages if p.text not in shown][:passages]
    return out


def listed(sources: list[Source]) -> list[tuple[int, Source]]:
    """The sources to list under a reply, each under the number it has in the prompt: one
    source per label (two sentences of one section are one source to a reader)."""
    seen, out = set(), []
    for n, s in enumerate(sources, 1):
        if s.label not in seen:
            seen.add(s.label)
            out.append((n, s))
    return out


def evidence_prompt(reader: Reader, tok: Tokenizer, history: list[Message], room: int, limit: int,
                    found: Found | None = None):
    """Find the evidence for the last user turn and fit it, best first, into the prompt (the
    conversation first, the sources in what is left). Returns (prompt ids, the Found, the
    sources that made it in, as Sources: label, text as shown, url, article, what it is).
    chat.py and the server pass the Found of the whole conversation (find_in_conversation)."""
    found = found or reader.find(history[-1].content)
    sources = sources_of(found)
    ids, _, used = fit_grounded(tok, history, [(s.title, s.text) for s in sources], room, limit)
    return ids, found, [replace(s, text=text) for s, (_, text) in zip(sources, used)]  # as shown (cut)


def cited(found: Found | None, sources: list[Source], copying: bool) -> list[Source]:
    """The sources to list under a reply: those its prompt showed; where not even the best one
    fitted (a question that fills the context), the best evidence when copying, since the reply
    copies it or shows it as the closest: a quoted answer always says where it is from."""
    return sources or (sources_of(found)[:1] if found is not None and found.items and copying else [])


def copy_plan(tok: Tokenizer, found: Found, params: SamplingParams):
    """What copying (params.copy > 0) makes of the evidence found, for chat.py, the server and
    the benchmark alike. Returns (params, reply, copy): below the threshold the reply is
    "not found" with the closest evidence, said as it is (nothing generated); otherwise the
    EvidenceCopy of the best evidence to mix into the model's choices, decoded greedily (the
    answer is read back, not sampled: at temperature 0.7 one token drawn off the copy can start
    an invented number or a loop) and with the repetition penalties off (the evidence is in the
    prompt by construction, and may say a word twice: a penalty would push the copy away). With params.copy == 0, the
    model alone, sampled as asked: (params, None, None)."""
    if params.copy <= 0:
        return params, None, None
    if not found.answerable or found.best is None:
        return params, not_found(found), None
    return (replace(params, temperature=0.0, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0),
            None, EvidenceCopy.from_item(tok, found.best))


def reader_of(index: Index, k: int | None = None) -> Reader:
    """The evidence reader over an opened index (made once, kept on the index); `k`, when given,
    sets how many passages it retrieves per question (--rag_k)."""
    if getattr(index, "reader", None) is None:
        index.reader = Reader.open(index.folder, index)
    if k is not None:
        index.reader.k = k
    return index.reader

