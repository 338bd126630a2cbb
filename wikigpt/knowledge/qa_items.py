"""
Questions about the articles of one split, with their reference answers, in four kinds:

    lead        "What is Albania?"                        -> the article's opening sentence
    fact        "What is the capital of Albania?"         -> the infobox value, "Tirana"
    section     "Tell me about the economy of Albania."   -> the section's first sentence
    out-of-corpus  "What is the capital of Ruritania?"    -> nothing: the articles hold no answer
                (entities the articles link to but the corpus lacks; Chinese names on an
                English corpus)

The train split's questions teach the model (wikiqa.grounded_conversations) and choose the
"not found" threshold (calibrate); the val split's are the held-out benchmark (wikiqa.evaluate_qa).
"""
import random
import re
from dataclasses import dataclass

from wikigpt.prep.data import read_articles
from wikigpt.run.progress import progress_bar
from wikigpt.knowledge.evidence import Reader
from wikigpt.knowledge.questions import ASKED
from wikigpt.knowledge.sentences import language, opening_sentence

EN_QUESTIONS = ["What is {t}?", "Tell me about {t}.", "What do you know about {t}?",
                "Who or what is {t}?", "Can you explain what {t} is?"]
ZH_QUESTIONS = ["{t}是什么？", "介绍一下{t}。", "请告诉我关于{t}的事。", "{t}是谁？", "你知道{t}吗？"]
FACT_QUESTIONS = {"en": ["What is the {a} of {t}?", "What is {t}'s {a}?"], "zh": ["{t}的{a}是什么？"]}
FACT_ANSWERS = {"en": "The {a} of {t} is {v}.", "zh": "{t}的{a}是{v}。"}
SECTION_QUESTIONS = {"en": ["Tell me about the {h} of {t}.", "Tell me about {t}: {h}."], "zh": ["介绍一下{t}的{h}。"]}
OUT_OF_CORPUS = {"en": ["What is {t}?", "Who was {t}?", "Tell me about {t}.", "What is the capital of {t}?",
                        "What is the population of {t}?", "When was {t} born?"],
                 "zh": ["{t}是什么？", "{t}是谁？", "{t}的首都是哪里？", "介绍一下{t}。"]}
# well-known names, asked about in Chinese: out of an English corpus (and dropped where the corpus has them)
ZH_NAMES = ["阿富汗", "法国", "孔子", "黄河", "莎士比亚", "日本", "长江", "爱因斯坦", "埃及", "巴西", "牛顿", "长城",
            "印度", "月球", "罗马", "亚马孙河", "贝多芬", "北京", "太阳", "西藏"]
# capital -> 首都: a field's first Chinese word in the table (simplified, the everyday one): read backwards,
# the first one is written last
ZH_WORDS = {v: k for k, v in reversed(ASKED.items()) if re.match(r"[\u4e00-\u9fff]", k) and " " not in v}
KINDS = ("lead", "fact", "section", "out-of-corpus")


@dataclass
class QAItem:
    question: str
    answer: str  # the reference: an opening sentence, a fact's value, a section's first sentence; "" when none
    title: str  # the article it is about ("" out of corpus)
    lang: str  # "en" | "zh"
    kind: str = "lead"
    attribute: str = ""  # a fact's attribute, a section's heading


def askable_facts(facts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Facts a person would ask about: a plain attribute name (words, no numbers), a short
    value that is not another field's name, each attribute once (its first value)."""
    names, seen, out = {a for a, _ in facts}, set(), []
    for a, v in facts:
        if a in seen or not re.fullmatch(r"[a-z][a-z ]{1,30}", a) or len(a.split()) > 4:
            continue
        seen.add(a)
        if 1 < len(v) <= 80 and v.lower() not in names and v.lower() != a:
            out.append((a, v))
    return out


def sample_articles(folder, split: str, k: int, seed: int = 0) -> list[dict]:
    """k articles of a split drawn uniformly in one pass (reservoir sampling), in file order; the
    whole split when it has k or fewer. Memory: k articles, whatever the corpus's size."""
    rng, kept = random.Random(f"{seed}:sample:{split}"), []
    articles = progress_bar(read_articles(folder, split), desc=f"sampling {split} articles", unit=" articles",
                            delay=10)  # a whole split: minutes at enwiki's size, said; nothing for a small one
    for i, article in enumerate(articles):
        if i < k:
            kept.append((i, article))
        elif (j := rng.randint(0, i)) < k:
            kept[j] = (i, article)
    return [article for _, article in sorted(kept, key=lambda x: x[0])]


def lead_items(folder, split: str, per_article: int, seed: int = 0, articles=None) -> list[QAItem]:
    """per_article templated "What is X?" questions about each article of one split (or of
    `articles`, some of its articles)."""
    rng = random.Random(f"{seed}:{split}")
    items = []
    for article in articles if articles is not None else read_articles(folder, split):
        answer = opening_sentence(article["text"])
        if len(answer) < 20:
            continue
        lang = language(article["text"])
        templates = ZH_QUESTIONS if lang == "zh" else EN_QUESTIONS
        for template in rng.sample(templates, min(per_article, len(templates))):
            items.append(QAItem(template.format(t=article["title"]), answer, article["title"], lang))
    return items


def fact_and_section_items(reader: Reader, titles: list[str], per_article: int, seed: int = 0) -> list[QAItem]:
    """Questions about the facts and section openings of the articles `titles`."""
    return list(each_fact_and_section_item(reader, titles, per_article, seed))


def each_fact_and_section_item(reader: Reader, titles, per_article: int, seed: int = 0):
    """fact_and_section_items one at a time, from titles that may stream by (a whole split's)."""
    rng, kb = random.Random(f"{seed}:facts"), reader.kb
    for title in titles:
        subject = kb.subject(title) if kb else None
        if subject is None:
            continue
        lang = "zh" if re.search(r"[\u4e00-\u9fff]", title) else "en"
        facts = askable_facts(kb.facts(subject))
        for a, v in rng.sample(facts, min(per_article, len(facts))):
            words = ZH_WORDS.get(a) if lang == "zh" else a
            if words:
                q = rng.choice(FACT_QUESTIONS[lang]).format(a=words, t=title)
                yield QAItem(q, v, title, lang, "fact", a)
        sections, seen = [], set()
        for h, opening in kb.sections(subject):
            if h.lower() not in seen and len(opening) >= 30 and len(h.split()) <= 5 and not re.search(r"\d", h):
                seen.add(h.lower())
                sections.append((h, opening))
        for h, opening in rng.sample(sections, min(per_article, len(sections))):
            words = ZH_WORDS.get(h.lower(), h) if lang == "zh" else h.lower()
            q = rng.choice(SECTION_QUESTIONS[lang]).format(h=words, t=title)
            yield QAItem(q, opening, title, lang, "section", h)


def out_of_corpus_items(reader: Reader, titles: list[str], n: int, seed: int = 0, skip=frozenset(),
                        zh_names=ZH_NAMES) -> list[QAItem]:
    """n questions about entities the corpus does not hold: what the articles `titles` link
    to but the graph does not know (and whose name names nothing it knows), and Chinese names
    (about a third, on a corpus that lacks them)."""
    rng, kb = random.Random(f"{seed}:ooc"), reader.kb
    if kb is None:
        return []
    names = []
    for title in titles:
        subject = kb.subject(title)
        for target in kb.links(subject) if subject is not None else []:
            if (len(target) >= 4 and target not in skip and not re.search(r"[\d():/,]", target)
                    and not kb.knows(target) and not reader.links(target)):
                names.append(target)
    names = sorted(set(names))
    zh = [z for z in zh_names if not reader.links(z)]
    n_zh = min(len(zh), n // 3)
    items = [QAItem(rng.choice(OUT_OF_CORPUS["en"]).format(t=t), "", "", "en", "out-of-corpus")
             for t in rng.sample(names, min(n - n_zh, len(names)))]
    items += [QAItem(rng.choice(OUT_OF_CORPUS["zh"]).format(t=t), "", "", "zh", "out-of-corpus")
              for t in rng.sample(zh, n_zh)]
    return items


def train_items(folder, reader: Reader, articles: list[dict], seed: int = 0) -> list[QAItem]:
    """The template questions about these train articles: 2 lead questions an article, 3 of its
    facts and sections (what the threshold and the learned models are taught on)."""
    titles = [a["title"] for a in articles]
    return lead_items(folder, "train", 2, seed, articles) + fact_and_section_items(reader, titles, 3, seed)


def calibrate(folder, reader: Reader, max_questions: int = 400, seed: int = 0) -> dict:
    """The "not found" threshold, chosen on the train split: the score that best separates
    questions about train articles (lead, fact, section: answer them) from out-of-corpus ones
    (abstain). Returns {"abstain_below": t, ...} with what it separates, for the index info."""
    # questions about at most max_questions train articles: on a full dump the split holds
    # millions, and every article's questions (and its links' look-ups) would not fit in memory
    articles = sample_articles(folder, "train", max_questions, seed)
    train = [a["title"] for a in articles]
    inside = train_items(folder, reader, articles, seed)
    inside = random.Random(seed).sample(inside, min(max_questions, len(inside)))
    outside = out_of_corpus_items(reader, train, max(len(inside) // 2, 10), seed, zh_names=ZH_NAMES[::2])
    yes = sorted(reader.find(i.question).score for i in inside)
    no = sorted(reader.find(i.question).score for i in outside)
    if not yes or not no:
        return {}
    cuts = sorted(set(yes + no))
    candidates = [(a + b) / 2 for a, b in zip(cuts, cuts[1:])] or cuts

    def right(t):  # questions on the right side of t
        return sum(s >= t for s in yes) / len(yes) + sum(s < t for s in no) / len(no)

    best = max(map(right, candidates))
    ties = [t for t in candidates if right(t) == best]
    t = round(ties[len(ties) // 2], 4)
    return {"abstain_below": t, "calibration": {
        "questions": len(yes), "out_of_corpus": len(no),
        "answered": round(sum(s >= t for s in yes) / len(yes), 3),
        "abstained": round(sum(s < t for s in no) / len(no), 3)}}
