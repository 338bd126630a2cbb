"""
Questions about Wikipedia articles, answered from the articles themselves (questions and their
references: qa_items.py; evidence: evidence.py).

  - Grounded SFT conversations (train split only), rendered exactly as at chat time: lead
    questions ("What is X?" -> the sentence shown as source [1]), fact questions ("What is the
    capital of X?" -> "The capital of X is Y.", en + zh), section questions ("Tell me about the
    economy of X." -> the section's first sentence) and out-of-corpus ones, answered "the
    articles do not answer this".
  - The held-out QA benchmark (val split only: articles never seen in pretraining or SFT):
    per kind of question (lead, fact, section, out-of-corpus), answer accuracy and token F1
    without retrieval, with retrieval (the model alone reads the evidence) and with copying
    (the reply copies the best evidence, or says "not found" below the threshold), plus
    retrieval recall and abstention precision / recall.

A small model cannot memorise Wikipedia, but it can learn to read a source and answer from it.
"""
import random
from dataclasses import replace

from wikigpt.chat.chat_template import Message, fit_history, prompt_room
from wikigpt.prep.data import read_articles
from wikigpt.decoding.generate import generate_batch
from wikigpt.knowledge.evidence import Item, Reader
from wikigpt.knowledge.replies import ABSTAIN, is_abstention
from wikigpt.knowledge.grounding import copy_plan, evidence_prompt, grounded_question, reader_of
from wikigpt.knowledge.qa_items import (EN_QUESTIONS, FACT_ANSWERS, KINDS, ZH_NAMES, ZH_QUESTIONS, ZH_WORDS, QAItem,
                                        each_fact_and_section_item, fact_and_section_items, lead_items,
                                        out_of_corpus_items, sample_articles)
from wikigpt.knowledge.retrieval import split_passages
from wikigpt.decoding.sampling import RAG_COPY, SamplingParams
from wikigpt.knowledge.scores import rouge_l, token_f1, words
from wikigpt.knowledge.sentences import language, opening_sentence
from wikigpt.tokenizer import Tokenizer

COPYING = "with retrieval, copying"  # the model + a copy distribution over the best evidence (EvidenceCopy)
ROWS = ("without retrieval", "with retrieval", COPYING)
# room kept for a grounded answer: an opening sentence is mostly 20-50 tokens, but may run to
# 240 characters, ~75 tokens of the demo's 8k BPE (with 64, 5 of 54 held-out section answers
# were cut where the context ends)
REPLY_TOKENS = 96
OOC_TITLES = 10_000  # train articles whose links give the grounded rows' out-of-corpus names (the demo's: all)
qa_items = lead_items  # the lead questions, by their old name


def _row(reader: Reader, tok: Tokenizer, question: str, answer: str, room: int, block: int, first: Item | None = None):
    """One grounded conversation rendered as chat.py renders it; `first` (if given) is shown as
    source [1], the evidence found for the question after it."""
    found = reader.find(question)
    if first is not None:  # shown as the best evidence is: with the best score
        found.items = [replace(first, score=max(found.score, 1.0))] + [i for i in found.items if i.text != first.text]
    _, found, used = evidence_prompt(reader, tok, [Message("user", question)], room, block - 1, found)
    if not used or (first is not None and used[0].text != first.text):
        return None  # the source to read did not fit
    return [Message("user", grounded_question(question, [(s.title, s.text) for s in used])),
            Message("assistant", answer)]


def grounded_conversations(folder, index, tok: Tokenizer, block_size: int, seed: int = 0,
                           passages_per_article: int = 20, negative_share: float = 0.1):
    """Yield SFT conversations [user: sources + question, assistant: answer] about the train
    articles, rendered and fitted exactly as at chat time.

    Lead: one conversation per passage (up to passages_per_article per article): a question
    about the article, that passage's first sentence as source [1] and as the answer; the same
    question thus gets different answers depending on the sources: the model cannot answer
    from memory, it must read [1]. Facts and section openings: the question asked of each,
    answered from its evidence. A share of out-of-corpus questions, answered ABSTAIN."""
    rng, reader = random.Random(seed), reader_of(index)
    room = prompt_room(block_size, REPLY_TOKENS)
    n, titles = 0, []  # the first OOC_TITLES train titles: what the out-of-corpus names are drawn from
    for article in read_articles(folder, "train"):
        lang, title = language(article["text"]), article["title"]
        for text in split_passages(article["text"])[:passages_per_article]:
            answer = opening_sentence(text)
            if len(answer) >= 20:
                question = rng.choice(ZH_QUESTIONS if lang == "zh" else EN_QUESTIONS).format(t=title)
                item = Item("sentence", title, answer)  # the reply says it as copying would (Item.quoted)
                if conv := _row(reader, tok, question, item.quoted, room, block_size, item):
                    n += 1
                    yield conv
    def train_titles():  # streamed: a full dump's train split is millions of articles
        for article in read_articles(folder, "train"):
            if len(titles) < OOC_TITLES:
                titles.append(article["title"])
            yield article["title"]
    for item in each_fact_and_section_item(reader, train_titles(), per_article=12, seed=seed):
        if item.kind == "fact":
            first = Item("fact", item.title, item.answer, item.attribute)
            words_ = ZH_WORDS.get(item.attribute, item.attribute) if item.lang == "zh" else item.attribute
            answer = FACT_ANSWERS[item.lang].format(a=words_, t=item.title, v=item.answer)
        else:
            first, answer = Item("section", item.title, item.answer, item.attribute), item.answer
        if conv := _row(reader, tok, item.question, answer, room, block_size, first):
            n += 1
            yield conv
    for item in out_of_corpus_items(reader, titles, int(n * negative_share), seed):
        if conv := _row(reader, tok, item.question, ABSTAIN[item.lang], room, block_size):
            yield conv


# ----------------------------------------------------------------------------------------
# The benchmark

def answer_all(model, tok: Tokenizer, prompts: list[list[int]], max_new_tokens: int,
               copy_from: list | None = None, copy: float = 0.0) -> list[str]:
    """Greedy answers for many prompts at once, batched by the serving engine (copying from
    each prompt's evidence with weight `copy`, when given)."""
    if not prompts:
        return []
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, copy=copy)
    replies = generate_batch(model, tok, prompts, max_new_tokens, params, copy_from=copy_from)
    return [tok.decode([t for t in ids if t not in tok.stops]).strip() for ids in replies]


def normalised(text: str) -> str:
    return " ".join(words(text))


def correct(reply: str, reference: str) -> bool:
    """The reference (a value, a sentence) is in the reply, case, spaces and punctuation aside."""
    ref = normalised(reference)
    return bool(ref) and f" {ref} " in f" {normalised(reply)} "


# the val articles asked about, at most: all of enwiki's ~68 k would be ~200 k questions, each
# retrieved and answered by the model (hours); a small split is asked about whole
BENCHMARK_ARTICLES = 500


def benchmark_items(folder, reader: Reader, per_article: int = 3, seed: int = 0) -> list[QAItem]:
    """The held-out questions: lead, fact and section questions about the val articles (at most
    BENCHMARK_ARTICLES of them, drawn at random), and as many out-of-corpus ones as fact questions
    (none the train articles link to)."""
    articles = sample_articles(folder, "val", BENCHMARK_ARTICLES, seed)
    val = [a["title"] for a in articles]
    inside = (lead_items(folder, "val", per_article, seed, articles)
              + fact_and_section_items(reader, val, 3 * per_article, seed))
    # the val articles' links that a train article links to as well (never asked as out of corpus):
    # the train split streams by, and only the val articles' links are kept (not ~15 M names on enwiki)
    linked = {t for title in val for t in reader.kb.links(reader.kb.subject(title))} if reader.kb else set()
    trained = {t for a in read_articles(folder, "train") for t in reader.kb.links(reader.kb.subject(a["title"]))
               if t in linked} if linked else set()
    return inside + out_of_corpus_items(reader, val, max(len(inside) // 3, 6), seed + 1, skip=trained,
                                        zh_names=ZH_NAMES[1::2])  # the other half chose the threshold


def evaluate_qa(model, tok: Tokenizer, folder, index, per_article: int = 3, seed: int = 0,
                max_items: int | None = None) -> dict:
    """Held-out QA on the val articles, per kind of question (see the module doc)."""
    reader = reader_of(index)
    items = benchmark_items(folder, reader, per_article, seed)
    if max_items:
        items = [i for k in KINDS for i in [i for i in items if i.kind == k][:max(max_items // len(KINDS), 2)]]
    block = model.cfg.block_size
    room = prompt_room(block, REPLY_TOKENS)
    plain, grounded, founds = [], [], []
    for item in items:
        question = [Message("user", item.question)]
        plain.append(fit_history(tok, question, room, block - 1)[0])
        ids, found, _ = evidence_prompt(reader, tok, question, room, block - 1)
        grounded.append(ids)
        founds.append(found)
    lead = [(i, f) for i, f in zip(items, founds) if i.kind == "lead"]
    titles = lambda f: list(dict.fromkeys(p.title for p in f.passages))[:5]  # noqa: E731
    report = {"questions": len(items), "articles": len({i.title for i in items if i.title}),
              "recall@1": sum(titles(f)[:1] == [i.title] for i, f in lead) / max(len(lead), 1),
              "recall@5": sum(i.title in titles(f) for i, f in lead) / max(len(lead), 1),
              "threshold": reader.threshold, "kinds": {}, "abstention": {}}
    answers = {ROWS[0]: answer_all(model, tok, plain, REPLY_TOKENS),
               ROWS[1]: answer_all(model, tok, grounded, REPLY_TOKENS)}
    plans = [copy_plan(tok, f, SamplingParams(copy=RAG_COPY))[1:] for f in founds]  # ("not found" | None, copy)
    go = [k for k, (said, _) in enumerate(plans) if said is None]
    copied = dict(zip(go, answer_all(model, tok, [grounded[k] for k in go], REPLY_TOKENS,
                                     [plans[k][1] for k in go], RAG_COPY)))
    answers[COPYING] = [plans[k][0] or copied[k] for k in range(len(items))]
    for name in ROWS:
        report[name] = score_row(name, items, answers[name], report)
        report[name]["examples"] = [{"kind": i.kind, "question": i.question, "answer": a, "reference": i.answer}
                                    for k in KINDS for i, a in [(i, a) for i, a in zip(items, answers[name])
                                                                if i.kind == k][:1]]
    return report


def score_row(name: str, items: list[QAItem], answers: list[str], report: dict) -> dict:
    """One row's scores: the lead kind's F1 / ROUGE-L at the top (today's figures), each kind's
    accuracy and F1 into report["kinds"], abstention into report["abstention"]."""
    for kind in KINDS[:3]:
        pairs = [(a, i.answer) for i, a in zip(items, answers) if i.kind == kind]
        report["kinds"].setdefault(kind, {"questions": len(pairs)})[name] = {
            "accuracy": sum(correct(a, r) for a, r in pairs) / max(len(pairs), 1),
            "f1": sum(token_f1(a, r) for a, r in pairs) / max(len(pairs), 1)}
    out = [is_abstention(a) for a in answers]
    ooc = [i.kind == "out-of-corpus" for i in items]
    hits = sum(o and a for o, a in zip(ooc, out))
    report["kinds"].setdefault("out-of-corpus", {"questions": sum(ooc)})[name] = {"abstained": hits / max(sum(ooc), 1)}
    report["abstention"][name] = {"precision": hits / max(sum(out), 1), "recall": hits / max(sum(ooc), 1),
                                  "answered": 1 - sum(a for o, a in zip(ooc, out) if not o) / max(len(ooc) - sum(ooc), 1)}
    lead = [(a, i.answer) for i, a in zip(items, answers) if i.kind == "lead"]
    return {"f1": sum(token_f1(a, r) for a, r in lead) / max(len(lead), 1),
            "rouge_l": sum(rouge_l(a, r) for a, r in lead) / max(len(lead), 1)}


def format_report(r: dict) -> str:
    """The per-kind table (what chat_sft.py, eval.py and make demo print)."""
    cell = lambda text: f" | {text:>23s}"  # noqa: E731
    lines = [f"held-out Wikipedia QA ({r['questions']} questions, {r['articles']} val articles never trained on; "
             f"retrieval recall@1 {r['recall@1']:.2f}, recall@5 {r['recall@5']:.2f}; 'not found' below {r['threshold']:.2f})",
             f"  {'kind':14s} {'n':>4s}" + "".join(cell(n) for n in ROWS),
             f"  {'':14s} {'':>4s}" + cell("accuracy    F1") * len(ROWS)]
    for kind in KINDS:
        k = r["kinds"].get(kind, {})
        if kind == "out-of-corpus":
            cells = "".join(cell(f"abstained {k[n]['abstained']:.2f}") for n in ROWS)
        else:
            cells = "".join(cell(f"{k[n]['accuracy']:.2f}  {k[n]['f1']:.3f}") for n in ROWS)
        lines.append(f"  {kind:14s} {k.get('questions', 0):4d}{cells}")
    a = r["abstention"]
    lines.append(f"  {'abstention':19s}" + "".join(cell(f"P {a[n]['precision']:.2f} R {a[n]['recall']:.2f} "
                                                        f"ans {a[n]['answered']:.2f}") for n in ROWS))
    lines.append("  (accuracy: the reference - a fact's value, a sentence - is in the reply; abstention: precision "
                 "P and recall R of 'not found' on out-of-corpus questions; ans: in-corpus questions answered)")
    return "\n".join(lines)
