"""
Questions about Wikipedia articles, answered from the articles themselves.

  - Grounded SFT conversations (train split only): "What is X?" / "X是什么？" with the passages
    retrieved for it in the user turn, and the article's opening sentence as the answer; plus
    questions whose passages are about something else, answered "the sources do not say".
  - The held-out QA benchmark (val split only: articles never seen in pretraining or SFT):
    retrieval recall@1/@5, and answer token F1 and ROUGE-L against the opening sentence, with
    and without retrieval.

A small model cannot memorise Wikipedia, but it can learn to read a passage and answer from it.
"""
import random
import re
from dataclasses import dataclass

from wikigpt.data import read_articles
from wikigpt.engine import generate_batch
from wikigpt.retrieval import Index
from wikigpt.sampling import RAG_COPY, CopySource, SamplingParams
from wikigpt.scores import CJK_CHAR, rouge_l, token_f1
from wikigpt.chat_template import Message, fit_history, prompt_room
from wikigpt.tokenizer import Tokenizer
from wikigpt.grounding import fit_grounded

EN_QUESTIONS = ["What is {t}?", "Tell me about {t}.", "What do you know about {t}?",
                "Who or what is {t}?", "Can you explain what {t} is?"]
ZH_QUESTIONS = ["{t}是什么？", "介绍一下{t}。", "请告诉我关于{t}的事。", "{t}是谁？", "你知道{t}吗？"]
NOT_IN_SOURCES = {"en": "The sources do not say anything about {t}.", "zh": "资料中没有关于{t}的内容。"}
RAG_K = 3  # passages retrieved per question
COPYING = "with retrieval, copying"  # the model + a copy distribution over the passages (CopySource)
REPLY_TOKENS = 64  # room kept for a grounded answer (an opening sentence is 20-50 tokens)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])|(?<=[。！？])")


@dataclass
class QAItem:
    question: str
    answer: str  # the reference: the article's opening sentence(s)
    title: str
    lang: str  # "en" | "zh"


def language(text: str) -> str:
    letters = [c for c in text[:400] if c.isalpha()]
    return "zh" if letters and sum(bool(CJK_CHAR.match(c)) for c in letters) > 0.3 * len(letters) else "en"


def opening_sentence(text: str, min_chars: int = 40, max_chars: int = 240) -> str:
    """The article's first sentence (two if the first is very short), at most max_chars."""
    lead = text.strip().split("\n", 1)[0]
    sentences = [s.strip() for s in _SENTENCE.split(lead) if s.strip()]
    answer = ""
    for s in sentences:
        answer = f"{answer} {s}".strip() if answer and language(s) == "en" else answer + s
        if len(answer) >= min_chars:
            break
    return answer[:max_chars]


def qa_items(folder, split: str, per_article: int, seed: int = 0) -> list[QAItem]:
    """per_article templated questions about each article of one split."""
    rng = random.Random(f"{seed}:{split}")
    items = []
    for article in read_articles(folder, split):
        answer = opening_sentence(article["text"])
        if len(answer) < 20:
            continue
        lang = language(article["text"])
        templates = ZH_QUESTIONS if lang == "zh" else EN_QUESTIONS
        for template in rng.sample(templates, min(per_article, len(templates))):
            items.append(QAItem(template.format(t=article["title"]), answer, article["title"], lang))
    return items


def grounded_conversations(folder, index: Index, tok: Tokenizer, block_size: int, seed: int = 0,
                           passages_per_article: int = 40, negative_share: float = 0.1):
    """Yield SFT conversations [user: sources + question, assistant: answer] about the train
    articles, rendered and fitted exactly as at chat time.

    One conversation per passage (up to passages_per_article per article): a question about
    the article's title, that passage as source [1] (then what retrieval finds for the
    question), and the passage's first sentence as the answer. The same question thus gets
    different answers depending on the sources: the model cannot answer from memory, it must
    read [1]. A share of questions gets only passages about other articles and the answer
    "the sources do not say". Positives whose answer did not fit in the context are skipped."""
    from wikigpt.retrieval import split_passages

    rng = random.Random(seed)
    room = prompt_room(block_size, REPLY_TOKENS)
    articles = list(read_articles(folder, "train"))
    for article in articles:
        lang = language(article["text"])
        title, templates = article["title"], ZH_QUESTIONS if lang == "zh" else EN_QUESTIONS
        for text in split_passages(article["text"])[:passages_per_article]:
            question = rng.choice(templates).format(t=title)
            if rng.random() < negative_share:
                other = rng.choice(articles)["title"]
                sources = [(h.title, h.text) for h in index.search(other, RAG_K) if h.title != title]
                answer = NOT_IN_SOURCES[lang].format(t=title)
            else:
                answer = opening_sentence(text)
                if len(answer) < 20:
                    continue
                sources = [(title, text)] + [(h.title, h.text) for h in index.search(question, RAG_K)
                                             if h.text != text][:RAG_K - 1]
            if not sources:
                continue
            _, kept, used = fit_grounded(tok, [Message("user", question)], sources, room, block_size - 1)
            if answer != NOT_IN_SOURCES[lang].format(t=title) and not (used and answer in used[0][1]):
                continue
            yield [kept[-1], Message("assistant", answer)]


# ----------------------------------------------------------------------------------------
# The benchmark

def answer_all(model, tok: Tokenizer, prompts: list[list[int]], max_new_tokens: int,
               copy_from: list | None = None, copy: float = 0.0) -> list[str]:
    """Greedy answers for many prompts at once, batched by the serving engine (copying from
    each prompt's passages with weight `copy`, when given)."""
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, copy=copy)
    replies = generate_batch(model, tok, prompts, max_new_tokens, params, copy_from=copy_from)
    return [tok.decode([t for t in ids if t != tok.end_of_turn]).strip() for ids in replies]


def evaluate_qa(model, tok: Tokenizer, folder, index: Index, per_article: int = 3, seed: int = 0,
             max_items: int | None = None) -> dict:
    """Held-out QA on the val articles: retrieval recall and answer quality with/without it."""
    items = qa_items(folder, "val", per_article, seed)[:max_items]
    block = model.cfg.block_size
    room = prompt_room(block, REPLY_TOKENS)
    plain, grounded, sources, found1, found5 = [], [], [], 0, 0
    for item in items:
        hits = index.search(item.question, 5)
        titles = [h.title for h in hits]
        found1 += titles[:1] == [item.title]
        found5 += item.title in titles
        question = [Message("user", item.question)]
        plain.append(fit_history(tok, question, room, block - 1)[0])
        ids, _, used = fit_grounded(tok, question, [(h.title, h.text) for h in hits[:RAG_K]], room, block - 1)
        grounded.append(ids)
        sources.append(CopySource.from_passages(tok, used))
    report = {"questions": len(items), "articles": len({i.title for i in items}),
              "recall@1": found1 / max(len(items), 1), "recall@5": found5 / max(len(items), 1)}
    for name, prompts, copy in (("without retrieval", plain, 0.0), ("with retrieval", grounded, 0.0),
                                (COPYING, grounded, RAG_COPY)):
        answers = answer_all(model, tok, prompts, REPLY_TOKENS, sources if copy else None, copy)
        report[name] = {
            "f1": sum(token_f1(a, i.answer) for a, i in zip(answers, items)) / max(len(items), 1),
            "rouge_l": sum(rouge_l(a, i.answer) for a, i in zip(answers, items)) / max(len(items), 1),
            "examples": [{"question": i.question, "answer": a, "reference": i.answer}
                         for a, i in list(zip(answers, items))[:3]]}
    return report


def format_report(r: dict) -> str:
    lines = [f"held-out Wikipedia QA ({r['questions']} questions about {r['articles']} val articles, "
             f"never trained on): retrieval recall@1 {r['recall@1']:.2f}, recall@5 {r['recall@5']:.2f}",
             f"  {'':30s} {'token F1':>9s} {'ROUGE-L':>8s}"]
    for name in ("without retrieval", "with retrieval", COPYING):
        lines.append(f"  {name:30s} {r[name]['f1']:9.3f} {r[name]['rouge_l']:8.3f}")
    base = r["without retrieval"]["f1"]
    for name in ("with retrieval", COPYING):
        lines.append(f"  answer F1 {name}: x{r[name]['f1'] / base:.1f} the figure without"
                     if base > 0 else "  (no overlap at all without retrieval)")
    return "\n".join(lines)
