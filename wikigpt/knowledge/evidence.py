"""
Question -> evidence: the sentence or fact of the knowledge base that answers a question, how
well it does, and whether to say "not found" instead. Used by chat.py --rag, serve.py --rag
(through grounding.py) and the QA benchmark (wikiqa.py).

    reader = Reader.open("data/demo")
    found = reader.find("What is the capital of Andorra?")
    found.best         # Item(kind='fact', title='Andorra', attribute='capital', text='Andorra la Vella', score=1.0)
    found.answerable   # best score (or, with one stored, the learned confidence) >= the threshold

How: (1) link the question to entities: the longest title or alias it names (knowledge.py);
what is left of the question is what it asks ("capital"), with a small en + zh table of the
words infobox fields and section headings use for it (首都 -> capital, born -> birth: questions.py);
(2) retrieve passages by BM25, the linked entity's first; (3) score every candidate - the
linked entity's facts, its section openings and lead sentence, and the sentences of the
retrieved passages - by the share of what is asked that it covers (terms weighted by IDF),
counted in full only for the entity the question names. A question that names nothing in the
corpus (another language, an article it lacks) therefore scores at most 0.5.
"""
import math
import re
from dataclasses import dataclass, field, replace

from wikigpt.prep.data import DatasetError
from wikigpt.knowledge.found import Found, Item
from wikigpt.knowledge.graph import GUESSED, Knowledge, Link, name_key, without_qualifier
from wikigpt.knowledge.ranker import Confidence, Ranker, features
from wikigpt.knowledge.replies import without_abstention
from wikigpt.knowledge.analysis import CJK_RUN, STOPWORDS, in_simplified, terms
from wikigpt.knowledge.retrieval import Index, Passage
from wikigpt.knowledge.linking import MAX_REPLY_CHARS, Linker, clipped
from wikigpt.knowledge.questions import (ACRONYM, ASKED, DEFINITION, MEASURED_TYPES, QUESTION_WORDS, STANDS_FOR,
                                        TELL, TYPE_WORDS, ZH_WHAT_IS, answer_type, has_new, question_kind,
                                        spelled_out, table_phrases, table_words, typed_distance, without_lead_in,
                                        without_zh_question_words)
from wikigpt.knowledge.yes_no import UNSETTLED, ZH_COMPARED, ZH_OPPOSITE, asks_yes_or_no, settle
from wikigpt.knowledge.sentences import CJK, language, opening_sentence, split_sentences

RETRIEVE_K = 8  # passages whose sentences compete as evidence
# the entities named whose leads, facts and sections are candidates: a question names one or two
# (bench/natural_qa: at most 2); 97 titles in one message gave 2,484 candidates to score
MAX_ENTITIES = 4
DEFAULT_THRESHOLD = 0.75  # between "names an entity and covers what is asked" (1.0) and "names nothing" (<= 0.5)
PENDING = "pending"  # the index info's calibration until retrieve.py --build has chosen the threshold
UNLINKED = 0.5  # weight of evidence about an entity the question does not name
OFF_TYPE = 0.85  # the weight of evidence that lacks what the question asks for
SENTENCE = 0.85  # a sentence's coverage counts this much: below a field or heading that names what is asked
# a Chinese sentence writing this share of a question's description, in a run of this many characters
# or more, is about what the question describes (says_most_of)
SAID_SHARE, SAID_CHARS, MAX_DESCRIBED = 0.75, 4, 40
# what an acronym stands for, of the first few a question writes ("What do NFL and AFC stand
# for?"): a question of capitalised words would otherwise search once per word
MAX_ACRONYMS, ACRONYM_PASSAGES = 3, 3
NAME_CONNECTORS = {"of", "the", "and", "de", "la", "le", "von", "van", "du", "da", "del", "y", "in", "on", "for", "&"}
_HEADING_LINE = re.compile(r"^[^.!?。！？:;,]{1,60}$")  # a line that looks like a section title


@dataclass
class Asked:
    """What a question asks: its terms with their IDF weight and the terms that cover each."""
    weights: dict = field(default_factory=dict)  # term -> idf
    covers: dict = field(default_factory=dict)  # term -> the set of terms that count as it
    tell: bool = False  # "Tell me about the economy of X": a section's opening, not a fact

    def coverage(self, item_terms: set) -> float:
        total = sum(self.weights.values())
        if not total:
            return 0.0
        return sum(w for t, w in self.weights.items() if self.covers[t] & item_terms) / total


def without_entity(question: str, links: list[Link]) -> str:
    """The question without the name of the entity it is about (links[0]): what it asks of it."""
    return question[:links[0].start] + " " + question[links[0].end:] if links else question


def known_terms(question: str, links: list[Link]) -> set:
    """What the question says already: its words and those of the titles it names."""
    return set(terms(question)) | {t for l in links for t in terms(l.title)}


def stored_thresholds(info: dict, confidence: bool) -> tuple[float, float]:
    """(the "not found" threshold, the rules' own) from an index's info. With a confidence that
    can be read, abstain_below is on its scale; a confidence stored but no longer readable (its
    features changed) leaves the rules' threshold kept beside it to judge (rules_abstain_below;
    score_floor before), or the default where none was kept; with none stored, abstain_below is
    the rules' (retrieve.py --build's, --calibrate's, --ab's)."""
    rules = info.get("rules_abstain_below", info.get("score_floor"))
    if confidence:
        return info.get("abstain_below", DEFAULT_THRESHOLD), rules or DEFAULT_THRESHOLD
    if info.get("confidence"):  # stored for other features: its threshold is on another scale
        return rules or DEFAULT_THRESHOLD, rules or DEFAULT_THRESHOLD
    t = info.get("abstain_below", DEFAULT_THRESHOLD)
    return t, t


class Reader:
    """The retrieval index and the knowledge graph of a dataset folder, read together."""

    def __init__(self, index: Index, kb: Knowledge | None, threshold: float | None = None):
        self.index, self.kb, self.note, self.k = index, kb, "", RETRIEVE_K
        info = index.info
        self.ranker, self._attribute_words = Ranker.from_info(info), {}  # ranker None: the rules rank
        self.confidence = Confidence.from_info(info)  # None: the best score is judged
        self.threshold, self.rules_threshold = stored_thresholds(info, self.confidence is not None)
        if info.get("confidence") and self.confidence is None:  # chat.py and serve.py print it
            self.note = (f"the learned 'not found' confidence in {index.folder} was stored by an older version (other "
                         "features), so the rules' threshold judges instead; to store one for this version: python "
                         f"bench/bench_answers.py --data {index.folder} --confidence")
        if info.get("calibration") == PENDING and "abstain_below" not in info:  # --build stopped before choosing it
            self.note = (f"the 'not found' threshold of the index in {index.folder} was never chosen (its build was "
                         f"stopped after writing the index), so the default {DEFAULT_THRESHOLD} judges; to choose it: "
                         f"python retrieve.py --data {index.folder} --build")
        if threshold is not None:
            self.threshold = threshold
        if kb is None:
            self.threshold = 0.0  # without the graph nothing links: nothing could pass a threshold
        self.linker, self.stopwords = Linker(index, kb, STOPWORDS), STOPWORDS
        self.remembered: dict | None = None  # (question, k, history, ranker) -> Found, see find
        if kb is not None and kb.counts.get("articles") != index.info.get("articles"):
            raise DatasetError(f"{kb.path} holds {kb.counts.get('articles')} articles but the index "
                               f"{index.info.get('articles')}: they come from different runs. Rebuild the "
                               f"index: python retrieve.py --data {kb.path.parent} --build")

    @classmethod
    def open(cls, folder, index: Index | None = None) -> "Reader":
        """The folder's index and knowledge graph; a folder without the graph (an older one)
        still reads passages, and reader.note says how to get facts."""
        index = index or Index.open(folder)
        try:
            kb = Knowledge.open(folder)
        except DatasetError as e:
            if "no knowledge graph" not in str(e):
                raise  # a damaged file: say so, never answer from half of it
            reader = cls(index, None)
            reader.note = str(e)
            return reader
        return cls(index, kb)

    def idf(self, term: str) -> float:
        return self.index.idf(term)

    def attribute_words(self, attribute: str) -> str:
        """An infobox field's name in words: older templates run them together ("placeofburial"
        -> "placeofburial place of burial", "notableworks" -> "... notable works"). The fewest
        pieces that are each a word the passages use (3+ letters) or "of", "in", "the", "and";
        the name as it is when there are none. Remembered: the graph has a few thousand names."""
        if " " in attribute or len(attribute) < 8 or not attribute.isalpha():
            return attribute
        if attribute not in self._attribute_words:
            n = len(attribute)
            best = [None] * (n + 1)  # best[i]: the fewest pieces that spell attribute[:i]
            best[0] = []
            for i in range(1, n + 1):
                for j in range(max(0, i - 20), i):
                    piece = attribute[j:i]
                    if best[j] is not None and (piece in ("of", "in", "the", "and") or len(piece) >= 3 and len(
                            t := terms(piece)) == 1 and self.index.doc_freq(t[0])) and (
                            best[i] is None or len(best[j]) + 1 < len(best[i])):
                        best[i] = best[j] + [piece]
            split = " ".join(best[n]) if best[n] and len(best[n]) > 1 else ""
            if len(self._attribute_words) >= 100_000:
                self._attribute_words.clear()  # bounded, as the idf cache is
            self._attribute_words[attribute] = f"{attribute} {split}".strip()
        return self._attribute_words[attribute]

    # ----- the question

    def links(self, question: str, guess: bool = True) -> list[Link]:
        """The entities a question names, the one it is about first (linking.Linker.links)."""
        return self.linker.links(question, guess)

    def asked(self, question: str, links: list[Link]) -> Asked:
        """The question without the entity it is about and without its question words."""
        asked = Asked(tell=bool(TELL.search(question)))
        phrases, rest = table_phrases(in_simplified(without_entity(question, links)).lower())  # 還有 as 还有
        for word in phrases:  # Chinese words and phrases ("real name") first: not split at spaces
            # a Chinese word also covers itself, as zhwiki's infoboxes name their fields (首都); by
            # its runs of two or more (one character, 都 "all" in 首都, would cover any sentence)
            own = [t for t in terms(word) if len(t) > 1] if CJK_RUN.match(word) else []
            self._ask(asked, [], [t for t in terms(ASKED[word]) if len(t) > 1 or not CJK_RUN.match(t)] + own)
        rest = without_zh_question_words(rest)  # "那它的 ..." (its entity carried: linking.carried)
        for w in re.findall(rf"[{CJK}]+|[^\W_{CJK}]+", rest):
            if w not in QUESTION_WORDS:
                self._ask(asked, self.seen_terms(w), terms(ASKED.get(w, "")))
        if (compared := ZH_COMPARED.search(rest)) and compared[2] in asked.covers:  # 比乔戈里峰矮吗？ - "比乔戈里峰高":
            asked.covers[compared[2]].update(b for a, b in ZH_OPPOSITE if a == compared[2])  # settled, as no
        return asked

    def seen_terms(self, words: str) -> list[str]:
        """A run's terms, less the Chinese character pairs across two words: a pair no passage holds
        beside one that does (面温 between 表面 and 温度) could be covered by nothing and would
        weigh most (the rarest). A pair alone unseen stays: 法国 asked of a corpus without France."""
        across = set()
        for run in re.findall(rf"[{CJK}]+", words):
            pairs = [run[i:i + 2] for i in range(len(run) - 1)]
            seen = [bool(self.index.doc_freq(pair)) for pair in pairs] + [False]  # seen[-1]: before the first
            across |= {pair for i, pair in enumerate(pairs) if not seen[i] and (seen[i - 1] or seen[i + 1])}
        return [t for t in terms(words) if t not in across]

    def _ask(self, asked: Asked, own: list, synonyms: list = ()):
        """One asked word: its own terms (a Chinese word has none: then one term stands for
        it), the first covered by any of the table's words for it."""
        own = own or list(synonyms[:1])
        for t in own:
            asked.weights.setdefault(t, self.idf(t))
            asked.covers.setdefault(t, {t})
        if own:
            asked.covers[own[0]].update(synonyms or own)

    # ----- evidence

    def candidates(self, links: list[Link], passages: list[Passage]) -> list[Item]:
        items = []
        for subject in list(dict.fromkeys(l.subject for l in links))[:MAX_ENTITIES]:  # the entities named, in order
            lead = self.index.passages[int(self.index.lead_ids[subject])]
            title, url = lead["title"], lead.get("url", "")
            items.append(Item("lead", title, opening_sentence(lead["text"]), url=url))
            facts = self.kb.facts(subject)
            fields = {attribute.lower(): value for attribute, value in facts}  # "largest city: capital" is the capital's
            items += [Item("fact", title, fields.get(value.lower(), value), attribute, url) for attribute, value in facts]
            items += [Item("section", title, opening, heading, url) for heading, opening in self.kb.sections(subject)]
        headings = {}
        for rank, p in enumerate(passages):
            if p.title not in headings:
                headings[p.title] = self.headings(p.title)
            heading = ""
            for line in p.text.split("\n"):
                line = line.strip()
                if line in headings[p.title] if headings[p.title] is not None else _HEADING_LINE.match(line):
                    heading = line  # a section title: context for the sentences under it
                    continue
                items += [Item("sentence", p.title, s, heading, p.url, passage=rank) for s in split_sentences(line)]
        return items

    def headings(self, title: str) -> set | None:
        """The section titles of an article (None without the graph: then a short line without
        a sentence's punctuation is taken for one, and a list item may be too)."""
        subject = self.kb.subject(title) if self.kb is not None else None
        return None if subject is None else {h for h, _ in self.kb.sections(subject)}

    def score(self, item: Item, asked: Asked, subjects: dict, whole: Asked | None = None, implied: tuple = (),
              described: list[str] = ()) -> float:
        """(1 if the item is about the entity named, else UNLINKED) x (0.5 + 0.5 x coverage): the
        share of what is asked that the item covers. A question that asks nothing beyond its
        entity ("What is X?") is answered by X's lead sentence. Evidence about an entity the
        question does not name ("the largest country in Africa" -> Algeria) is weighed by how
        much of the whole question (`whole`) it covers, its title included: up to 1 when all;
        a Chinese sentence that writes most of what the question says (`described`, see
        says_most_of) as about the entity named."""
        about = 1.0 if subjects.get(item.title) == 0 else 0.9 if item.title in subjects else UNLINKED
        if item.kind == "expansion":  # the acronym asked about, spelled out beside it ("Lunar Module (LM)")
            return 1.0 if item.attribute.endswith("(beside it)") else 0.95  # above a sentence's most (0.925)
        if item.kind == "reverse":  # a fact whose value the question names: the subject answers it
            covered = whole.coverage(set(terms(f"{item.attribute} {item.title}")) | set(terms(item.text)))
            return 0.9 * (0.5 + 0.5 * covered)
        if not subjects and described and item.kind in ("sentence", "lead") and says_most_of(described, item.text):
            return 0.5 + 0.5 * SENTENCE * whole.coverage(set(terms(item.text)) | set(implied))
        if not subjects and whole is not None and whole.weights and item.kind in ("sentence", "lead"):
            covered = SENTENCE * whole.coverage(set(terms(item.text)) | set(terms(item.title)))
            return (UNLINKED + (1 - UNLINKED) * covered ** 2) * (0.5 + 0.5 * covered)
        if not asked.weights:
            return about if item.kind == "lead" and item.title in subjects else about * 0.5
        if item.kind == "fact":  # a field answers when its name is what is asked, not its value
            names = set(terms(self.attribute_words(item.attribute)))
            covered = asked.coverage(names)
            exact = len(names & {t for c in asked.covers.values() for t in c}) / max(len(names), 1)
            coverage = covered * (0.8 + 0.2 * exact)
        elif item.kind == "section":
            names = set(terms(item.attribute))
            coverage = max(asked.coverage(names), 0.9 * asked.coverage(names | set(terms(item.text)) | set(implied)))
        else:
            coverage = SENTENCE * asked.coverage(set(terms(item.text)) | set(terms(item.attribute)) | set(implied))
        form = 0.95 if (item.kind == "fact") == asked.tell else 1.0  # "tell me about": a section
        return about * (0.5 + 0.5 * coverage) * (form if item.kind in ("fact", "section") else 1.0)

    def find(self, question: str, k: int | None = None, history: list[str] = ()) -> Found:
        """Rank the evidence for a question (see the module doc), from the sentences of the
        top k passages (default self.k: --rag_k), and judge the best (its confidence, if one is
        stored). `history`: the conversation's earlier turns, oldest first, a question then its
        reply (see conversation.find_in_conversation): a follow-up that names no entity, or says
        "it", is about the entity of the latest question that named one (see carried). With
        self.remembered (a dict) the ranking of a question and history read before is reused:
        a benchmark that reads dev under several confidences and thresholds ranks each once."""
        question, history = clipped(question, history)
        key = (question, k, tuple(history), id(self.ranker))
        found = None if self.remembered is None else self.remembered.get(key)
        if found is None:
            found = self.rank(question, k, history)
            if self.remembered is not None:
                self.remembered[key] = found
        found = replace(found, threshold=self.threshold, confidence=None)
        if self.confidence is not None and found.items:
            found.confidence = round(self.confidence.score(self.confidence_features(found), found.kind), 4)
        return found

    def rank(self, question: str, k: int | None, history: list[str]) -> Found:
        """The evidence for find, best first; nothing judged yet."""
        said = question.strip()
        question = self.linker.asked_again(said, history)  # 那德国呢？: the last question, of 德国 (as read)
        form = without_lead_in(question)  # "and when did he die": what is asked, read without "and"
        links = self.linker.carried(question, self.links(question), history)
        query = f"{question} {links[0].title}" if links and not links[0].units else question
        if who := self.linker.person_replied(question, links, history):  # "When was he born?" after "... Morihei Ueshiba"
            query += f" {who}"  # searched for, not asked: his passages come first, the question scores them
        query = " ".join([query] + table_words(without_entity(form, links)))  # "buy": "purchased" too
        related = self.linker.related(links[0]) if links else []  # "Foreign relations of Angola" for Angola
        passages = self.index.search(query, k or self.k, boost=[l.subject for l in links[:1]] + related)
        if history and history[-1]:  # the passage the last reply came from: a follow-up's answer is often beside it
            seen = {(p.title, p.text) for p in passages}
            replied_from = self.index.search(without_abstention(history[-1])[:MAX_REPLY_CHARS], 1)
            passages += [p for p in replied_from if (p.title, p.text) not in seen]
        asked, whole = self.asked(form, links), self.asked(form, [])
        subjects = {}
        for rank, l in enumerate(links):
            subjects.setdefault(l.title, rank + (l.kind == GUESSED))  # a guessed name: 0.9, see score
        for article in related:
            subjects.setdefault(self.kb.title(article), 1)  # as a second entity's: 0.9
        kind = answer_type(form)
        # (not "What is X?": a sentence that mentions a name the graph lacks says nothing of what it is)
        what_is = asks_what_is(question, form)  # "What is X?": what X is, never a fact or sentence mentioning X
        described = zh_description(form) if not links and not what_is else []
        known = known_terms(question, links)
        wanted = set().union(*asked.covers.values())  # the terms that cover what is asked
        reverse = self.reverse(question, links) if not what_is else []  # "What is 诺贝尔物理学奖?" is not who won it
        candidates = self.candidates(links, passages) + reverse + self.expansions(question, links, passages)
        # what the conversation just said (the last question and reply), for telling equal items apart
        last_exchange = " ".join(turn[:MAX_REPLY_CHARS] for turn in history[-2:] if turn)
        context, items = set(terms(last_exchange)) - known, []
        for order, item in enumerate(candidates):
            value = {"reverse": " " + item.title, "fact": " " + item.text}.get(item.kind, item.text)  # a name may open a value
            typed = bool(kind) and has_new(kind, value, known)
            s = self.score(item, asked, subjects, whole, TYPE_WORDS.get(kind, ()) if typed else (), described)
            if kind and not typed:
                s *= OFF_TYPE
            measured_near = typed and item.kind == "sentence" and kind in MEASURED_TYPES
            near = -typed_distance(kind, item.text, wanted, known) if measured_near else 0
            shared = round(sum(map(self.idf, context & set(terms(item.text)))), 1) if context else 0.0
            items.append((round(s, 4), near, shared, -order, item, typed))
        # equal scores: the answer nearer what is asked, then the item sharing more with the last exchange
        # ("what did his mum think of it" after a reply about his book), then the earlier
        items.sort(key=lambda x: x[:4], reverse=True)
        ranked, seen, measured = [], set(), []
        for s, _, _, _, item, typed in items:
            if item.text and item.text not in seen:
                seen.add(item.text)
                ranked.append(replace(item, score=round(s, 4)))
                item_terms = set(terms(item.text)) | set(terms(item.attribute))
                about = 1.0 if subjects.get(item.title) == 0 else 0.9 if item.title in subjects else UNLINKED
                measured.append(features(item, s, len(measured), about, asked.coverage(item_terms),
                                         whole.coverage(item_terms | set(terms(item.title))), bool(kind), typed,
                                         bool(links), bool(links) and not links[0].units))
        if self.ranker is not None:  # the learned ranker's probability in place of the rules' score
            ranked = [replace(i, score=round(self.ranker.score(x), 4)) for i, x in zip(ranked, measured)]
            order = sorted(range(len(ranked)), key=lambda n: -ranked[n].score)
            ranked, measured = [ranked[n] for n in order], [measured[n] for n in order]
        if asks_yes_or_no(form) and not TELL.search(question) and not re.search(r"\bknow\b", question, re.I):
            ranked = settle(form, asked, ranked)
        elif not links and unknown_name_asked(form):  # "Tell me about A. S. Neill.": no article is about him,
            ranked = [replace(i, score=round(i.score * UNSETTLED, 4)) for i in ranked]  # and a mention is no answer
        return Found(question, language(said), links, ranked, passages, self.threshold,  # the reply in the user's language
                     features=dict(zip((i.text for i in ranked), measured)),  # for training the ranker
                     kind=question_kind(question, bool(history), bool(links), ranked[0].kind if ranked else ""))

    def confidence_features(self, found: Found) -> list[float]:
        """How the best item stands among the others, in the order of ranker.CONFIDENCE_FEATURES:
        its score, the margin to the next, how many of the next five tie with it, its passage's
        retrieval rank (/ 8), its length, how many of the next five share one of its three
        rarest words the question lacks (candidates agreeing on one answer), the share of the
        whole question it covers, whether the question named nothing the graph knows, and how
        far its answer of the type asked lies from the asked words (typed_answer_distance)."""
        items = found.items
        if not items:
            return [0.0] * 7 + [float(not found.links), 1.0]
        best, nexts = items[0], items[1:6]
        whole = self.asked(without_lead_in(found.question), [])
        best_terms = set(terms(best.text))
        new = sorted(best_terms - set(terms(found.question)) - set(terms(best.title)), key=lambda t: (-self.idf(t), t))[:3]
        agree = sum(bool(set(new) & set(terms(i.text))) for i in nexts) / 5 if new else 0.0
        covered = whole.coverage(best_terms | set(terms(best.attribute)) | set(terms(best.title)))
        return [best.score, best.score - (items[1].score if len(items) > 1 else 0.0),
                sum(i.score >= best.score - 0.005 for i in nexts) / 5, min(best.passage, 8) / 8,
                math.log(1 + len(best.text)) / 5, agree, covered, float(not found.links),
                self.typed_answer_distance(found.question, found.links, best)]

    def typed_answer_distance(self, question: str, links: list[Link], item: Item) -> float:
        """Words between a sentence's number, date or name of the type asked and the nearest
        asked word (questions.typed_distance), / 20, at most 1; 1 where none is asked or it is
        no sentence. "Algeria is divided into 48 provinces": 0.05 for "How many provinces..."."""
        form = without_lead_in(question)
        kind = answer_type(form)
        if kind not in MEASURED_TYPES or item.kind != "sentence":
            return 1.0
        wanted = set().union(*self.asked(form, links).covers.values())
        return min(typed_distance(kind, item.text, wanted, known_terms(question, links)), 20) / 20

    # ----- what else answers: the graph read backwards, expansions, yes / no

    def reverse(self, question: str, links: list[Link]) -> list[Item]:
        """The graph read backwards: facts whose value names what the question names ("Who wrote
        Atlas Shrugged?" -> Ayn Rand, whose notable works include it). The item's text is the
        subject, then the fact that names it."""
        if self.kb is None or (STANDS_FOR.search(question) and ACRONYM.search(question)):
            return []  # "What does SADC stand for?" asks for its words, not who lists it
        primary = links[0].subject if links else None
        words = [w for w in re.findall(r"[^\W_]+", question) if w.lower() not in QUESTION_WORDS
                 and w.lower() not in self.stopwords and w.lower() not in ASKED]
        phrases = [" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, min(len(words), i + 4) + 1)]
        phrases = [p for p in phrases if len(p) >= 4 and sum(map(self.idf, terms(p))) >= 4.0]
        items = []
        for subject, attribute, value, phrase in self.kb.facts_naming(phrases):
            if not names_an_element(phrase, value):
                continue  # "Bear" is a word of "American black bear", not its name
            if subject != primary and attribute not in ("name", "common name", "conventional long name"):
                title = self.kb.title(subject)
                if not re.search(rf"\b{re.escape(phrase)}\b", title, re.I):  # naming itself is not a reverse fact
                    items.append(Item("reverse", title, f"{title} ({attribute}: {value})"[:240], attribute))
        return items[:20]

    def expansions(self, question: str, links: list[Link], passages: list[Passage]) -> list[Item]:
        """What an acronym the question asks about stands for: the run of words in the named
        entity's lead or the retrieved passages whose first letters spell it ("ASCII" ->
        "American Standard Code for Information Interchange", "ANOVA" -> "analysis of variance")."""
        # "What's UNITA?", "DNA是什么？" ask it too (a Chinese character counts as a word:
        # "DNA双螺旋结构是谁发现的？" does not)
        if not STANDS_FOR.search(question) and len(re.findall(rf"[{CJK}]|[^\s{CJK}]+", question)) > 4:
            return []
        acronyms = [a for a in ACRONYM.findall(question)] + [l.title for l in links if ACRONYM.fullmatch(l.title)]
        texts = [(l.title, self.index.passages[int(self.index.lead_ids[l.subject])]["text"]) for l in links[:1]]
        texts += [(p.title, p.text) for p in passages]
        if STANDS_FOR.search(question):  # "iucn stands for what": a word the passages write in capitals
            written = {a for _, text in texts for a in ACRONYM.findall(text)}
            acronyms += [w.upper() for w in re.findall(r"[^\W\d_]{2,8}", question) if w.upper() in written
                         and w.lower() not in STOPWORDS and w.lower() not in QUESTION_WORDS]  # "us", "it": words
        items = [Item("expansion", l.title, without_qualifier(l.title), f"{short} stands for (its title)")
                 for l in links[:1] if ACRONYM.fullmatch(short := question[l.start:l.end]) and short != l.title]
        for acronym in list(dict.fromkeys(acronyms))[:MAX_ACRONYMS]:  # "ANSI" -> American National Standards Institute
            spelled = [(title, s) for title, text in texts for s in spelled_out(acronym, text)]
            if not spelled:  # the passages that write it, where the question's other words found none
                spelled = [(p.title, s) for p in self.index.search(acronym, ACRONYM_PASSAGES)
                           for s in spelled_out(acronym, p.text)]
            items += [Item("expansion", title, expansion, f"{acronym} stands for" + " (beside it)" * beside)
                      for title, (expansion, beside) in spelled]
        return items


def asks_what_is(question: str, form: str) -> bool:
    """Whether a question asks what or who something is, or to be told about it."""
    return bool(TELL.search(question) or DEFINITION.match(form) or ZH_WHAT_IS.search(form))


def zh_description(question: str) -> list[str]:
    """What a Chinese question says of the thing it asks about: its runs between question words
    ("世界上最高的电波塔是哪个？" -> 世界上最高, 电波塔); none for a question without Chinese or
    longer than MAX_DESCRIBED (says_most_of's work grows with it)."""
    if not CJK_RUN.search(question):
        return []
    runs = re.findall(r"\w+", without_zh_question_words(in_simplified(question).lower()))
    return runs if sum(map(len, runs)) <= MAX_DESCRIBED else []


def says_most_of(described: list[str], text: str) -> bool:
    """Whether a text writes most (SAID_SHARE) of a Chinese question's description, in runs of two
    or more characters, one of them SAID_CHARS or more, and every 最 / 第 of it as the question does:
    "东京晴空塔...是世界上最高的电波塔" for 世界上最高的电波塔是哪个？, not "中国第二长河...世界第六长河"
    for 世界第二长河是哪条？ nor "含沙量最大" for 含沙量最小的河流. Chinese names the thing asked about
    by describing it, where English would write its name (a superlative, a reverse look-up:
    号青莲居士的是哪位诗人？); a description written this fully is as sure a sign as a name linked."""
    text = in_simplified(text).lower()
    if any(m[0] not in text for run in described for m in re.finditer(r"[最第].", run)):
        return False
    runs = [next((n for n in range(len(run), 1, -1) if any(run[i:i + n] in text for i in range(len(run) - n + 1))), 0)
            for run in described]  # the longest piece of each run the text writes
    return max(runs, default=0) >= SAID_CHARS and sum(runs) >= SAID_SHARE * sum(map(len, described))


def unknown_name_asked(question: str) -> bool:
    """Whether a question asks only what or who a name is ("Tell me about A. S. Neill.", "What is
    Interflug?"): asked of a name the graph does not know, the passages that mention it hold no
    answer (they were 4 of the template benchmark's 31 out-of-corpus questions answered). An
    acronym is left to be spelled out ("What's UNITA?")."""
    m = DEFINITION.match(question)
    if not m or m["name"].isupper():
        return False
    return all(w[:1].isupper() or w.lower() in NAME_CONNECTORS for w in m["name"].split())


def names_an_element(phrase: str, value: str) -> bool:
    """Whether a phrase is most of the words of one element of a fact's value ("Atlas Shrugged" of
    "The Fountainhead, Atlas Shrugged"; "Yellowhammer State" of "The Yellowhammer State")."""
    said = set(name_key(phrase).split())
    for element in re.split(r"[,;/\n·•、，；]|\band\b|\(|\)", value):  # lists as infoboxes write them
        words = set(name_key(element).split()) - {"the", "a", "an", "of"}
        if len(said & words) > len(words) / 2:
            return True
    return False
