"""
Retrieval over the Wikipedia corpus: a BM25 index of passages, built from the articles that
prepare_wiki.py keeps in the dataset folder (never from the dump again).

    python retrieve.py --data data/demo --build               # writes data/demo/index/
    python retrieve.py --data data/demo "Who was Aristotle?"   # the top passages, titles, scores
    python retrieve.py --data data/zh --k 5 "亚里士多德是谁？"

    index = Index.open("data/demo")
    index.search("Aristotle", k=3)   # -> [Passage(title, text, url, score), ...]

Articles are cut into paragraph-sized passages that carry their article's title. Terms are
language-aware: Latin-script words are lowercased, stripped of English stopwords and stemmed
(Snowball); Chinese/Japanese/Korean text, which has no spaces, becomes characters plus
character bigrams ("亚里士多德" -> 亚 里 士 多 德 亚里 里士 士多 多德), so zhwiki works like enwiki.
bm25s scores with sparse matrices and memory-maps the saved index and passages.
"""
import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from wikigpt.cli import UsageError, progress_bar
from wikigpt.prep.data import ARTICLES, DatasetError, read_articles
from wikigpt.run.durable import fsync_tree, replace_durably, write_text
from wikigpt.knowledge.sentences import CJK

INDEX_DIR = "index"
INDEX_VERSION = 1
TITLE_BOOST = 2.0  # weight of the title match on lead passages: at 1.0 a body passage that
# repeats the topic word 5 times still beat the lead for "Tell me about Achilles"
LINK_BOOST = 1.0  # added to a named entity's passages, above the best score: they come first
QUERY_FILLER = {"tell", "know", "explain", "describe", "pleas", "give", "talk", "inform"}  # stemmed
PASSAGE_CHARS = 500  # ~120 tokens of an 8k BPE: two or three fit a 256-token context with a question
TERM = re.compile(rf"[{CJK}]+|[^\W_{CJK}]+")  # a run of CJK characters, or a word of anything else
SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")


@dataclass
class Passage:
    title: str
    text: str
    url: str = ""
    score: float = 0.0


# ----------------------------------------------------------------------------------------
# Passages and terms

def split_passages(text: str, max_chars: int = PASSAGE_CHARS) -> list[str]:
    """Article text -> passages of at most max_chars: whole paragraphs where they fit (short
    ones, such as headings, join the next), long paragraphs cut at sentence ends, and a
    sentence longer than max_chars cut at max_chars (str slicing never splits a character)."""
    pieces = []
    for para in (p.strip() for p in text.split("\n")):
        if len(para) <= max_chars:
            pieces.append(para) if para else None
            continue
        sentence_run = ""
        for sentence in SENTENCE_END.split(para):
            while len(sentence) > max_chars:
                pieces.append(sentence[:max_chars])
                sentence = sentence[max_chars:]
            if len(sentence_run) + len(sentence) + 1 > max_chars and sentence_run:
                pieces.append(sentence_run)
                sentence_run = ""
            sentence_run = f"{sentence_run} {sentence}".strip()
        if sentence_run:
            pieces.append(sentence_run)
    passages, current = [], ""
    for piece in pieces:  # join neighbours while they fit
        if current and len(current) + 1 + len(piece) > max_chars:
            passages.append(current)
            current = ""
        current = f"{current}\n{piece}" if current else piece
    if current:
        passages.append(current)
    return passages


@lru_cache(maxsize=1)
def _stemmer_and_stopwords():
    import Stemmer
    from bm25s.stopwords import STOPWORDS_EN

    return Stemmer.Stemmer("english"), frozenset(STOPWORDS_EN)


def terms(text: str) -> list[str]:
    """The index terms of a text (see the module doc)."""
    stemmer, stopwords = _stemmer_and_stopwords()
    out, words = [], []
    for run in TERM.findall(text.lower()):
        if re.match(rf"[{CJK}]", run):
            out += list(run) + [a + b for a, b in zip(run, run[1:])]
        elif run not in stopwords:
            words.append(run)
    return out + stemmer.stemWords(words)  # order does not matter to BM25


def query_terms(query: str) -> list[str]:
    """A question's terms, without the words every question has ("tell me about ...")."""
    return [t for t in terms(query) if t not in QUERY_FILLER]


# ----------------------------------------------------------------------------------------
# Building and opening the index

def articles_fingerprint(folder: Path) -> str:
    """Identifies the kept articles an index was built from: size plus the first and last MiB
    (reading all of a 20 GB corpus to check an index would take minutes)."""
    path = folder / ARTICLES
    size = path.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=12)
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()


def build_index(folder, max_chars: int = PASSAGE_CHARS, quiet=False) -> dict:
    """Index every kept article of a dataset folder (train and val: the index is the model's
    library, not its training data) into folder/index/, atomically."""
    import bm25s

    folder = Path(folder)
    t0 = time.time()
    passages, corpus_terms, n_articles = [], [], 0
    lead_ids, title_terms_of_articles = [], []  # each article's first passage, and its title's terms
    for article in progress_bar(read_articles(folder), desc="passages", unit=" articles", disable=quiet):
        n_articles += 1
        title_terms = terms(article["title"])
        lead_ids.append(len(passages))
        title_terms_of_articles.append(title_terms)
        for text in split_passages(article["text"], max_chars):
            passages.append({"title": article["title"], "text": text, "url": article.get("url", "")})
            corpus_terms.append(terms(text) + title_terms)  # every passage says what it is about
    if not passages:
        raise DatasetError(f"{folder}: the kept articles hold no text to index.")
    t_terms = time.time() - t0
    retriever, titles = bm25s.BM25(), bm25s.BM25()
    retriever.index(corpus_terms, show_progress=False)
    titles.index(title_terms_of_articles, show_progress=False)
    seconds = time.time() - t0
    tmp, final = folder / (INDEX_DIR + ".tmp"), folder / INDEX_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    retriever.save(str(tmp), corpus=passages, show_progress=False)
    titles.save(str(tmp / "titles"), show_progress=False)
    np.save(tmp / "lead_ids.npy", np.array(lead_ids, dtype=np.int64))
    info = {"version": INDEX_VERSION, "articles_fingerprint": articles_fingerprint(folder),
            "articles": n_articles, "passages": len(passages), "passage_chars": max_chars,
            "seconds": round(seconds, 2), "terms_seconds": round(t_terms, 2),
            "passages_per_s": round(len(passages) / max(seconds, 1e-9))}
    (tmp / "wikigpt_index.json").write_text(json.dumps(info, indent=2))  # last: Index.open looks for it
    fsync_tree(tmp)  # the new index on disk before the old one goes
    shutil.rmtree(final, ignore_errors=True)
    replace_durably(tmp, final)
    return info


def add_index_info(folder, extra: dict) -> dict:
    """Store more about a built index (e.g. the "not found" threshold) in its info file."""
    path = Path(folder) / INDEX_DIR / "wikigpt_index.json"
    info = json.loads(path.read_text()) | extra
    write_text(path, json.dumps(info, indent=2))
    return info


class Index:
    """An opened index: search(query, k) -> passages, best first.

    Two BM25 indexes: one over passages, one over article titles. A passage's score is its
    text score, plus, for an article's lead passage, its title score: the lead defines the
    topic ("Aristotle was a Greek philosopher..."), so "What is X?" finds X's definition
    first, and "Tell me about Albania" does not rank a passage that merely says "tells"
    above the Albania article."""

    def __init__(self, retriever, titles, lead_ids, info: dict, folder=None):
        self.retriever, self.titles, self.lead_ids, self.info = retriever, titles, lead_ids, info
        self.passages, self.folder = retriever.corpus, folder
        self.reader = None  # the evidence reader over it, made on first use (grounding.reader_of)

    @classmethod
    def open(cls, folder) -> "Index":
        import bm25s

        folder = Path(folder)
        path = folder / INDEX_DIR
        build = f"Build it: python retrieve.py --data {folder} --build"
        if not (folder / ARTICLES).is_file():
            next(read_articles(folder))  # raises the "no kept articles, rebuild" error
        if not (path / "wikigpt_index.json").is_file():
            raise DatasetError(f"{folder} has no retrieval index yet. {build}")
        info = json.loads((path / "wikigpt_index.json").read_text())
        if info.get("version") != INDEX_VERSION:
            raise DatasetError(f"{path}: index format {info.get('version')}, this code reads "
                               f"{INDEX_VERSION}. {build}")
        if info.get("articles_fingerprint") != articles_fingerprint(folder):
            raise DatasetError(f"{path} was built from other articles than {folder / ARTICLES} "
                               f"(the dataset was rebuilt, or the index copied from elsewhere). {build}")
        retriever = bm25s.BM25.load(str(path), mmap=True, load_corpus=True, show_progress=False)
        titles = bm25s.BM25.load(str(path / "titles"), mmap=True, show_progress=False)
        return cls(retriever, titles, np.load(path / "lead_ids.npy", mmap_mode="r"), info, folder)

    def article_passages(self, article: int) -> range:
        """The passage numbers of the article-th article (in the order of the kept articles)."""
        end = int(self.lead_ids[article + 1]) if article + 1 < len(self.lead_ids) else len(self.passages)
        return range(int(self.lead_ids[article]), end)

    def search(self, query: str, k: int = 3, boost: list[int] = ()) -> list[Passage]:
        """The k best passages for a query (fewer if fewer share a term with it); the passages
        of the articles in `boost` (the entities a question names) rank above all others."""
        q = query_terms(query)
        in_text = [t for t in q if t in self.retriever.vocab_dict]
        if not in_text and not boost:
            return []
        scores = (self.retriever.get_scores(in_text) if in_text  # (n_passages,)
                  else np.zeros(len(self.passages), dtype=np.float32))
        top = float(scores.max())
        for article in boost:
            span = self.article_passages(article)
            scores[span.start:span.stop] += LINK_BOOST + top
        in_titles = [t for t in q if t in self.titles.vocab_dict]
        if in_titles:
            scores[self.lead_ids] += TITLE_BOOST * self.titles.get_scores(in_titles)  # (n_articles,) onto the leads
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Passage(p["title"], p["text"], p.get("url", ""), float(scores[i]))
                for i in top if scores[i] > 0 for p in [self.passages[int(i)]]]


def open_index(folder: str, k: int) -> Index:
    """The index for a tool's --rag option, with the tool-level checks."""
    if not folder:
        raise UsageError("--rag needs the dataset folder with the index: pass --data DATA_FOLDER.")
    if k < 1:
        raise UsageError(f"--rag_k must be at least 1, got {k}")
    return Index.open(folder)


def search(folder, query: str, k: int = 3) -> list[tuple[str, str, float]]:
    """One-call retrieval: [(title, passage, score)], best first."""
    return [(p.title, p.text, p.score) for p in Index.open(folder).search(query, k)]
