"""
Retrieval over the Wikipedia corpus: a BM25 index of passages (tantivy), built from the articles
that prepare_wiki.py keeps in the dataset folder (never from the dump again), served from disk.

    python retrieve.py --data data/demo --build               # writes data/demo/index/
    python retrieve.py --data data/demo "Who was Aristotle?"   # the top passages, titles, scores

    index = Index.open("data/demo")
    index.search("Aristotle", k=3)    # -> [Passage(title, text, url, score), ...]
    index.passage(i)                  # passage i, read from disk
    index.idf("aristotl")             # what the evidence reader weighs a question's terms by

This is the whole interface the reader uses (search k passages for terms with boosts, fetch
passages by id, idf): docs/chat.md says how a distributed engine would take its place.
Terms are ours (analysis.py), the on-disk format and the build index_build.py's. Ranking:

    score(passage) = BM25(query terms | passage's text terms + its title's terms)
                   + TITLE_BOOST * BM25(query terms | article titles)   on an article's lead passage
    boost=[articles]: those articles' passages first, above every other passage

Nothing is loaded at open beyond tantivy's segment metadata: postings, lead ids and passage
text are read through mmap and SQLite's page cache, so the resident set stays small at any
corpus size (~160 MB serving 0.8 M passages, ~280 MB at 3.9 M: docs/measured.md).
"""
import json
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tantivy

from wikigpt.cli import UsageError
from wikigpt.knowledge.analysis import CJK_FOLDED, PASSAGE_CHARS, query_terms, split_passages, terms  # noqa: F401 (re-exported)
from wikigpt.knowledge.index_build import (INDEX_DIR, INDEX_VERSION, INFO, LEADS, SQLITE,  # noqa: F401
                                           add_index_info, articles_fingerprint, build_index)
from wikigpt.knowledge.sentences import CJK  # noqa: F401 (re-exported)
from wikigpt.prep.data import ARTICLES, DatasetError, read_articles

TITLE_BOOST = 2.0  # weight of the title match on lead passages: at 1.0 a body passage that
# repeats the topic word 5 times still beat the lead for "Tell me about Achilles"
LINK_BOOST = 1.0  # added to a named entity's passages, above the best score: they come first
TITLE_CANDIDATES = 100  # articles whose title score reaches their lead passage in a search
TIE_SLACK = 16  # hits beyond k fetched, to order equal scores by passage number
IDF_CACHE = 100_000  # terms whose idf is remembered (~10 MB); a lookup is one term-dictionary seek
# a query's distinct terms searched, its rarest: a search reads every posting of every term, so
# its cost is set by the terms a client sends (2,000 common words: minutes on enwiki's ~60 M
# passages); questions have ~5-15 (the longest hand-written one, bench/natural_qa, 17)
MAX_QUERY_TERMS = 32


@dataclass
class Passage:
    title: str
    text: str
    url: str = ""
    score: float = 0.0


class Passages(Sequence):
    """index.passages[i] -> {"title", "text", "url"}, read from disk when asked for."""

    def __init__(self, index: "Index"):
        self.index = index

    def __len__(self) -> int:
        return self.index.n_passages

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        p = self.index.passage(int(i))
        return {"title": p.title, "text": p.text, "url": p.url}


def _check(folder: Path) -> dict:
    """The index's info, or a one-paragraph error that says how to (re)build it."""
    path = folder / INDEX_DIR
    build = f"python retrieve.py --data {folder} --build"
    if not (folder / ARTICLES).is_file():
        next(read_articles(folder))  # raises the "no kept articles, rebuild" error
    if not (path / INFO).is_file():
        raise DatasetError(f"{folder} has no retrieval index yet. Build it: {build}")
    try:
        info = json.loads((path / INFO).read_text(encoding="utf-8"))
    except ValueError as e:  # cut short, or edited by hand (a threshold, say)
        raise DatasetError(f"{path / INFO} is not valid JSON ({e}). Rebuild the index: {build}")
    if not isinstance(info, dict):
        raise DatasetError(f"{path / INFO} is not the index's info (a JSON object). Rebuild the index: {build}")
    if info.get("version") != INDEX_VERSION:
        raise DatasetError(f"{path} is an index of format {info.get('version')} (1: bm25s, in memory); this "
                           f"code reads format {INDEX_VERSION} (tantivy, served from disk). Rebuild it: {build}")
    if info.get("articles_fingerprint") != articles_fingerprint(folder):
        raise DatasetError(f"{path} was built from other articles than {folder / ARTICLES} "
                           f"(the dataset was rebuilt, or the index copied from elsewhere). Build it: {build}")
    return info


class Index:
    """An opened index: search(query, k) -> passages, best first (see the module doc)."""

    def __init__(self, path: Path, info: dict, folder=None):
        self.path, self.info, self.folder = path, info, folder
        pix, tix = tantivy.Index.open(str(path / "passages")), tantivy.Index.open(str(path / "titles"))
        for ix in (pix, tix):
            ix.config_reader("manual")  # a finished index never changes: no watcher thread
        self.schema, self.title_schema = pix.schema, tix.schema
        self._ps, self._ts = pix.searcher(), tix.searcher()
        n = info["articles"]
        self.lead_ids = np.memmap(path / LEADS, dtype="<i8", mode="r", shape=(n,)) if n else np.zeros(0, np.int64)
        self.n_passages = int(self._ps.num_docs)
        # immutable: no locks, no journal; a server's prompt thread reads it (check_same_thread)
        self._db = sqlite3.connect(f"{(path / SQLITE).resolve().as_uri()}?mode=ro&immutable=1", uri=True,
                                   check_same_thread=False)
        self._idf = {}
        self.passages = Passages(self)
        self.reader = None  # the evidence reader over it, made on first use (grounding.reader_of)

    @classmethod
    def open(cls, folder) -> "Index":
        """The index of a dataset folder; a part of it missing, emptied or cut short (a copy that
        stopped, a disk that filled) is one error that says how to rebuild it."""
        folder = Path(folder)
        info = _check(folder)
        try:
            index = cls(folder / INDEX_DIR, info, folder)
            index.passage(0), index.passage(index.n_passages - 1)  # SQLite's first and last pages are there
        except (OSError, ValueError, IndexError, TypeError, sqlite3.DatabaseError) as e:  # tantivy's: ValueError
            raise DatasetError(f"{folder / INDEX_DIR} is damaged ({str(e)[:200]}). Rebuild it: python retrieve.py "
                               f"--data {folder} --build")
        return index

    def article_passages(self, article: int) -> range:
        """The passage numbers of the article-th article (in the order of the kept articles)."""
        end = int(self.lead_ids[article + 1]) if article + 1 < len(self.lead_ids) else self.n_passages
        return range(int(self.lead_ids[article]), end)

    def passage(self, i: int, score: float = 0.0) -> Passage:
        """Passage i (0 <= i < number of passages), from disk."""
        if not 0 <= i < self.n_passages:
            raise IndexError(f"passage {i} of {self.n_passages}")
        title, url, text = self._db.execute(
            "SELECT a.title, a.url, p.text FROM passages p JOIN articles a ON a.id = p.article WHERE p.id = ?",
            (i,)).fetchone()
        return Passage(title, text, url, score)

    def doc_freq(self, term: str) -> int:
        """How many passages hold the term."""
        return self._ps.doc_freq("terms", term)

    def idf(self, term: str) -> float:
        """ln(1 + (N - df + 0.5) / (df + 0.5)), N passages, df of them with the term: BM25's idf
        (bm25s and tantivy alike), which the evidence reader weighs a question's terms by.
        Remembered for at most IDF_CACHE terms: a server meets every word its clients send."""
        v = self._idf.get(term)
        if v is None:
            df = self.doc_freq(term)
            v = float(np.log1p((self.n_passages - df + 0.5) / (df + 0.5)))
            if len(self._idf) >= IDF_CACHE:
                self._idf.clear()  # start again: cheaper than an LRU's bookkeeping, and as bounded
            self._idf[term] = v
        return v

    def titles_near(self, term: str, n: int = 5) -> list[int]:
        """The articles (numbers) whose title has a term one edit from `term` ("afganistan" ->
        Afghanistan): tantivy walks its term dictionary with a Levenshtein automaton, no scan."""
        query = tantivy.Query.fuzzy_term_query(self.title_schema, "terms", term, distance=1)
        hits = self._ts.search(query, n, count=False).hits
        return [int(a) for a in self._ts.fast_field_values("article", [a for _, a in hits])] if hits else []

    def titles_with(self, words: list[str], n: int = 20) -> list[int]:
        """The articles (numbers) whose title holds every one of these terms, the shortest titles
        first (BM25's length norm): "Economy of Angola" for ["angola"]."""
        T = tantivy.Query
        if not words:
            return []
        query = T.boolean_query([(tantivy.Occur.Must, T.term_query(self.title_schema, "terms", t)) for t in words])
        hits = self._ts.search(query, n, count=False).hits
        return [int(a) for a in self._ts.fast_field_values("article", [a for _, a in hits])] if hits else []

    def weighed_terms(self, q: list[str]) -> dict[str, int]:
        """{term: how often the query says it} for its MAX_QUERY_TERMS rarest distinct terms."""
        counts = Counter(q)
        if len(counts) > MAX_QUERY_TERMS:
            kept = set(sorted(counts, key=lambda t: -self.idf(t))[:MAX_QUERY_TERMS])  # stable: ties in query order
            counts = {t: n for t, n in counts.items() if t in kept}
        return counts

    def _text_query(self, q: list[str]):
        """BM25 of the query's terms on the passages (a repeated term counts again, as it did in
        bm25s: its clause weighs its count), plus the leads of the TITLE_CANDIDATES best titles as
        constant-score clauses worth TITLE_BOOST x their title's BM25: one tantivy query ranks
        text and title together."""
        T, Should = tantivy.Query, tantivy.Occur.Should

        def term(schema, t, n):
            clause = T.term_query(schema, "terms", t, index_option="freq")
            return (Should, clause if n == 1 else T.boost_query(clause, float(n)))
        counts = self.weighed_terms(q)
        clauses = [term(self.schema, t, n) for t, n in counts.items()]
        titles = T.boolean_query([term(self.title_schema, t, n) for t, n in counts.items()])
        hits = self._ts.search(titles, TITLE_CANDIDATES, count=False).hits
        articles = self._ts.fast_field_values("article", [a for _, a in hits]) if hits else []
        for (score, _), article in zip(hits, articles):
            lead = T.term_query(self.schema, "pid", int(self.lead_ids[article]))
            clauses.append((Should, T.const_score_query(lead, TITLE_BOOST * score)))
        return T.boolean_query(clauses)

    def _hits(self, query, k: int) -> list[tuple[float, int]]:
        """The k best (score, passage number), equal scores in passage order. tantivy orders ties
        by segment and document, which depend on how the build's threads cut segments; sorting
        the k + TIE_SLACK best again makes results the same from build to build."""
        hits = self._ps.search(query, k + TIE_SLACK, count=False).hits
        pids = self._ps.fast_field_values("pid", [a for _, a in hits]) if hits else []
        return sorted(((score, int(pid)) for (score, _), pid in zip(hits, pids)), key=lambda h: (-h[0], h[1]))[:k]

    def _linked(self, main, found: list, k: int, boost: list[int]) -> list[tuple[float, int]]:
        """The boosted articles' best passages first (LINK_BOOST above the best score), then the
        rest. `found`: the main query's best 2k: fewer than k of them can be the articles' own
        when the articles have fewer than k passages, the only case that needs the rest."""
        T, Occur = tantivy.Query, tantivy.Occur
        span = sorted({p for a in dict.fromkeys(boost) for p in self.article_passages(int(a))})
        top = found[0][0] if found else 0.0
        only = T.boost_query(T.term_set_query(self.schema, "pid", span), 0.0)  # a filter: scores nothing
        linked = T.boolean_query([(Occur.Must, only)] + ([(Occur.Should, main)] if main else []))
        first = sorted(((s + LINK_BOOST + top, pid) for s, pid in self._hits(linked, k)), key=lambda h: (-h[0], h[1]))
        inside = set(span)
        return (first + [h for h in found if h[1] not in inside])[:k]

    def search(self, query: str, k: int = 3, boost: list[int] = ()) -> list[Passage]:
        """The k best passages for a query (fewer if fewer share a term with it); the passages
        of the articles in `boost` (the entities a question names) rank above all others."""
        q = query_terms(query, fold=self.info.get("cjk") == CJK_FOLDED)  # an older index: as written
        if (not q and not boost) or k < 1:
            return []
        main = self._text_query(q) if q else None
        found = self._hits(main, 2 * k if boost else k) if main else []  # the main query runs once
        if boost:
            found = self._linked(main, found, k, boost)
        return [self.passage(pid, score) for score, pid in found]


def open_index(given: str, k: int, trained_on: str = "") -> Index:
    """The index for a tool's --rag option: the --data folder `given`, else the dataset the
    checkpoint was trained on (`trained_on`, as the training run wrote it), with the tool-level checks."""
    if k < 1:
        raise UsageError(f"--rag_k must be at least 1, got {k}")
    if not given and not trained_on:
        raise UsageError("--rag needs the dataset folder with the index: pass --data DATA_FOLDER.")
    if not given and not Path(trained_on).is_dir():  # a relative path, from where training ran
        raise UsageError(f"--rag: the checkpoint was trained on {trained_on}, which is not a folder here: "
                         "pass --data DATA_FOLDER (that dataset, with its index).")
    return Index.open(given or trained_on)
