"""
Wikipedia dump -> clean text -> tokens -> a dataset folder of uint16 shards (see wikigpt/data.py).

    python prepare_wiki.py                                  # the built-in English sample
    python prepare_wiki.py zhwiki-latest-pages-articles-multistream.xml.bz2 --tokenizer bpe:32768 --out data/zh
    python prepare_wiki.py https://dumps.wikimedia.org/simplewiki/latest/simplewiki-latest-pages-articles.xml.bz2
    python prepare_wiki.py train-00000-of-00041.parquet     # Hugging Face wikimedia/wikipedia
    python prepare_wiki.py extracted/                       # WikiExtractor --json output

Three passes, each in parallel worker processes where the work is heavy:
  1. read the source, clean each article's wikitext, drop duplicates, split train/val
     (multistream dumps are decompressed and parsed by the workers too: see wikigpt/prep/dumps.py);
     from the same wikitext, the knowledge graph: infobox facts, outgoing links, section openings
     and redirects as aliases, into knowledge.sqlite (see wikigpt/knowledge.py);
  2. (bpe only) train the tokenizer on the train split;
  3. tokenize and write the shards.
Work happens in a hidden folder beside --out that is renamed into place only at the very end,
so an interrupted run never leaves something that loads as a dataset. Progress is saved there
every --checkpoint_mb of source: after a crash or Ctrl-C, the same command continues where it
stopped and writes the same bytes as a run that was never interrupted.
"""
import argparse
import base64
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from wikigpt.data import (ARTICLES, ARTICLES_GZIP, FORMAT_VERSION, atomic_write_json, open_articles_for_writing,
                          read_articles, replaceable)
from wikigpt.knowledge import KNOWLEDGE, write_knowledge
from wikigpt.prep.facts import article_knowledge
from wikigpt.prep.dumps import (Stitcher, WikiError, default_source, download, index_name, range_plan, read_range,
                   reader_for, source_files, split_pages, parse_pages, truncated_message)
from wikigpt.tokenizer import Tokenizer, TokenizerError, gpt2_encoding, parse_bpe_name
from wikigpt.prep.shards import Progress, encode_pass, iter_articles, ordered_map
from wikigpt.prep.wikitext import CleanSettings, clean_wikitext, finish_article, link_target


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


# ----------------------------------------------------------------------------------------
# Pass 1: clean, in jobs of pages (one-stream sources) or of byte ranges (multistream dumps)


class Kept(NamedTuple):
    """A cleaned article as a worker hands it to the main process, which only decides whether
    it stays (a duplicate, or one past --max_articles, does not)."""
    digest: bytes
    split: str
    u: float  # the split hash, in [0, 1)
    size: int  # bytes of its line in the job's gzip member (the text itself stays in the member)
    knowledge: bytes  # its line of the knowledge part: facts, links, sections (JSON)


class JobOptions(NamedTuple):
    settings: CleanSettings
    seed: int
    val_fraction: float


def clean_pages(pages: list, opts: JobOptions) -> tuple[list, bytes, bytes]:
    """RawPages -> (one Kept or drop reason each, the Kept lines as one gzip member, the
    redirects as knowledge lines). Workers compress: zlib in the main process was the ceiling
    on scaling with workers."""
    results, lines, redirects = [], [], []
    for page in pages:
        if page.skip:
            if page.info.get("redirect"):  # a redirect is an alias of its target
                redirects.append(json.dumps({"redirect": page.title, "target": link_target(page.info["redirect"])},
                                            ensure_ascii=False) + "\n")
            results.append(page.skip)
            continue
        found = {}  # what the knowledge graph reads on the way: links, headings
        try:
            if page.markup == "wikitext":
                article, reason = clean_wikitext(page.title, page.text, opts.settings, found)
            else:  # already plain text (pre-extracted sources)
                article, reason = finish_article(page.title, page.text, opts.settings)
        except Exception:  # a pathological page must not stop a 20 GB run; it is counted
            article, reason = None, "parse_error"
        if article is None:
            results.append(reason)
            continue
        title, text = article
        try:
            known = article_knowledge(page.text, text, found) if page.markup == "wikitext" else {}
        except Exception:  # the article stays; only its share of the knowledge graph is lost
            known = {}
        split, u = split_of(title, opts.seed, opts.val_fraction)
        line = json.dumps({"title": title, "split": split, "text": text, **page.info}, ensure_ascii=False)
        lines.append((line + "\n").encode())
        known = json.dumps({"title": title, **known}, ensure_ascii=False) + "\n"
        results.append(Kept(_digest(text), split, u, len(lines[-1]), known.encode()))
    return results, gzip_member(lines), "".join(redirects).encode()


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
    truncated) of a range, for Stitcher."""
    if job[0] == "pages":
        return clean_pages(job[1], job[2]), None
    _, path, start, end, compressed, url_prefix, opts = job
    xml, truncated = read_range(path, start, end, compressed)
    head, body, tail = split_pages(xml)
    where = partial(_where, path, start, end, compressed, len(head))
    pages = parse_pages(body, url_prefix, where) if body else []
    return clean_pages(pages, opts), (head, body is not None, tail, truncated)


def split_of(title: str, seed: int, val_fraction: float) -> tuple[str, float]:
    """Deterministic train/val assignment by article title (same title -> same split)."""
    h = hashlib.blake2b(f"{seed}:{title}".encode(), digest_size=8).digest()
    u = int.from_bytes(h, "big") / 2**64
    return ("val" if u < val_fraction else "train"), u


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=12).digest()


def source_jobs(files, opts: JobOptions, progress, metas: deque):
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


def clean_pass(files, args, settings, work: Path, state: dict) -> dict:
    """Pass 1: source -> cleaned, deduplicated articles in work/parts/, checkpointed in `state`
    after every part (--checkpoint_mb of source), then joined into work/articles.jsonl.gz."""
    parts = work / "parts"
    parts.mkdir(exist_ok=True)
    c = state.setdefault("clean", {"jobs": 0, "parts": 0, "kept": 0, "skipped": {}, "splits":
                                   {"train": 0, "val": 0}, "lowest": [2.0, -1], "carry": "",
                                   "members": []})  # sizes of the gzip members, in file order
    part_path = lambda i: parts / f"part-{i:05d}.jsonl.gz"  # noqa: E731
    know_path = lambda i: work / KNOWLEDGE_PARTS / f"{i:05d}.jsonl"  # noqa: E731
    know_path(0).parent.mkdir(exist_ok=True)
    seen = set()
    for i in range(c["parts"]):  # a resumed run: the articles kept so far
        with gzip.open(part_path(i), "rt", encoding="utf-8") as f:
            seen.update(_digest(json.loads(line)["text"]) for line in f)
    skipped = Counter(c["skipped"])
    stitcher = Stitcher(base64.b64decode(c["carry"]))
    progress = Progress(sum(f.stat().st_size for f in files))
    if c["jobs"]:
        print(f"resuming after {c['jobs']} jobs: {c['kept']:,} articles already kept")
    opts, metas = JobOptions(settings, args.seed, args.val_fraction), deque()

    def jobs():
        for i, job in enumerate(source_jobs(files, opts, progress, metas)):
            if i < c["jobs"]:  # done before the interruption
                progress.to(metas.pop()[0])
                continue
            yield job

    def keep(results: list, member: bytes, redirects: bytes) -> bytes:
        """Count and keep the articles of one job; the gzip member to write for them (their
        knowledge lines, and the job's redirects, go to the knowledge part)."""
        kept = []
        for r in results:
            if isinstance(r, str):
                skipped[r] += 1
            elif r.digest in seen:
                skipped["duplicate"] += 1
            elif args.max_articles and c["kept"] >= args.max_articles:
                break
            else:
                seen.add(r.digest)
                c["lowest"] = min(c["lowest"], [r.u, c["kept"]])
                c["splits"][r.split] += 1
                c["kept"] += 1
                kept.append(r)
        articles = [r for r in results if isinstance(r, Kept)]
        if len(kept) < len(articles):  # a duplicate or --max_articles: recompress what stays
            data, ends = gzip.decompress(member), np.cumsum([0] + [r.size for r in articles])
            stays = {id(r) for r in kept}
            member = gzip_member([data[a:b] for r, a, b in zip(articles, ends, ends[1:]) if id(r) in stays])
        if member:
            c["members"].append(len(member))
        kout.write(b"".join(r.knowledge for r in kept) + redirects)
        return member

    def finish_part():  # the part is whole: name it, then save the progress that counts it
        out.close()
        kout.close()
        os.replace(kout.name, know_path(c["parts"]))
        os.replace(out.name, part_path(c["parts"]))
        c.update(parts=c["parts"] + 1, skipped=dict(skipped), carry=base64.b64encode(stitcher.carry).decode())
        atomic_write_json(work / PROGRESS, state)
        return open(part_path(c["parts"]).with_suffix(".tmp"), "wb"), open(know_path(c["parts"]).with_suffix(".tmp"), "wb")

    checkpoint_bytes, since = args.checkpoint_mb * 1e6, 0
    out = open(part_path(c["parts"]).with_suffix(".tmp"), "wb")
    kout = open(know_path(c["parts"]).with_suffix(".tmp"), "wb")
    try:
        for (results, member, redirects), stitch in ordered_map(clean_job, jobs(), args.workers):
            end, nbytes, plan, last_of_file = metas.popleft()
            if stitch:  # pages across the range boundary come before this range's own pages
                head, has_body, tail, truncated = stitch
                joined = stitcher.feed(head, has_body, tail, plan.url_prefix,
                                       lambda i: f"{plan.path}: in the page that ends near byte {end}")
                joined_results, joined_member, joined_redirects = clean_pages(joined, opts)
                out.write(keep(joined_results, joined_member, joined_redirects))
                progress.count(joined_results, c["kept"])
                if last_of_file:
                    stitcher.finish(plan.path)
                    stitcher = Stitcher()
                progress.to(end)
            out.write(keep(results, member, redirects))
            progress.count(results, c["kept"])
            if stitch and truncated:
                raise WikiError(truncated_message(plan.path, progress.pages, progress.articles))
            c["jobs"] += 1
            since += nbytes
            if args.max_articles and c["kept"] >= args.max_articles:
                break
            if since >= checkpoint_bytes:
                (out, kout), since = finish_part(), 0
        for f in finish_part():
            f.close()
    finally:
        out.close()
        kout.close()
        progress.bar.close()  # before any error message
    n = c["kept"]
    if n < 2:
        raise WikiError(f"only {n} article(s) left after cleaning ({dict(skipped)} dropped), too few "
                        f"to train on: need at least one train and one val article. Use a larger "
                        f"dump, or lower --min_chars (now {settings.min_chars}).")
    with open(work / (ARTICLES + ".tmp"), "wb") as joined:  # gzip members join into one file
        for i in range(c["parts"]):
            with open(part_path(i), "rb") as f:
                shutil.copyfileobj(f, joined, 1 << 20)
    os.replace(work / (ARTICLES + ".tmp"), work / ARTICLES)
    if c["splits"]["val"] == 0:  # a tiny source: move the article with the lowest hash to val
        settle_val_fallback(work, c["lowest"][1])
        c["members"] = [(work / ARTICLES).stat().st_size]
    shutil.rmtree(parts)
    state["cleaned"] = {"articles": n, "dropped": dict(skipped), "members": c.pop("members")}
    atomic_write_json(work / PROGRESS, state)
    return state["cleaned"]


def settle_val_fallback(work: Path, index: int):
    """Move one article to val in the kept articles (so that val is never empty)."""
    with open_articles_for_writing(work / (ARTICLES + ".new")) as out:
        for i, row in enumerate(read_articles(work)):
            row["split"] = "val" if i == index else row["split"]
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(work / (ARTICLES + ".new"), work / ARTICLES)


# ----------------------------------------------------------------------------------------
# The pipeline, resumable

PROGRESS = "progress.json"  # in the work folder: what is done, and for which command
KNOWLEDGE_PARTS = "knowledge-parts"  # in the work folder: the knowledge graph's lines, until it is written


def fingerprint(files, args) -> dict:
    """What the output depends on: the source files as they are now, and the options."""
    return {"files": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
            "options": {k: getattr(args, k) for k in ("tokenizer", "val_fraction", "seed", "min_chars",
                                                      "max_articles", "shard_tokens", "checkpoint_mb")},
            "format_version": FORMAT_VERSION}


def open_work(out: Path, files, args) -> tuple[Path, dict]:
    """The work folder beside `out` and its saved progress: resumed when it was made by the same
    command on the same source files, started afresh otherwise."""
    work = out.parent / f".{out.name}.partial"
    want = fingerprint(files, args)
    if work.exists():
        try:
            state = json.loads((work / PROGRESS).read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("fingerprint") == want:
            return work, state
        print(f"note: {work} holds an unfinished run of another command or source; starting over.")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    state = {"fingerprint": want}
    atomic_write_json(work / PROGRESS, state)
    return work, state


def check_options(args):
    if not 0.0 < args.val_fraction < 1.0:
        raise WikiError(f"--val_fraction must be between 0 and 1 (exclusive), got {args.val_fraction}.")
    try:  # before hours of cleaning: GPT-2's encoding is a download the first time
        gpt2_encoding() if args.tokenizer == "gpt2" else parse_bpe_name(args.tokenizer)
    except TokenizerError as e:
        hint = "; or train a tokenizer here, with no download: --tokenizer bpe:8192" if args.tokenizer == "gpt2" else ""
        raise WikiError(f"--tokenizer: {e}{hint}")
    if args.workers < 1:
        raise WikiError(f"--workers must be at least 1, got {args.workers}.")
    if args.checkpoint_mb <= 0:
        raise WikiError(f"--checkpoint_mb must be positive, got {args.checkpoint_mb}.")


def prepare(args) -> Path:
    t0 = time.time()
    out = Path(args.out)
    if out.exists() and not replaceable(out):
        raise WikiError(f"{out} is not a dataset folder (it holds other files), so prepare_wiki.py "
                        "will not replace it: choose another --out. (Nothing was changed.)")
    if out.exists() and not args.overwrite:
        raise WikiError(f"{out} already exists. Pass --overwrite to replace it, or choose "
                        "another --out. (Nothing was changed.)")
    check_options(args)
    if args.source is None:
        source = default_source()
    elif re.match(r"^https?://", args.source):
        source = download(args.source, Path(args.cache_dir).expanduser())
        if index := index_name(source.name):  # a multistream dump: its index lets workers split it
            try:
                download(args.source.rsplit("/", 1)[0] + "/" + index, source.parent)
            except WikiError as e:
                print(f"warning: no index for {source.name} ({e}); its streams will be found "
                      "by scanning.", file=sys.stderr)
    else:
        source = Path(args.source)
    files = source_files(source)
    settings = CleanSettings(min_chars=args.min_chars)
    print(f"source: {source} ({len(files)} file(s)); workers: {args.workers}")

    out.parent.mkdir(parents=True, exist_ok=True)
    work, state = open_work(out, files, args)
    try:
        # the pool's exit waits for the writer: after a crash no thread is left writing into
        # work/ to race the run that resumes it (or the cleanup of bad input)
        with ThreadPoolExecutor(1) as pool:
            cleaned = state.get("cleaned") or clean_pass(files, args, settings, work, state)
            print(f"cleaned {cleaned['articles']} articles in {time.time() - t0:.1f}s; "
                  f"dropped: {cleaned['dropped']}")

            writing = None
            if "knowledge" not in state:  # knowledge.sqlite, in a thread beside passes 2 and 3 (the
                # main process mostly waits for workers there): ~0.1 s off the x10 sample's 4 s
                parts = sorted((work / KNOWLEDGE_PARTS).glob("*.jsonl"))
                writing = pool.submit(write_knowledge, work / KNOWLEDGE, parts)

            if args.tokenizer == "gpt2":
                tok = Tokenizer.from_name("gpt2")
            elif state.get("tokenizer"):
                tok = Tokenizer.load(work / "tokenizer.json")
            else:
                t = time.time()
                print(f"training {args.tokenizer} tokenizer on the train split...")
                tok = Tokenizer.from_name(args.tokenizer, iter_articles(work, "train"))
                print(f"  trained in {time.time() - t:.1f}s")
            tok.save(work / "tokenizer.json")
            state["tokenizer"] = True
            atomic_write_json(work / PROGRESS, state)

            if "splits" not in state:
                state["splits"] = encode_pass(tok, work, cleaned["members"], args)
                atomic_write_json(work / PROGRESS, state)
            splits = state["splits"]
            if writing is not None:
                state["knowledge"] = writing.result()
                shutil.rmtree(work / KNOWLEDGE_PARTS)
                atomic_write_json(work / PROGRESS, state)
            meta = {
                "format_version": FORMAT_VERSION,
                "source": str(args.source or source),
                "cleaning": asdict(settings),
                "val_fraction": args.val_fraction,
                "seed": args.seed,
                "tokenizer": tok.name,
                "vocab_size": tok.n_vocab,
                "dropped": cleaned["dropped"],
                "shards": {s: st["shards"] for s, st in splits.items()},
                "splits": {s: {k: v for k, v in st.items() if k != "shards"} for s, st in splits.items()},
                "articles": ARTICLES,
                "knowledge": state["knowledge"],
                "seconds": round(time.time() - t0, 2),
            }
            (work / PROGRESS).unlink()
            atomic_write_json(work / "meta.json", meta)  # meta.json last: it marks the folder complete
    except WikiError:  # bad input: nothing to resume
        shutil.rmtree(work)
        raise
    if out.exists():  # --overwrite: swap the old folder out only now that the new one is whole
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        work.rename(out)
        shutil.rmtree(old)
    else:
        work.rename(out)

    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    print(f"\nwrote {out}/ in {meta['seconds']:.1f}s (tokenizer {tok.name}, vocab {tok.n_vocab})")
    for s, st in (("train", tr), ("val", va)):
        print(f"  {s:5s}: {st['articles']:>8,} articles {st['chars']:>14,} chars "
              f"{st['tokens']:>13,} tokens  {st['chars_per_token']:.2f} chars/token  "
              f"{len(meta['shards'][s])} shard(s)")
    k = meta["knowledge"]
    print(f"  knowledge graph: {k['facts']:,} facts from {k['infoboxes']:,} infoboxes, {k['aliases']:,} aliases "
          f"(of {k['redirects']:,} redirects), {k['links']:,} links, {k['sections']:,} section openings "
          f"-> {out / KNOWLEDGE}")
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
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes (the output is the same for any number)")
    p.add_argument("--shard_tokens", type=int, default=100_000_000, help="tokens per shard (about)")
    p.add_argument("--max_articles", type=int, default=0, help="stop after this many articles (0: all)")
    p.add_argument("--checkpoint_mb", type=float, default=256,
                   help="save progress every this many MB of source read (a re-run continues from there)")
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
        print(f"\ninterrupted: progress is saved in {Path(args.out).parent}/.{Path(args.out).name}"
              ".partial; run the same command again to continue.", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
