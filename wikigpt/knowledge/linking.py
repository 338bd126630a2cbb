"""
Which articles a question names (Reader.find's first step): the knowledge graph's names
(graph.Knowledge.link), a title guessed when none is named (misspelled, or in another form of its
word), the articles an entity's own is split into, and in a conversation the entity a follow-up
that names none is about.

    linker = Linker(index, kb)
    linker.links("capital of afganistan?")           # [Link('Afghanistan', ..., kind=GUESSED)]
    linker.carried("When was it published?", [], ["Who wrote Animal Farm?", "George Orwell"])
"""
import re
from dataclasses import replace

from wikigpt.knowledge.analysis import STOPWORDS, in_simplified, terms
from wikigpt.knowledge.graph import GUESSED, Knowledge, Link, name_units, without_qualifier
from wikigpt.knowledge.questions import (ELLIPTICAL, NEW_TOPIC, PERSON_PRONOUNS, PRONOUNS, ZH_AND_WHAT, ZH_PRONOUN_AT,
                                         table_phrases, without_zh_question_words)
from wikigpt.knowledge.sentences import CJK
from wikigpt.knowledge.replies import without_abstention
from wikigpt.knowledge.retrieval import Index

PERSON_NAME = re.compile(r"\b[A-Z][a-z]+(?:[ ][A-Z][a-z]+){1,3}\b")  # "Morihei Ueshiba", "Andreas Vesalius"
NAME_WORD = re.compile(r"(?<=[^\s.!?:;]\s)[A-Z][a-z][^\W_]*")  # a capitalised word (no acronym: "US") inside a sentence
CJK_RUN = re.compile(f"[{CJK}]+")
# capitalised inside a sentence, yet no name of something else: "What happened in May?", "and the North?"
NOT_NAMES = frozenset("january february march april may june july august september october november december "
                      "monday tuesday wednesday thursday friday saturday sunday north south east west".split())
MAX_REPLY_CHARS = 2000  # of a reply read for a name: a served conversation's replies can be long
# of a message read as a question, its end (where a long message asks): the reader's work grows
# with the question (searches, phrases looked up in the graph); the longest of bench/natural_qa is 102
MAX_QUESTION_CHARS = 1000
MAX_GUESSED_WORDS = 32  # a question's words tried as a title guessed: one fuzzy look-up in the titles each
# what an English follow-up says for the entity it carries: the name goes in its place (asked_again);
# group 1, a possessive ("its capital": "Algeria's capital"); "her" only before a word ("her husband")
EN_PRONOUN = re.compile(r"\b(?:(its|his|their|her(?=\s+[^\W\d_]))|it|he|she|they|him|them|her)\b", re.I)
OWN_WORD_PASSAGES = 5  # a corpus word is a title's other form when all its best passages are that article's


class Linker:
    """The knowledge graph's names and the index's titles, for linking questions to articles."""

    def __init__(self, index: Index, kb: Knowledge | None, stopwords: frozenset = STOPWORDS):
        self.index, self.kb, self.stopwords = index, kb, stopwords

    def links(self, question: str, guess: bool = True) -> list[Link]:
        """The entities a question names, the one it is about first: the longest name, and of
        equally long ones the rarest (in 'the capital of Andorra', Andorra, not Capital). `guess`:
        when none is named, a title misspelled or in another form (not in a reply's long text)."""
        if self.kb is None:
            return []
        links = self.kb.link(question, self.stopwords) or (self.guessed(question) if guess else [])
        return sorted(links, key=lambda l: (-l.units, l.kind, -sum(map(self.index.idf, terms(question[l.start:l.end])))))

    def guessed(self, question: str) -> list[Link]:
        """A one-word title the question names in another spelling: typed with a letter wrong
        ("afganistan": a word no passage holds), or in another form of its word ("agnostids" for
        Agnostida: a word the corpus uses, but only in that article's best passages), one edit
        from exactly one one-word title (two or more: which was meant cannot be told). Its
        evidence weighs as about an entity named less surely (Reader.find: 0.9)."""
        words = list(dict.fromkeys(m for m in re.finditer(r"[^\W\d_]{5,}", question)))[:MAX_GUESSED_WORDS]
        seen = set()
        for m in words:
            term = terms(m[0])
            if len(term) != 1 or term[0] in seen:
                continue
            seen.add(term[0])
            near = [s for s in self.index.titles_near(term[0], 20) if len(name_units(without_qualifier(self.kb.title(s)))) == 1]
            if len(near) != 1:
                continue
            title = self.kb.title(near[0])
            if self.index.doc_freq(term[0]) and any(  # "animal": its stem is Animation's, its passages are not
                    p.title != title for p in self.index.search(m[0], OWN_WORD_PASSAGES)):
                continue
            return [Link(title, near[0], m.start(), m.end(), 1, GUESSED)]
        return []

    def related(self, link: Link, n: int = 6) -> list[int]:
        """The articles an entity's own is split into, by Wikipedia's titles for them ("Economy of
        Angola", "Foreign relations of Angola", "Transport in Angola", "History of the United
        States"): at most n, the shortest titles first. Their passages compete with the entity's
        own, and their evidence counts as about a second entity (0.9)."""
        if self.kb is None:
            return []
        name = without_qualifier(link.title).lower()
        ends = tuple(f" {p} {the}{name}" for p in ("of", "in") for the in ("", "the "))
        found = self.index.titles_with(terms(name), 20)
        return [a for a in found if a != link.subject and self.kb.title(a).lower().endswith(ends)][:n]

    # ----- a conversation

    def carried(self, question: str, links: list[Link], history: list[str]) -> list[Link]:
        """The links of a follow-up: its own, after the entity of the latest earlier question that
        named one when it names none or says "it" / "its" / "they" ("When was it first
        published?" after "Who wrote Animal Farm?"); a "he" or "she" may be a person the last
        replies named, a "not found" reply's closest article included. When no earlier turn named
        one, the article the last question was about, as a guess: the one it carried itself, else
        the one its reply's evidence came from (without a reply, the question's best passage). The
        carried link spans nothing of the question (units 0): nothing is cut from what it asks. A
        question that says it changes the subject ("unrelated, but ...": NEW_TOPIC) carries
        nothing, and nothing is carried past it; nor does one that names a name the conversation has
        not used and says no "it" ("Who is Barack Obama?" after Angola's capital, "and Zimbabwe?";
        names_new: a Chinese "and ...?" of words the last entity's article holds is none)."""
        if links and not PRONOUNS.search(question) or NEW_TOPIC.match(question):
            return links  # it names its own, or says it asks about something else
        if not links and not PRONOUNS.search(question) and self.names_new(question, history):
            return links  # about a name the graph lacks: not the last entity's
        person = PERSON_PRONOUNS.search(question)
        recent = list(enumerate(history))[-6:]  # the last three exchanges
        for n, earlier in reversed(recent):
            if not earlier or (n % 2 and not person):
                continue
            named = self.links(without_abstention(earlier), guess=n % 2 == 0)  # "do not answer this": no "Answer"
            if named:
                return self._carry(named[0], links)
            if n % 2 == 0 and NEW_TOPIC.match(earlier):  # what came before it was another topic
                recent = [(m, q) for m, q in recent if m >= n]
                break
        questions_at = [n for n, q in recent if n % 2 == 0 and q.strip()]
        if not links and questions_at and self.kb is not None:  # ("What was the first animated feature film?": Animation)
            last = history[questions_at[-1]]  # what the last question was about, found as it was when it was asked:
            before = history[max(0, questions_at[-1] - 4):questions_at[-1]]  # a third turn is about the first one's article too
            top = self.carried(last, [], before)[:1] if before else []  # (it named nothing: see the loop above)
            reply = history[questions_at[-1] + 1] if questions_at[-1] + 1 < len(history) else ""
            reply = without_abstention(reply or "")[:MAX_REPLY_CHARS].strip()  # the evidence it was answered by,
            found = self.index.search(reply or last, 1) if not top else []  # else the question: where it is from
            if found and (subject := self.kb.subject(found[0].title)) is not None:
                top = [Link(found[0].title, subject, 0, 0, 0, GUESSED)]
            if top:
                return self._carry(top[0], links)
        return links

    def asked_again(self, question: str, history: list[str]) -> str:
        """A follow-up that names another entity and asks nothing else (ELLIPTICAL: 那德国呢？ after
        日本的国际电话区号是多少, "and Zimbabwe?" after "What is the capital of Zambia?") asks the last
        question of it: that question (as it was read: 那法国呢？ after 那德国呢？ asks the capital too)
        with the follow-up's name in place of its entity's. Any other question is read as it is, and
        so is a follow-up after a question of two entities (北京市的人口比上海市多吗？); after one that said
        它 / 他 / 她 (它的面积是多少？), the name goes in place of the pronoun, and so it does after an
        English follow-up whose entity was carried ("What currency does it use?": "What currency does
        Algeria use?")."""
        if len(history) < 2 or not history[-2]:
            return question
        own = self.links(question, guess=False)
        if not own or not ELLIPTICAL.match(question[:own[0].start] + question[own[0].end:]):
            return question
        last = self.asked_again(history[-2], history[:-2])
        before = self.links(last, guess=False)
        name = question[own[0].start:own[0].end]
        if not before and (pronoun := ZH_PRONOUN_AT.match(last)):
            return last[:pronoun.start(1)] + name + last[pronoun.end(1):]
        if not before and not CJK_RUN.search(last) and EN_PRONOUN.search(last) and self.carried(last, [], history[:-2]):
            # its entity carried ("What currency does it use?"): no name written to replace, so the name
            # goes where the first "it" / "its" was (a later "he" may be someone else: "who founded it
            # and where did he live?"); a last message without one ("Thanks!") is no question to ask again
            return EN_PRONOUN.sub(lambda m: f"{name}'s" if m[1] else name, last, count=1)
        if len({l.subject for l in before}) != 1 or before[0].subject == own[0].subject:
            return question
        return last[:before[0].start] + name + last[before[0].end:]

    def names_new(self, question: str, history: list[str]) -> bool:
        """Whether a question writes a name (a capitalised word inside a sentence) that the last
        three exchanges did not ("Americans" after "... American Revolutionary War" is no new one);
        in Chinese, which has no capitals, two or more characters left of it (question words and
        the table's words aside) that share none with them: 吉他是什么？ after Beijing's mayor is
        about a guitar, 最高峰呢？ after 珠穆朗玛峰 still about the mountain; unless it asks "and
        ...?" (那 / 还有 / 呢) of words the last entity's article holds (那核心呢？ after the sun)."""
        said = set(terms(" ".join(without_abstention(t)[:MAX_REPLY_CHARS] for t in history[-6:] if t)))
        if CJK_RUN.search(question):
            new = [run for run in CJK_RUN.findall(without_zh_question_words(table_phrases(question.lower())[1]))
                   if len(run) >= 2 and not set(terms(run)) & said]
            return bool(new) and not (ZH_AND_WHAT.search(question) and self.all_about_the_last(new, history))
        return any(set(terms(m[0])) - said - self.stopwords for m in NAME_WORD.finditer(question)
                   if m[0].lower() not in NOT_NAMES)

    def all_about_the_last(self, words: list[str], history: list[str]) -> bool:
        """Whether the articles the last exchanges named write each of these words in one of their
        best passages: 那核心呢？ asks more of the sun (核心, its core), 韩国的首都呢？ after Japan's capital
        asks about another country."""
        named = {l.title for turn in history[-6:] if turn
                 for l in self.links(without_abstention(turn)[:MAX_REPLY_CHARS], guess=False)}
        return all(any(p.title in named and in_simplified(word) in in_simplified(p.text)
                       for p in self.index.search(word, OWN_WORD_PASSAGES)) for word in words)

    @staticmethod
    def _carry(link: Link, links: list[Link]) -> list[Link]:
        """The carried link first, spanning nothing of the question; the question's own after it."""
        return [replace(link, start=0, end=0, units=0)] + [l for l in links if l.subject != link.subject]

    def person_replied(self, question: str, links: list[Link], history: list[str]) -> str:
        """Who a follow-up's "he" or "she" may be when the last reply named someone without an
        article of their own ("Aikido (creator: Morihei Ueshiba)", "Andreas Vesalius ... is
        considered the founder of modern human anatomy"): the reply's first name of two or more
        capitalised words that is no part of a linked title; '' when none."""
        if not PERSON_PRONOUNS.search(question) or len(history) < 2 or not history[-1] or NEW_TOPIC.match(question):
            return ""
        titles = set(" ".join(l.title for l in links).split())
        for m in PERSON_NAME.finditer(without_abstention(history[-1])[:MAX_REPLY_CHARS]):
            if titles.isdisjoint(m[0].split()):
                return m[0]
        return ""


def clipped(question: str, history) -> tuple[str, list[str]]:
    """What the reader reads of a conversation: each question's last MAX_QUESTION_CHARS and each
    reply's first MAX_REPLY_CHARS (history alternates question, reply), cut at a space, so the
    work of a turn is bounded however long the messages a client sends are."""
    def end_of(text: str) -> str:
        tail = text[-MAX_QUESTION_CHARS:]
        if len(text) <= MAX_QUESTION_CHARS or text[-MAX_QUESTION_CHARS - 1].isspace():
            return tail
        cut = re.search(r"\s", tail)  # the word the cut went through is left out; Chinese has no spaces
        return tail[cut.end():] if cut and tail[cut.end():].strip() else tail
    return end_of(question), [t and (end_of(t) if i % 2 == 0 else t[:MAX_REPLY_CHARS])  # None: a reply left out
                              for i, t in enumerate(history)]
