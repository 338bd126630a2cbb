"""
Wikipedia dump -> clean text -> tokens -> a dataset folder of uint16 shards (see data.py).

    python prepare_wiki.py                                  # the built-in English sample
    python prepare_wiki.py zhwiki-latest-pages-articles.xml.bz2 --tokenizer bpe:32768 --out data/zh
    python prepare_wiki.py https://dumps.wikimedia.org/simplewiki/latest/simplewiki-latest-pages-articles.xml.bz2
    python prepare_wiki.py train-00000-of-00041.parquet     # Hugging Face wikimedia/wikipedia
    python prepare_wiki.py extracted/                       # WikiExtractor --json output

Three passes, each in parallel worker processes where the work is heavy:
  1. read the source as a stream, clean each article's wikitext, drop duplicates, split train/val;
  2. (bpe only) train the tokenizer on the train split;
  3. tokenize and write the shards.
Everything is written into a temporary folder that is renamed into place only at the very end,
so an interrupted run never leaves something that loads as a dataset.
"""
import argparse
import bz2
import gzip
import hashlib
import importlib.util
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter, deque
from dataclasses import asdict
from pathlib import Path
from urllib.parse import quote

import numpy as np
from tqdm import tqdm

from data import ARTICLES, FORMAT_VERSION, atomic_write_json, open_articles_for_writing, read_articles, write_shard
from tokenizer import Tokenizer, TokenizerError, parse_bpe_name
from wikitext import CleanSettings, clean_wikitext, finish_article


class WikiError(Exception):
    """A user-facing problem with the input or the options; printed without a traceback."""


def clean_batch(job):
    """Worker: a batch of (title, text, markup, info) -> list of ((title, text, info) or None,
    drop reason); info holds the page id and URL where the source has them."""
    batch, settings = job
    out = []
    for title, text, markup, info in batch:
        try:
            if markup == "wikitext":
                article, reason = clean_wikitext(title, text, settings)
            else:  # already plain text (pre-extracted sources)
                article, reason = finish_article(title, text, settings)
        except Exception:  # a pathological page must not stop a 20 GB run; it is counted
            article, reason = None, "parse_error"
        out.append(((*article, info) if article else None, reason))
    return out


# ----------------------------------------------------------------------------------------
# Sources: MediaWiki XML (plain / .bz2 / .gz), JSONL (incl. WikiExtractor), parquet, folders


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # drop the XML namespace: "{http://...}page" -> "page"


def _open_maybe_compressed(raw):
    """Wrap a binary file in a decompressor chosen by its magic bytes, not its name
    (dump part names like '...xml-p1p41242.bz2' defeat extension checks)."""
    magic = raw.read(3)
    raw.seek(0)
    if magic == b"BZh":
        return bz2.BZ2File(raw)  # handles multistream dumps (many concatenated streams)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw)
    return raw


def truncated_message(path, pages: int, articles: int) -> str:
    return (f"{path}: the compressed file ends early (truncated download?) after {pages} pages "
            f"({articles} of them articles) were read. Download it again (a URL source resumes "
            "a partial download).")


def read_xml(path: Path, progress):
    """Stream (title, wikitext, 'wikitext') for namespace-0, non-redirect pages; memory stays
    flat because every finished <page> is cleared from the tree."""
    pages = articles = 0
    url_prefix = ""  # from <siteinfo><base>https://en.wikipedia.org/wiki/Main_Page</base>
    with open(path, "rb") as raw:
        stream = _open_maybe_compressed(raw)
        try:
            context = ET.iterparse(stream, events=("start", "end"))
            _, root = next(context)
            if _local(root.tag) != "mediawiki":
                raise WikiError(f"{path}: this XML is not a MediaWiki dump (its root element is "
                                f"<{_local(root.tag)}>, expected <mediawiki>). Use a "
                                "*-pages-articles.xml[.bz2] file from dumps.wikimedia.org.")
            for event, elem in context:
                if event == "end" and _local(elem.tag) == "base" and elem.text:
                    url_prefix = elem.text.strip().rsplit("/", 1)[0] + "/"
                if event != "end" or _local(elem.tag) != "page":
                    continue
                fields = {_local(c.tag): c for c in elem}
                revision = {_local(c.tag): c for c in fields.get("revision", [])}
                title = (fields["title"].text or "") if "title" in fields else ""
                ns = (fields["ns"].text or "0").strip() if "ns" in fields else "0"
                text = revision["text"].text or "" if "text" in revision else ""
                pages += 1
                if ns != "0":
                    progress.skip("not_article")
                elif "redirect" in fields or text.lstrip().lower().startswith("#redirect"):
                    progress.skip("redirect")
                else:
                    articles += 1
                    info = {"id": (fields["id"].text or "").strip() if "id" in fields else ""}
                    if url_prefix:
                        info["url"] = url_prefix + quote(title.replace(" ", "_"))
                    yield title, text, "wikitext", info
                root.clear()
                progress.at(raw.tell())
        except EOFError:
            raise WikiError(truncated_message(path, pages, articles))
        except ET.ParseError as e:
            line, col = e.position
            hint = ("The file has bytes that are not UTF-8 there." if "invalid token" in str(e)
                    else "The dump is damaged or not XML.")
            raise WikiError(f"{path}: malformed XML at line {line}, column {col} ({e.msg}) after "
                            f"{pages} pages ({articles} of them articles) were read. {hint} "
                            "Download it again.")
        except (OSError, StopIteration) as e:
            raise WikiError(f"{path}: cannot read this as a {'compressed ' if stream is not raw else ''}"
                            f"MediaWiki XML dump ({e or 'empty file'}). Check the file and its extension.")


def read_jsonl(path: Path, progress):
    """Pre-extracted articles, one JSON object per line with "title" and "text"
    (Hugging Face exports, WikiExtractor --json). Text is taken as plain text."""
    with open(path, "rb") as raw:
        for lineno, line in enumerate(_open_maybe_compressed(raw), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise WikiError(f"{path}:{lineno}: bytes that are not UTF-8 at column {e.start + 1}. "
                                "Re-encode the file as UTF-8.")
            except json.JSONDecodeError as e:
                raise WikiError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}). "
                                'Each line must be one object like {"title": ..., "text": ...}.')
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise WikiError(f'{path}:{lineno}: expected an object with a string "text" field '
                                f"(and a \"title\"), got {str(row)[:80]!r}.")
            progress.at(raw.tell())
            info = {k: str(row[k]) for k in ("id", "url") if row.get(k)}
            yield str(row.get("title", "")), row["text"], "plain", info


def read_parquet(path: Path, progress):
    """Hugging Face wikimedia/wikipedia parquet: columns "title" and "text", read in batches."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise WikiError(f"{path}: cannot open as parquet ({e}).")
    columns = pf.schema_arrow.names
    if "text" not in columns or "title" not in columns:
        raise WikiError(f"{path}: parquet needs columns 'title' and 'text'; it has {columns}.")
    size = path.stat().st_size
    extra = [c for c in ("id", "url") if c in columns]  # wikimedia/wikipedia has both
    for i in range(pf.num_row_groups):
        table = pf.read_row_group(i, columns=["title", "text", *extra]).to_pydict()
        for j, (title, text) in enumerate(zip(table["title"], table["text"])):
            info = {c: str(table[c][j]) for c in extra if table[c][j]}
            yield title or "", text or "", "plain", info
        progress.at(size * (i + 1) // pf.num_row_groups)


def reader_for(path: Path):
    """Pick the reader by the file's content: parquet magic, else the first non-blank
    decompressed byte: '<' is XML, anything else is taken as JSON lines."""
    with open(path, "rb") as raw:
        if raw.read(4) == b"PAR1":
            return read_parquet
        raw.seek(0)
        try:
            head = _open_maybe_compressed(raw).read(1024).lstrip()
        except EOFError:
            raise WikiError(truncated_message(path, 0, 0))
        except OSError as e:
            raise WikiError(f"{path}: cannot decompress the start of the file ({e}). "
                            "Check that it is a complete .bz2/.gz download.")
    return read_xml if head.startswith(b"<") else read_jsonl


def source_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise WikiError(f"{path}: the folder holds no files.")
        return files
    if not path.is_file():
        raise WikiError(f"{path}: no such file or folder. Pass a dump (.xml/.xml.bz2/.xml.gz), "
                        "a .jsonl/.parquet of articles, a folder of them, or an https:// URL.")
    return [path]


def default_source() -> Path:
    """The real English Wikipedia fragment (106 pages) that gensim's wheel ships for its tests."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise WikiError("no source given and the built-in sample is not installed. Run "
                        "`pip install gensim` (it ships a small English dump) or pass a dump path/URL.")
    path = (Path(spec.origin).parent / "test" / "test_data" /
            "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    if not path.is_file():
        raise WikiError(f"the built-in sample {path} is missing from this gensim install; "
                        "pass a dump path or URL instead.")
    return path


def download(url: str, cache_dir: Path) -> Path:
    """Download url into cache_dir, resuming a partial download (HTTP Range)."""
    import requests

    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / url.rstrip("/").rsplit("/", 1)[-1]
    if dest.is_file():
        print(f"using cached {dest}")
        return dest
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with requests.get(url, headers=headers, stream=True, timeout=60) as r:
            if r.status_code == 416:  # the partial file is already complete
                part.rename(dest)
                return dest
            r.raise_for_status()
            if r.status_code != 206:  # server ignored the Range: start over
                have = 0
            total = have + int(r.headers.get("Content-Length", 0)) or None
            with open(part, "ab" if have else "wb") as f, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc="download") as bar:
                for chunk in r.iter_content(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as e:
        raise WikiError(f"downloading {url} failed ({e}). Run the same command again: it resumes "
                        f"from the {part.stat().st_size if part.exists() else 0} bytes in {part}.")
    part.rename(dest)
    return dest


# ----------------------------------------------------------------------------------------
# Parallel helpers: ordered results, bounded memory, identical output for any worker count


def ordered_map(fn, jobs, workers: int, initializer=None, initargs=()):
    """Like map(fn, jobs), in worker processes, in order, with at most 2*workers jobs in
    flight (Pool.imap would read the whole input ahead: not an option for a 20 GB dump)."""
    if workers <= 1:
        if initializer:
            initializer(*initargs)
        yield from map(fn, jobs)
        return
    with mp.Pool(workers, initializer, initargs) as pool:
        pending = deque()
        for job in jobs:
            pending.append(pool.apply_async(fn, (job,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


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


_worker_tok = None


def _init_encoder(spec):
    global _worker_tok
    _worker_tok = Tokenizer(spec)


def encode_batch(docs: list[str]) -> list[np.ndarray]:
    """Worker: documents -> one uint16 array per document, each starting with the separator."""
    sep = _worker_tok.doc_sep
    return [np.array([sep] + ids, dtype=np.uint16) for ids in _worker_tok.encode_batch(docs)]


# ----------------------------------------------------------------------------------------
# The pipeline


class Progress:
    """A bytes-of-source progress bar that also counts kept and skipped articles."""

    def __init__(self, total_bytes: int):
        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="clean", smoothing=0.1)
        self.done_files = 0  # bytes of files already finished
        self.kept = 0
        self.skipped = Counter()
        self.t0 = time.time()

    def at(self, pos: int):
        self.bar.n = self.done_files + pos
        self.bar.update(0)  # redraws at most every 0.1 s

    def set_kept(self, n: int):
        self.kept = n
        rate = n / max(time.time() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{n} articles, {rate:.0f} articles/s", refresh=False)

    def skip(self, reason: str):
        self.skipped[reason] += 1


def split_of(title: str, seed: int, val_fraction: float) -> tuple[str, float]:
    """Deterministic train/val assignment by article title (same title -> same split)."""
    h = hashlib.blake2b(f"{seed}:{title}".encode(), digest_size=8).digest()
    u = int.from_bytes(h, "big") / 2**64
    return ("val" if u < val_fraction else "train"), u


def clean_pass(files, args, settings, work: Path, progress: Progress):
    """Pass 1: source -> cleaned, deduplicated articles in work/articles.jsonl.gz."""
    seen = set()
    counts = {"train": 0, "val": 0}
    lowest = (2.0, -1)  # the article with the lowest split hash: the val fallback
    n = 0

    def raw_articles():
        for f in files:
            yield from reader_for(f)(f, progress)
            progress.done_files += f.stat().st_size

    jobs = ((batch, settings) for batch in batched(raw_articles(), 32))
    with open_articles_for_writing(work / ARTICLES) as out:
        for results in ordered_map(clean_batch, jobs, args.workers):
            for article, reason in results:
                if article is None:
                    progress.skip(reason)
                    continue
                title, body, info = article
                digest = hashlib.blake2b(body.encode(), digest_size=12).digest()
                if digest in seen:
                    progress.skip("duplicate")
                    continue
                if args.max_articles and n >= args.max_articles:
                    break
                seen.add(digest)
                split, u = split_of(title, args.seed, args.val_fraction)
                lowest = min(lowest, (u, n))
                counts[split] += 1
                out.write(json.dumps({"title": title, "split": split, "text": body, **info},
                                     ensure_ascii=False) + "\n")
                n += 1
                progress.set_kept(n)
            if args.max_articles and n >= args.max_articles:
                break
    progress.bar.close()
    if n < 2:
        raise WikiError(f"only {n} article(s) left after cleaning ({dict(progress.skipped)} "
                        f"dropped), too few to train on: need at least one train and one val "
                        f"article. Use a larger dump, or lower --min_chars (now {settings.min_chars}).")
    force_val = lowest[1] if counts["val"] == 0 else -1  # at least one val article
    return n, force_val


def iter_articles(work: Path, split: str, force_val: int):
    """The documents of one split as the model sees them: the title opens the document
    (it says what it is about), then the text."""
    for i, row in enumerate(read_articles(work)):
        row_split = "val" if i == force_val else row["split"]
        if row_split == split:
            yield f"{row['title']}\n\n{row['text']}"


def settle_val_fallback(work: Path, force_val: int):
    """Write the one article moved to val (tiny sources) into the kept articles too."""
    if force_val < 0:
        return
    with open_articles_for_writing(work / (ARTICLES + ".new")) as out:
        for i, row in enumerate(read_articles(work)):
            row["split"] = "val" if i == force_val else row["split"]
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(work / (ARTICLES + ".new"), work / ARTICLES)


def encode_pass(tok: Tokenizer, work: Path, split: str, force_val: int, args) -> dict:
    """Pass 3: tokenize one split in parallel and write its shards."""
    stats = {"articles": 0, "chars": 0, "bytes": 0, "tokens": 0, "shards": []}
    buffer, buffered = [], 0

    def flush():
        nonlocal buffer, buffered
        name = f"{split}_{len(stats['shards']):03d}.bin"
        write_shard(work / name, np.concatenate(buffer), tok.n_vocab)
        stats["shards"].append(name)
        buffer, buffered = [], 0

    def docs_in_batches():
        batch = []
        for doc in iter_articles(work, split, force_val):
            stats["articles"] += 1
            stats["chars"] += len(doc)
            stats["bytes"] += len(doc.encode("utf-8"))
            batch.append(doc)
            if len(batch) == 256:
                yield batch
                batch = []
        if batch:
            yield batch

    bar = tqdm(desc=f"tokenize {split}", unit=" tok", unit_scale=True)
    for arrays in ordered_map(encode_batch, docs_in_batches(), args.workers, _init_encoder, (tok.spec,)):
        for arr in arrays:  # shards end at document boundaries
            buffer.append(arr)
            buffered += len(arr)
            stats["tokens"] += len(arr)
            bar.update(len(arr))
            if buffered >= args.shard_tokens:
                flush()
    if buffer:
        flush()
    bar.close()
    text_tokens = stats["tokens"] - stats["articles"]  # not counting the separators
    stats["chars_per_token"] = round(stats["chars"] / max(text_tokens, 1), 4)
    return stats


def prepare(args) -> Path:
    t0 = time.time()
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise WikiError(f"{out} already exists. Pass --overwrite to replace it, or choose "
                        "another --out. (Nothing was changed.)")
    if not 0.0 < args.val_fraction < 1.0:
        raise WikiError(f"--val_fraction must be between 0 and 1 (exclusive), got {args.val_fraction}.")
    if args.tokenizer != "gpt2":
        try:
            parse_bpe_name(args.tokenizer)
        except TokenizerError as e:
            raise WikiError(f"--tokenizer: {e}")
    if args.workers < 1:
        raise WikiError(f"--workers must be at least 1, got {args.workers}.")

    if args.source is None:
        source = default_source()
    elif re.match(r"^https?://", args.source):
        source = download(args.source, Path(args.cache_dir).expanduser())
    else:
        source = Path(args.source)
    files = source_files(source)
    settings = CleanSettings(min_chars=args.min_chars)
    print(f"source: {source} ({len(files)} file(s)); workers: {args.workers}")

    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.tmp-{os.getpid()}"
    work.mkdir()
    try:
        progress = Progress(sum(f.stat().st_size for f in files))
        n, force_val = clean_pass(files, args, settings, work, progress)
        t_clean = time.time() - t0
        print(f"cleaned {n} articles in {t_clean:.1f}s; dropped: {dict(progress.skipped)}")

        if args.tokenizer == "gpt2":
            tok = Tokenizer.from_name("gpt2")
        else:
            t = time.time()
            print(f"training {args.tokenizer} tokenizer on the train split...")
            tok = Tokenizer.from_name(args.tokenizer, iter_articles(work, "train", force_val))
            print(f"  trained in {time.time() - t:.1f}s")
        tok.save(work / "tokenizer.json")

        splits = {s: encode_pass(tok, work, s, force_val, args) for s in ("train", "val")}
        settle_val_fallback(work, force_val)  # the kept articles stay, for retrieval and QA
        meta = {
            "format_version": FORMAT_VERSION,
            "source": str(args.source or source),
            "cleaning": asdict(settings),
            "val_fraction": args.val_fraction,
            "seed": args.seed,
            "tokenizer": tok.name,
            "vocab_size": tok.n_vocab,
            "dropped": dict(progress.skipped),
            "shards": {s: st.pop("shards") for s, st in splits.items()},
            "splits": splits,
            "articles": ARTICLES,
            "seconds": round(time.time() - t0, 2),
        }
        atomic_write_json(work / "meta.json", meta)  # meta.json last: it marks the folder complete
        if out.exists():  # --overwrite: swap the old folder out only now that the new one is whole
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            work.rename(out)
            shutil.rmtree(old)
        else:
            work.rename(out)
    finally:
        if work.exists():
            shutil.rmtree(work)

    tr, va = splits["train"], splits["val"]
    print(f"\nwrote {out}/ in {meta['seconds']:.1f}s (tokenizer {tok.name}, vocab {tok.n_vocab})")
    for s, st in (("train", tr), ("val", va)):
        print(f"  {s:5s}: {st['articles']:>8,} articles {st['chars']:>14,} chars "
              f"{st['tokens']:>13,} tokens  {st['chars_per_token']:.2f} chars/token  "
              f"{len(meta['shards'][s])} shard(s)")
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="?", help="dump file, .jsonl/.parquet, folder, or https:// URL "
                   "(default: the English sample shipped with gensim)")
    p.add_argument("--out", default="data/wiki", help="dataset folder to create (default: data/wiki)")
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2' or 'bpe:VOCAB' trained on the train split")
    p.add_argument("--val_fraction", type=float, default=0.01, help="share of articles for val")
    p.add_argument("--seed", type=int, default=1337, help="seed of the train/val split")
    p.add_argument("--min_chars", type=int, default=200, help="drop articles shorter than this")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--shard_tokens", type=int, default=100_000_000, help="tokens per shard (about)")
    p.add_argument("--max_articles", type=int, default=0, help="stop after this many articles (0: all)")
    p.add_argument("--cache_dir", default="~/.cache/wikigpt", help="where URL sources are downloaded")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        prepare(args)
    except WikiError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: nothing was written (the temporary folder was removed).", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
