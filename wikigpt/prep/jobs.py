"""
Pass 1 of prepare_wiki.py, the part that runs in the worker processes: a job of pages -> each
page cleaned (a Kept article or the reason it was dropped), the kept lines as one gzip member,
and the redirects. A job is ("pages", RawPages, options) from a one-stream reader in the main
process, or ("range", path, start, end, ...) of a multistream or plain XML dump, which the worker
reads, decompresses and parses itself, in bounded pieces (dumps.py, pagecap.py).
"""
import gzip
import hashlib
import json
from functools import partial
from typing import NamedTuple

import mwparserfromhell  # noqa: F401  imported here, before any page's time bound starts in a worker
import numpy as np

from wikigpt.prep.data import ARTICLES_GZIP
from wikigpt.prep.dumps import reader_for
from wikigpt.prep.ranges import parse_pages, range_plan
from wikigpt.prep.facts import article_knowledge
from wikigpt.prep.pagecap import PageBatches, RangeXml
from wikigpt.prep.wikitext import CleanSettings, clean_wikitext, finish_article, link_target
from wikigpt.prep.workers import page_ends, page_starts

# pages skipped for what they are, not for what they say: the warning names them, so their
# result is "reason<TAB>title" (a title holds no tab: MediaWiki forbids control characters)
NAMED_SKIPS = ("too_large", "timeout", "crashed")


class Kept(NamedTuple):
    """A cleaned article as a worker hands it to the main process, which only decides whether
    it stays (a duplicate, or one past --max_articles, does not)."""
    digest: bytes
    title_digest: bytes  # the first article of a title is kept, a later one of that title is not
    split: str
    u: float  # the split hash, in [0, 1)
    size: int  # bytes of its line in the job's gzip member (the text itself stays in the member)
    knowledge: bytes  # its line of the knowledge part: facts, links, sections (JSON)


class JobOptions(NamedTuple):
    settings: CleanSettings
    seed: int
    val_fraction: float


class Cleaned:
    """One job's output, page by page: a result per page, the kept lines, the redirects. Workers
    compress: zlib in the main process was the ceiling on scaling with workers."""

    def __init__(self):
        self.results, self.lines, self.redirects = [], [], []

    def add(self, pages: list, opts: JobOptions):
        for page in pages:
            if page.skip:
                if page.info.get("redirect"):  # a redirect is an alias of its target
                    self.redirects.append(json.dumps({"redirect": page.title, "target": link_target(
                        page.info["redirect"])}, ensure_ascii=False) + "\n")
                self.results.append(f"{page.skip}\t{page.title}" if page.skip in NAMED_SKIPS else page.skip)
            elif skip := page_starts():  # its cleaning ran out of time, or crashed, in an earlier try
                self.results.append(f"{skip}\t{page.title}")
            else:
                self.results.append(self._clean(page, opts))
                page_ends()

    def _clean(self, page, opts: JobOptions):
        found = {}  # what the knowledge graph reads on the way: links, headings
        try:
            if page.markup == "wikitext":
                article, reason = clean_wikitext(page.title, page.text, opts.settings, found)
            else:  # already plain text (pre-extracted sources)
                article, reason = finish_article(page.title, page.text, opts.settings)
        except Exception:  # a pathological page must not stop a 20 GB run; it is counted
            article, reason = None, "parse_error"
        if article is None:
            return reason
        title, text = article
        try:
            known = article_knowledge(page.text, text, found) if page.markup == "wikitext" else {}
        except Exception:  # the article stays; only its share of the knowledge graph is lost
            known = {}
        split, u = split_of(title, opts.seed, opts.val_fraction)
        line = json.dumps({"title": title, "split": split, "text": text, **page.info}, ensure_ascii=False)
        self.lines.append((line + "\n").encode())
        known = json.dumps({"title": title, **known}, ensure_ascii=False) + "\n"
        return Kept(digest(text), digest(title), split, u, len(self.lines[-1]), known.encode())

    def packed(self) -> tuple[list, bytes, bytes]:
        return self.results, gzip_member(self.lines), "".join(self.redirects).encode()


def clean_pages(pages: list, opts: JobOptions) -> tuple[list, bytes, bytes]:
    """RawPages -> (one Kept or drop reason each, the Kept lines as one gzip member, the
    redirects as knowledge lines)."""
    cleaned = Cleaned()
    cleaned.add(pages, opts)
    return cleaned.packed()


def gzip_member(lines: list) -> bytes:
    """Lines -> one gzip member (members concatenate into one valid .gz), compressed as
    data.open_articles_for_writing compresses, so the same articles give the same bytes."""
    return gzip.compress(b"".join(lines), **ARTICLES_GZIP) if lines else b""


def _where(path, start, end, compressed, skip, offset) -> str:
    """Names a place in a range's XML for an error message."""
    if compressed:
        return f"{path}: in the bz2 streams at bytes {start}-{end}, byte {skip + offset} of their XML"
    return f"{path}: at byte {start + skip + offset}"


def clean_job(job):
    """Worker: ("pages", pages, opts) or ("range", path, start, end, compressed, url_prefix, opts)
    -> (clean_pages' results, gzip member and redirects, stitch): stitch = (head, has_body, tail,
    truncated) of a range, for ranges.Stitcher. A range is parsed and cleaned a batch of pages at
    a time as it is decompressed, so no more than a batch of it is ever held."""
    if job[0] == "pages":
        return clean_pages(job[1], job[2]), None
    _, path, start, end, compressed, url_prefix, opts = job
    xml, batches, cleaned = RangeXml(path, start, end, compressed), PageBatches(), Cleaned()

    def clean(batch):
        body, at = batch
        where = partial(_where, path, start, end, compressed, len(batches.head) + at)
        cleaned.add(parse_pages(body, url_prefix, where), opts)

    for piece in xml:
        for batch in batches.feed(piece):
            clean(batch)
    last, head, has_body, tail = batches.close()
    if last:
        clean(last)
    return cleaned.packed(), (head, has_body, tail, xml.truncated)


def split_of(title: str, seed: int, val_fraction: float) -> tuple[str, float]:
    """Deterministic train/val assignment by article title (same title -> same split)."""
    h = hashlib.blake2b(f"{seed}:{title}".encode(), digest_size=8).digest()
    u = int.from_bytes(h, "big") / 2**64
    return ("val" if u < val_fraction else "train"), u


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=12).digest()


class Seen:
    """The digests of the articles kept so far (their texts, or their titles), 8 bytes each:
    a sorted array, and a set of the newest merged into it every MERGE_EVERY. A Python set of
    the digests took ~80 B an entry (the bytes objects and the set's slots): ~1 GB for enwiki's
    ~6.5 M articles' texts and titles, now ~0.1 GB. Two different texts share their first 8 bytes with odds ~1e-6 over a whole dump
    (the later one would be counted a duplicate)."""
    MERGE_EVERY = 65_536  # a merge copies the array (~50 MB at enwiki's size): ~100 merges a dump

    def __init__(self):
        self.sorted, self.newest = np.empty(0, dtype=np.uint64), set()

    @staticmethod
    def key(d: bytes) -> int:
        return int.from_bytes(d[:8], "little")

    def __contains__(self, d: bytes) -> bool:
        k = self.key(d)
        i = int(np.searchsorted(self.sorted, np.uint64(k)))
        return k in self.newest or (i < len(self.sorted) and int(self.sorted[i]) == k)

    def add(self, d: bytes):
        self.newest.add(self.key(d))
        if len(self.newest) >= self.MERGE_EVERY:
            self.merge()

    def merge(self):
        new = np.sort(np.fromiter(self.newest, dtype=np.uint64, count=len(self.newest)))
        self.sorted = np.insert(self.sorted, np.searchsorted(self.sorted, new), new)  # one copy, no sort
        self.newest = set()


def batched(items, max_items: int, max_chars: int = 4_000_000):
    batch, chars = [], 0
    for item in items:
        batch.append(item)
        chars += len(item[1])
        if len(batch) >= max_items or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def source_jobs(files, opts: JobOptions, progress, metas):
    """Every job of pass 1 in order, the same for any number of workers; a job's (file, end
    position, source bytes, range plan) goes into metas as it is handed out."""
    base = 0
    for f in files:
        progress.file_base = base
        plan = range_plan(f)
        if plan:
            for start, end in plan.ranges():
                metas.append((base + end, end - start, plan, end == f.stat().st_size))
                yield ("range", f, start, end, plan.compressed, plan.url_prefix, opts)
        else:
            last = 0
            for batch in batched(reader_for(f)(f, progress), 32):
                here = progress.bar.n - base
                metas.append((base + here, here - last, None, False))
                last = here
                yield ("pages", batch, opts)
        base += f.stat().st_size
