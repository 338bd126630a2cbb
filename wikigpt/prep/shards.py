"""
Pass 3 of prepare_wiki.py: the kept articles -> uint16 token shards, tokenized in worker
processes that read the articles file themselves, a few gzip members each, so the main process
only writes shards (reading and sending the text from it scaled 1.6x on 2 workers, this 1.8x).
Also pass 1's progress bar (both passes run on workers.py's ordered map).
"""
import gzip
import json
import time
import zlib
from pathlib import Path

import numpy as np

from wikigpt.run.progress import progress_bar
from wikigpt.prep.data import ARTICLES, ShardFile, read_articles
from wikigpt.prep.errors import WikiError
from wikigpt.prep.workers import ordered_map, worker_pool
from wikigpt.tokenizer import Tokenizer


class Progress:
    """A bytes-of-source progress bar (so the bar shows MB/s) with pages/s and articles kept."""

    def __init__(self, total_bytes: int):
        self.bar = progress_bar(total=total_bytes, unit="B", unit_scale=True, desc="clean", smoothing=0.1)
        self.file_base = 0  # bytes of the files before the one being read
        self.pages = self.articles = 0  # read (articles: pages that are not redirects etc.)
        self.t0 = time.time()

    def at(self, pos: int):  # a one-stream reader's position in its file
        self.to(self.file_base + pos)

    def to(self, done: int):
        if done > self.bar.n:
            self.bar.n = done
            self.bar.update(0)  # redraws at most every 0.1 s

    def count(self, results: list, kept: int):
        self.pages += len(results)
        self.articles += sum(r not in ("redirect", "not_article") for r in results)
        rate = self.pages / max(time.time() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{rate:,.0f} pages/s, {kept:,} articles kept", refresh=False)


def document(row: dict) -> str:
    """A kept article as the model sees it: the title opens the document (it says what it is
    about), then the text."""
    return f"{row['title']}\n\n{row['text']}"


UNREADABLE = (OSError, EOFError, zlib.error, ValueError)  # a damaged gzip or JSON line (BadGzipFile: OSError)


def iter_articles(work: Path, split: str):
    """The documents of one split, in order (pass 2 trains the tokenizer on them)."""
    try:
        for row in read_articles(work, split):
            yield document(row)
    except UNREADABLE as e:
        raise WikiError(damaged(work / ARTICLES, e)) from None


# the characters a bpe: tokenizer learns from, at most (prepare_wiki.py --tokenizer_chars): rustbpe
# holds every distinct chunk its pattern cuts, and in Chinese nearly every clause is one (~160 bytes
# of memory a character, docs/data.md): ~8 GB here; English text needs under 1 GB
TOKENIZER_CHARS = 50_000_000


def even_sample(texts, max_chars: int, total: int | None = None) -> list[str]:
    """At most max_chars characters of `texts`, spread over all of them (a dump's first articles
    are one corner of it: its order is by title or id). A text is kept while a fixed hash of its
    position lies under a level, which halves whenever the kept texts pass max_chars: whatever the
    number of texts, the sample holds about a half to all of max_chars (all of them, when they
    are fewer). A text is cut to a sixteenth of max_chars: one longer than the budget would
    otherwise halve the level to nothing. total: the number of texts, for the progress bar."""
    level, kept, chars, longest = 1.0, [], 0, max(1, max_chars // 16)
    for i, text in enumerate(progress_bar(texts, total=total, unit=" articles", desc="sample", delay=10)):
        spot = (i * 0x9E3779B97F4A7C15 % 2**64) / 2**64  # Fibonacci hashing: positions spread over [0, 1)
        if spot >= level:
            continue
        text = text[:longest]
        kept.append((spot, text))
        chars += len(text)
        while chars > max_chars:
            level /= 2
            kept = [(s, t) for s, t in kept if s < level]
            chars = sum(len(t) for _, t in kept)
    return [t for _, t in kept]


SPLITS = ("train", "val")
_worker_tok = None


def _init_encoder(tok: Tokenizer):
    global _worker_tok
    _worker_tok = tok  # forked workers share the main process's copy (loading GPT-2's costs 0.3 s)


def encode_members(job) -> dict:
    """Worker: (articles file, start, end) -> per split, one uint16 array per document (each
    starting with the separator) and the split's counts."""
    path, start, end = job
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        rows = [json.loads(line) for line in gzip.decompress(data).splitlines()]
    except UNREADABLE as e:
        raise WikiError(damaged(path, e)) from None
    out = {}
    for split in SPLITS:
        docs = [document(r) for r in rows if r["split"] == split]
        sep = _worker_tok.doc_sep
        out[split] = ([np.array([sep] + ids, dtype=np.uint16) for ids in _worker_tok.encode_batch(docs)],
                      {"articles": len(docs), "chars": sum(map(len, docs)),
                       "bytes": sum(len(d.encode("utf-8")) for d in docs)})
    return out


def damaged(path: Path, e: Exception, work: Path | None = None) -> str:
    """A work folder whose articles cannot be read (e.g. written by two runs at once, before the
    work folder was locked, then resumed): prepare_wiki.py removes the work folder on a WikiError,
    so the same command then starts over instead of failing on the same bytes every time."""
    return (f"{path} cannot be read ({type(e).__name__}: {e}): the work folder {work or Path(path).parent} is "
            "damaged (e.g. two runs wrote it at once), so it is deleted now. Run the same command "
            "again: it starts over from the source.")


def member_ranges(members: list, target: int = 256 << 10):
    """Byte ranges of the articles file made of whole gzip members, about `target` each."""
    start = end = 0
    for size in members:
        end += size
        if end - start >= target:
            yield start, end
            start = end
    if end > start:
        yield start, end


class ShardWriter:
    """Appends documents to one split's shards, straight to disk; a shard ends at the first
    document boundary past --shard_tokens."""

    def __init__(self, work: Path, split: str, tok: Tokenizer, shard_tokens: int):
        self.work, self.split, self.tok, self.shard_tokens = work, split, tok, shard_tokens
        self.stats = {"articles": 0, "chars": 0, "bytes": 0, "tokens": 0, "shards": []}
        self.shard = None

    def add(self, arrays: list, counts: dict):
        for key, value in counts.items():
            self.stats[key] += value
        for arr in arrays:
            if self.shard is None:
                name = f"{self.split}_{len(self.stats['shards']):03d}.bin"
                self.shard = ShardFile(self.work / name, self.tok.n_vocab)
                self.stats["shards"].append(name)
            self.shard.write(arr)
            self.stats["tokens"] += len(arr)
            if self.shard.tokens >= self.shard_tokens:
                self.shard.close()
                self.shard = None

    def close(self) -> dict:
        if self.shard is not None:
            self.shard.close()
        text_tokens = self.stats["tokens"] - self.stats["articles"]  # not counting the separators
        self.stats["chars_per_token"] = round(self.stats["chars"] / max(text_tokens, 1), 4)
        return self.stats


def encode_pass(tok: Tokenizer, work: Path, members: list, args) -> dict:
    """Tokenize both splits in parallel and write their shards."""
    writers = {s: ShardWriter(work, s, tok, args.shard_tokens) for s in SPLITS}
    jobs = ((work / ARTICLES, a, b) for a, b in member_ranges(members))
    bar = progress_bar(desc="tokenize", unit=" tok", unit_scale=True)
    with worker_pool(encode_members, args.workers, _init_encoder, (tok,)) as pool:
        for result in ordered_map(pool, jobs):
            for split, (arrays, counts) in result.items():
                writers[split].add(arrays, counts)
                bar.update(sum(map(len, arrays)))
    bar.close()
    return {s: w.close() for s, w in writers.items()}
