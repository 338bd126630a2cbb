"""
Building the retrieval index: the kept articles of a dataset folder stream into DATA/index/
(retrieval.py opens and searches it). The build's memory grows far slower than the corpus, but
it grows: peak RSS 0.26 GB at 78 k passages, 0.44 GB at 0.8 M, 0.59 GB at 3.9 M, about like the
log of the corpus, while tantivy merges ever larger segments (docs/measured.md; ~0.8 GB
extrapolated to enwiki).

    info = build_index("data/demo")   # -> {"articles", "passages", "seconds", ...}

The articles go, in chunks of ~1 MB of text, through worker processes (one per core, started
before the index's files are opened, and dying with the build) that cut them into passages and
terms (analysis.py), then into two tantivy writers (a bounded heap, one indexing thread per core)
and SQLite. Every COMMIT_PASSAGES passages everything is committed and progress.json written, so
a build that is killed continues from there when run again (the same articles and settings). It
is built in index.tmp/; its info file is written last, then it is fsynced and renamed to index/:
an interrupted build never leaves half an index where the reader looks, and one killed after
its info file was written is only published when run again. One build at a time: the dataset
folder is locked (wikigpt/run/lock.py) while a build, or an update of the info file, writes.

The format (INDEX_VERSION 2; 1 was bm25s's, in RAM):
    index/wikigpt_index.json   what was built from what (articles_fingerprint), counts, timings,
                               the generation (one more than the index it replaced), and what
                               retrieve.py adds (the "not found" threshold); written last
    index/passages/            tantivy: one document per passage, `terms` (our terms joined by
                               spaces, the "whitespace" tokenizer, term frequencies, not stored)
                               and `pid` (the passage number, indexed + fast)
    index/titles/              tantivy: one document per article, its title's terms; `article`
    index/lead_ids.i64         each article's first passage number, little-endian int64
    index/passages.sqlite      articles(id, title, url, first), passages(id, article, text)
Titles are an index of their own: tantivy's BM25 takes the average field length over all the
documents of an index, and a title field only on leads (1 passage in ~70) would get an average
of ~0.03 terms and scores ~30x too small. Passage text is in SQLite rather than tantivy's stored
fields: measured on 0.8 M passages, half the serving memory (158 vs 289 MB) and a third of the
time to fetch k passages (0.05 vs 0.16 ms), and any SQLite client reads it.
"""
import errno
import gzip
import hashlib
import json
import os
import re
import shutil
import sqlite3
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, suppress
from itertools import islice
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import tantivy

from wikigpt.cli import UsageError
from wikigpt.run.progress import progress_bar
from wikigpt.knowledge.analysis import CJK_FOLDED, PASSAGE_CHARS, analyse_terms, split_passages
from wikigpt.prep.data import ARTICLES, DatasetError, read_articles, read_json_object
from wikigpt.prep.workdir import publish
from wikigpt.prep.workers import worker_start
from wikigpt.run.cores import usable_cores
from wikigpt.run.durable import fsync_tree, write_text
from wikigpt.run.lock import Busy, folder_locked
from wikigpt.run.output_paths import output_path_problem

INDEX_DIR = "index"
INDEX_VERSION = 2  # 1: bm25s
INFO, PROGRESS, LEADS, SQLITE = "wikigpt_index.json", "progress.json", "lead_ids.i64", "passages.sqlite"
WRITER_HEAP = 256 << 20  # bytes, all indexing threads of the passage writer together: 64 MB took
# 2.5x as long at x100 of the demo (more, smaller segments to merge), 256 MB no more peak memory
TITLES_HEAP = 32 << 20  # the titles writer, one thread (tantivy wants >= 15 MB a thread)
COMMIT_PASSAGES = 250_000  # a checkpoint every this many passages (at an article's end): ~20 s of work
CHUNK_CHARS = 1 << 20  # articles go to the workers in chunks of about this much text
MALLOC_ARENAS = 2  # see _bounded_malloc
M_ARENA_MAX = -8  # glibc's mallopt parameter


def articles_fingerprint(folder: Path) -> str:
    """Identifies the kept articles an index was built from: size plus the first and last MiB
    (reading all of a 20 GB corpus to check an index would take minutes)."""
    path = Path(folder) / ARTICLES
    size = path.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=12)
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()


def add_index_info(folder, extra: dict) -> dict:
    """Store more about a built index (e.g. the "not found" threshold) in its info file."""
    path = Path(folder) / INDEX_DIR / INFO
    # locked: a build publishing meanwhile would replace the index these numbers were measured
    # on, and a read-modify-write interleaved with it could put them on the new one, or lose them
    with _dataset_locked(folder, "the numbers here were measured on the index it replaces; run this again "
                                 "once it has finished"):
        info = json.loads(path.read_text()) | extra
        write_text(path, json.dumps(info, indent=2))
    return info


@contextmanager
def _dataset_locked(folder, advice: str):
    """The dataset folder's lock, or a UsageError naming the build that holds it."""
    try:
        with folder_locked(folder):
            yield
    except Busy as e:
        raise UsageError(f"a build of {folder}'s index is running{e.by()}: {advice}. "
                         "(Nothing was changed.)") from None


def schemas():
    """(passages, titles) schemas. Terms arrive pre-analysed and joined by spaces, hence the
    "whitespace" tokenizer: tantivy's PreTokenizedString costs a Python object per term and
    fed 7x slower. BM25 needs term frequencies, not positions ("freq")."""
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("terms", tokenizer_name="whitespace", index_option="freq")
    sb.add_unsigned_field("pid", indexed=True, fast=True)  # indexed: a passage by id, and deletes on resume
    passages = sb.build()
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("terms", tokenizer_name="whitespace", index_option="freq")
    sb.add_unsigned_field("article", indexed=True, fast=True)
    return passages, sb.build()


def _bounded_malloc():
    """glibc, told to keep the build's memory flat, or None off glibc. tantivy's indexing and
    merging threads each get a malloc arena (up to 8 per core) and memory freed in one is not
    reused by the others: the resident set grew ~0.35 KB per passage (x100 of the demo: 100 ->
    370 MB) whatever the writer heap. Two arenas, and malloc_trim at every checkpoint, bound it."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)  # before tantivy's threads start
        return libc
    except (OSError, AttributeError):
        return None


# ----------------------------------------------------------------------------------------
# Articles -> (passages, terms), in worker processes

def analyse(chunk: list, max_chars: int) -> list:
    """Worker: [(title, url, text)] -> [(title, url, title terms, [(passage, its terms)])]; a
    passage's terms include its title's: every passage says what it is about."""
    out = []
    for title, url, text in chunk:
        title_terms = " ".join(analyse_terms(title))
        tail = " " + title_terms if title_terms else ""
        passages = [(p, " ".join(analyse_terms(p)) + tail) for p in split_passages(text, max_chars)]
        out.append((title, url, title_terms, passages))
    return out


def _chunks(articles, limit: int = CHUNK_CHARS):
    chunk, size = [], 0
    for a in articles:
        chunk.append((a["title"], a.get("url", ""), a["text"]))
        size += len(a["text"])
        if size >= limit:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _start_workers(workers: int) -> ProcessPoolExecutor | None:
    """The analysing processes, every one started now, before this process opens the index's
    files and tantivy starts its threads. A forked child holds every file open in its parent at
    the fork, tantivy's writer locks among them, as long as it lives; and a fork copies only the
    calling thread, so a lock held by another thread (malloc's) stays locked in the child."""
    if workers <= 1:
        return None
    pool = ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=worker_start,
                               initargs=(os.getpid(),))  # dies with the build, leaves Ctrl-C to it
    pool.submit(int).result()  # with fork, the executor starts all its processes at the first submit
    if len(pool._processes) != workers:  # one started later would be forked with the index open
        pool.shutdown()
        raise RuntimeError(f"the index build's {workers} worker processes did not all start at once")
    return pool


def _analysed(pool, chunks, max_chars: int, ahead: int):
    """analyse() over the chunks, in order, at most `ahead` chunks in flight (Pool.imap would
    read the whole corpus ahead into its queue: memory that grows with the corpus)."""
    if pool is None:
        yield from (analyse(chunk, max_chars) for chunk in chunks)
        return
    pending = deque()
    for chunk in chunks:
        pending.append(pool.submit(analyse, chunk, max_chars))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _articles_from(folder: Path, start: int):
    """The kept articles from the start-th on; those before are skipped unparsed (a resume)."""
    if start == 0:
        yield from read_articles(folder)
        return
    with gzip.open(folder / ARTICLES, "rt", encoding="utf-8") as f:
        for line in islice(f, start, None):
            yield json.loads(line)


# ----------------------------------------------------------------------------------------
# The writers

class _Store:
    """passages.sqlite while it is written."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA cache_size=-32768")  # 32 MiB; more spills to the file: memory stays flat
        self.db.execute("CREATE TABLE IF NOT EXISTS articles(id INTEGER PRIMARY KEY, title TEXT NOT NULL, "
                        "url TEXT NOT NULL, first INTEGER NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS passages(id INTEGER PRIMARY KEY, article INTEGER NOT NULL, "
                        "text TEXT NOT NULL)")

    def cut(self, articles: int, passages: int):
        """Drop what came after the last checkpoint (a crash may have come between the commits)."""
        self.db.execute("DELETE FROM articles WHERE id >= ?", (articles,))
        self.db.execute("DELETE FROM passages WHERE id >= ?", (passages,))
        self.db.commit()

    def add(self, article: int, title: str, url: str, first: int, texts: list):
        self.db.execute("INSERT INTO articles VALUES (?,?,?,?)", (article, title, url, first))
        self.db.executemany("INSERT INTO passages VALUES (?,?,?)", [(first + j, article, t) for j, t in enumerate(texts)])


class _Writers:
    """The tantivy writers, the SQLite store and the lead ids of one build, and its progress."""

    def __init__(self, tmp: Path, state: dict):
        self.tmp, self.state = tmp, state
        self.articles, self.passages = state["articles"], state["passages"]
        self.libc = _bounded_malloc()
        self.schema, self.title_schema = schemas()
        if self.articles:
            pix, tix = tantivy.Index.open(str(tmp / "passages")), tantivy.Index.open(str(tmp / "titles"))
        else:
            pix, tix = tantivy.Index(self.schema, str(tmp / "passages")), tantivy.Index(self.title_schema, str(tmp / "titles"))
        self.writer, self.twriter = pix.writer(WRITER_HEAP, usable_cores()), tix.writer(TITLES_HEAP, 1)
        self.store = _Store(tmp / SQLITE)
        self.leads, self.lead_buf = open(tmp / LEADS, "ab"), []
        if self.articles:
            self._cut()

    def _cut(self):
        """Resume: drop everything past the last checkpoint from every part."""
        Range, U = tantivy.Query.range_query, tantivy.FieldType.Unsigned
        self.writer.delete_documents_by_query(Range(self.schema, "pid", U, lower_bound=self.passages))
        self.twriter.delete_documents_by_query(Range(self.title_schema, "article", U, lower_bound=self.articles))
        self.writer.commit()
        self.twriter.commit()
        self.store.cut(self.articles, self.passages)
        self.leads.truncate(8 * self.articles)

    def add(self, title: str, url: str, title_terms: str, passages: list):
        doc = tantivy.Document()
        doc.add_text("terms", title_terms)
        doc.add_unsigned("article", self.articles)
        self.twriter.add_document(doc)
        for j, (_, text_terms) in enumerate(passages):
            doc = tantivy.Document()
            doc.add_text("terms", text_terms)
            doc.add_unsigned("pid", self.passages + j)
            self.writer.add_document(doc)
        self.store.add(self.articles, title, url, self.passages, [p for p, _ in passages])
        self.lead_buf.append(self.passages)
        self.articles += 1
        self.passages += len(passages)

    def checkpoint(self):
        """Everything so far on disk, then progress.json says so (in that order)."""
        self.store.db.commit()
        self.leads.write(np.array(self.lead_buf, dtype="<i8").tobytes())
        self.lead_buf.clear()
        self.leads.flush()
        os.fsync(self.leads.fileno())
        self.writer.commit()
        self.twriter.commit()
        self.state.update(articles=self.articles, passages=self.passages)
        write_text(self.tmp / PROGRESS, json.dumps(self.state))
        if self.libc is not None:
            self.libc.malloc_trim(0)  # the flushed segments' memory back to the system

    def close(self):
        try:
            self.writer.wait_merging_threads()
            self.twriter.wait_merging_threads()
        finally:  # the files too when a writer's thread failed
            self.leads.close()
            self.store.db.close()


# ----------------------------------------------------------------------------------------
# The build

def _generation(info: dict) -> int:
    g = info.get("generation", 0)  # indexes built before it had none
    return g if isinstance(g, int) else 0


def _start(tmp: Path, final: Path, folder: Path, max_chars: int) -> tuple[dict, bool]:
    """What index.tmp holds of a build of the same articles and settings: (its info file, True)
    when that build finished and only its publish is left, (progress.json, False) when it was
    interrupted; else a fresh index.tmp. A finished index.tmp must be newer than index/: publish
    swaps the two, so for a moment, until it is deleted, index.tmp holds the index it replaced."""
    same = {"version": INDEX_VERSION, "passage_chars": max_chars, "articles_fingerprint": articles_fingerprint(folder),
            "cjk": CJK_FOLDED}  # (a build an older version began read Chinese as written: begun again)
    info, progress = read_json_object(tmp / INFO), read_json_object(tmp / PROGRESS)
    if info and all(info.get(k) == v for k, v in same.items()):
        if _generation(info) > _generation(read_json_object(final / INFO)):
            return info, True
    elif progress and all(progress.get(k) == v for k, v in same.items()):
        return progress, False
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "passages").mkdir(parents=True)
    (tmp / "titles").mkdir()
    return same | {"articles": 0, "passages": 0}, False


# what a build writes in index/ (and index.tmp/): SQLite may leave its journal beside its file
OWN_ENTRIES = {INFO, PROGRESS, LEADS, SQLITE, "passages", "titles"} | {SQLITE + end for end in ("-journal", "-wal", "-shm")}
# what bm25s wrote for an index of format 1 (replaced whole by a rebuild, as its error says to)
FORMAT_1_ENTRIES = {"data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json",
                    "params.index.json", "nonoccurrence_array.index.npy", "corpus.jsonl", "corpus.mmindex.json",
                    "lead_ids.npy"}
WRITING = re.compile(rf"^(?:{re.escape(INFO)}|{re.escape(PROGRESS)})\.\d+-[0-9a-f]+\.tmp$")  # durable.replacing's, left by a kill


def not_ours(path: Path) -> str | None:
    """Why a build may not replace the folder at `path` (index/ or index.tmp/): it is no folder,
    or it holds entries no build writes (a user's files, a training run's out_dir), which the
    swap of publish() would delete with the old index."""
    if problem := output_path_problem(path, "the index folder"):
        return problem
    if os.path.lexists(path) and not path.is_dir():
        return f"{path} is a file, where retrieve.py --build writes the index's folder: move it away and run this again."
    own = OWN_ENTRIES | (FORMAT_1_ENTRIES if read_json_object(path / INFO).get("version") == 1 else set())
    foreign = sorted(p.name for p in path.iterdir() if p.name not in own and not WRITING.match(p.name)) \
        if path.is_dir() else []
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return (f"{path} holds {shown}, which retrieve.py --build did not write; a build replaces that folder "
                "whole. Move them out of it and run this again (nothing was changed).")
    return None


@contextmanager
def _full_disk_said(tmp: Path, final: Path):
    """A full disk, which SQLite ("database or disk is full") and tantivy ("No space left on device
    (os error 28)") say in errors of their own: one paragraph, not a traceback. What the build
    committed stays in index.tmp for the next run, and index/ is as it was (only publish swaps it)."""
    try:
        yield
    except (sqlite3.OperationalError, ValueError, OSError) as e:
        if getattr(e, "errno", None) != errno.ENOSPC and not re.search(r"disk is full|No space left", str(e)):
            raise
        raise UsageError(f"the disk is full: the index build could not write {tmp} ({e}). The index in {final} "
                         "was not changed. Free some space and run this again: the build continues from its "
                         "last checkpoint.") from None


def _publish(tmp: Path, final: Path):
    fsync_tree(tmp)  # the new index on disk before the old one goes
    publish(tmp, final)  # swapped in one step: a crash leaves the old index or the new, never none


def _feed(writers: _Writers, analysed, commit_every: int, bar):
    since = 0
    for chunk in analysed:
        for article in chunk:
            before = writers.passages
            writers.add(*article)
            since += writers.passages - before
            if since >= commit_every:
                writers.checkpoint()
                since = 0
        bar.update(len(chunk))
    writers.checkpoint()


def build_index(folder, max_chars: int = PASSAGE_CHARS, quiet=False, commit_every: int = COMMIT_PASSAGES,
                workers: int | None = None, stop_after: int | None = None, extra_info: dict | None = None) -> dict:
    """Index every kept article of a dataset folder (train and val: the index is the model's
    library, not its training data) into folder/index/, atomically, in memory that grows like
    the log of the corpus; an interrupted build resumes from its last checkpoint, a finished one
    killed before its publish is only published. stop_after: stop after that many
    articles, as a crash would (for tests). extra_info: written into the index's info with it."""
    folder = Path(folder)
    next(read_articles(folder), None)  # the "no such folder" / "no kept articles" errors
    with _dataset_locked(folder, "two builds would write the same index.tmp. Wait for it to finish, or "
                                 "stop it (a stopped build resumes when run again) and run this again"):
        return _build(folder, max_chars, quiet, commit_every, workers, stop_after, extra_info or {})


def _build(folder: Path, max_chars: int, quiet: bool, commit_every: int, workers: int | None,
           stop_after: int | None, extra_info: dict) -> dict:
    t0, c0 = time.time(), _cpu_seconds()
    tmp, final = folder / (INDEX_DIR + ".tmp"), folder / INDEX_DIR
    if problem := not_ours(final) or not_ours(tmp):
        raise UsageError(problem)
    state, finished = _start(tmp, final, folder, max_chars)
    if finished:  # killed after the build, before its publish (the fsync takes minutes at enwiki's size)
        if not quiet:
            print(f"the index in {tmp} was built whole: publishing it")
        _publish(tmp, final)
        return state
    resumed_after, resumed_passages = state["articles"], state["passages"]
    if resumed_after and not quiet:
        print(f"resuming the index build after {resumed_after:,} articles ({state['passages']:,} passages)")
    workers = usable_cores() if workers is None else workers
    pool = _start_workers(workers)  # before the writers: see there
    bar = progress_bar(desc="index", unit=" articles", disable=quiet, initial=resumed_after)
    try:
        with _full_disk_said(tmp, final):
            writers = _Writers(tmp, state)
            try:
                articles = islice(_articles_from(folder, resumed_after), stop_after)
                _feed(writers, _analysed(pool, _chunks(articles), max_chars, 2 * workers), commit_every, bar)
            except BaseException:
                with suppress(Exception):  # tantivy's threads, stopped by the same failure (a full disk, say),
                    writers.close()  # fail again as they end: "Worker thread failed", which would hide it
                raise
            writers.close()
    finally:
        bar.close()  # before any error message
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if stop_after is not None:
        return {"stopped_after": writers.articles, "passages": writers.passages}
    if writers.passages == 0:
        raise DatasetError(f"{folder}: the kept articles hold no text to index.")
    seconds = time.time() - t0
    info = {"version": INDEX_VERSION, "engine": f"tantivy {tantivy.__version__.split(',')[0].split()[-1]}",
            "articles_fingerprint": state["articles_fingerprint"], "cjk": CJK_FOLDED, "articles": writers.articles,
            "passages": writers.passages, "passage_chars": max_chars, "seconds": round(seconds, 2),
            "cpu_seconds": round(_cpu_seconds() - c0, 2), "resumed_after_articles": resumed_after,
            "passages_per_s": round((writers.passages - resumed_passages) / max(seconds, 1e-9)),
            "generation": _generation(read_json_object(final / INFO)) + 1} | extra_info  # newer than the one it replaces
    # The info file last (Index.open looks for it) and durably: it says index.tmp is whole (each
    # part was synced by its commit at the last checkpoint), so a crash from here on costs the
    # next run only the fsync and the publish. Then progress.json goes: the index does not need it.
    write_text(tmp / INFO, json.dumps(info, indent=2))
    (tmp / PROGRESS).unlink()
    _publish(tmp, final)
    return info


def _cpu_seconds() -> float:
    """This process and its finished workers: the build's CPU time on every core."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
