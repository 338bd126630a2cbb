"""
Wikipedia dump -> clean text -> tokens -> a dataset folder of uint16 shards (see wikigpt/prep/data.py).

    python prepare_wiki.py                                  # the built-in English sample
    python prepare_wiki.py zhwiki-latest-pages-articles-multistream.xml.bz2 --tokenizer bpe:32768 --out data/zh
    python prepare_wiki.py https://dumps.wikimedia.org/simplewiki/latest/simplewiki-latest-pages-articles.xml.bz2
    python prepare_wiki.py train-00000-of-00041.parquet     # Hugging Face wikimedia/wikipedia
    python prepare_wiki.py extracted/                       # WikiExtractor --json output

Three passes, each in parallel worker processes where the work is heavy:
  1. read the source, clean each article's wikitext, drop duplicates, split train/val
     (multistream dumps are decompressed and parsed by the workers too: see wikigpt/prep/dumps.py);
     from the same wikitext, the knowledge graph: infobox facts, outgoing links, section openings
     and redirects as aliases, into knowledge.sqlite (see wikigpt/knowledge/graph.py);
  2. (bpe only) train the tokenizer on an even sample of the train split;
  3. tokenize and write the shards.
Work happens in a hidden folder beside --out that is renamed into place only at the very end,
every byte of it on disk first, so neither a crash nor a power cut leaves something that loads
as a dataset unless it is whole (wikigpt/prep/workdir.py). Progress is saved there every
--checkpoint_mb of source: after a crash or Ctrl-C, the same command continues where it stopped
and writes the same bytes as a run that was never interrupted. What one page may cost is
bounded (4 MiB of XML, --page_timeout seconds of cleaning): see docs/data.md, "Limits".
"""
import argparse
import base64
import gzip
import json
import re
import shutil
import sys
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from wikigpt.prep.data import (ARTICLES, FORMAT_VERSION, MADE_BY, atomic_write_json, not_replaceable,
                          open_articles_for_writing, read_articles)
from wikigpt.run.cores import usable_cores
from wikigpt.run.durable import fsync_path, replace_durably
from wikigpt.run.output_paths import output_path_problem, path_error
from wikigpt.knowledge.graph import KNOWLEDGE, write_knowledge
from wikigpt.prep.download import download
from wikigpt.prep.dumps import WikiError, default_source, source_files, truncated_message
from wikigpt.prep.ranges import Stitcher, index_name
from wikigpt.prep.jobs import Kept, JobOptions, Seen, clean_job, digest, gzip_member, source_jobs
from wikigpt.prep.pagecap import MAX_PAGE_BYTES
from wikigpt.prep.shards import (TOKENIZER_CHARS, UNREADABLE, Progress, damaged, encode_pass, even_sample,
                                 iter_articles)
from wikigpt.prep.wikitext import CleanSettings
from wikigpt.prep.workdir import (PROGRESS, file_digest, generation, made_from, not_in_use, open_work, publish,
                                   saved_tokenizer, unlock, work_folder)
from wikigpt.prep.workers import WorkerLost, ordered_map, run_now, worker_pool
from wikigpt.tokenizer import Tokenizer, TokenizerError, gpt2_encoding, parse_bpe_name


# ----------------------------------------------------------------------------------------
# Pass 1: clean, in jobs of pages (one-stream sources) or of byte ranges (multistream dumps);
# the jobs themselves, which run in the workers, are wikigpt/prep/jobs.py

KNOWLEDGE_PARTS = "knowledge-parts"  # in the work folder: the knowledge graph's lines, until it is written
MAX_WARNINGS = 20  # pages named in warnings per reason; the rest are counted in meta.json's "dropped"
# The largest real pages (2 MiB of wikitext) clean in about a second; a page that takes a
# minute is one the parser goes quadratic or worse on: skipped, so one page never stalls a run
PAGE_SECONDS = 60.0


class CleanPass:
    """Pass 1: source -> cleaned, deduplicated articles in work/parts/, checkpointed in `state`
    after every part (--checkpoint_mb of source), then joined into work/articles.jsonl.gz.
    An article is kept once: a later one with the same text ("duplicate") or the same title
    ("duplicate_title": the knowledge graph and retrieval name articles by title) is skipped."""

    def __init__(self, files, args, settings, work: Path, state: dict):
        self.files, self.args, self.settings, self.work = files, args, settings, work
        (work / "parts").mkdir(exist_ok=True)
        (work / KNOWLEDGE_PARTS).mkdir(exist_ok=True)
        self.c = state.setdefault("clean", {"jobs": 0, "parts": 0, "kept": 0, "skipped": {}, "splits":
                                            {"train": 0, "val": 0}, "lowest": [2.0, -1], "carry": "",
                                            "members": []})  # sizes of the gzip members, in file order
        self.state, self.texts, self.titles = state, Seen(), Seen()
        for i in range(self.c["parts"]):  # a resumed run: the articles kept so far
            self.remember(self.part_path(i))
        self.skipped = Counter(self.c["skipped"])
        self.stitcher = Stitcher(base64.b64decode(self.c["carry"]))
        self.progress = Progress(sum(f.stat().st_size for f in files))
        self.opts, self.metas = JobOptions(settings, args.seed, args.val_fraction), deque()
        if self.c["jobs"]:
            print(f"resuming after {self.c['jobs']} jobs: {self.c['kept']:,} articles already kept")

    def remember(self, part: Path):
        """The digests of a saved part's articles. A part that is gone or cut short (a folder an
        older version left, killed while it deleted parts/) is reported: prepare() then deletes the
        work folder, so the same command starts over instead of failing the same way every time."""
        try:
            with gzip.open(part, "rt", encoding="utf-8") as f:
                for row in map(json.loads, f):
                    self.texts.add(digest(row["text"]))
                    self.titles.add(digest(row["title"]))
        except UNREADABLE as e:
            raise WikiError(damaged(part, e, self.work)) from None

    def part_path(self, i: int) -> Path:
        return self.work / "parts" / f"part-{i:05d}.jsonl.gz"

    def know_path(self, i: int) -> Path:
        return self.work / KNOWLEDGE_PARTS / f"{i:05d}.jsonl"

    def jobs(self):
        for i, job in enumerate(source_jobs(self.files, self.opts, self.progress, self.metas)):
            if i < self.c["jobs"]:  # done before the interruption
                self.progress.to(self.metas.pop()[0])
                continue
            yield job

    def keep(self, results: list, member: bytes, redirects: bytes):
        """Count and keep the articles of one job; write the gzip member for them (their
        knowledge lines, and the job's redirects, go to the knowledge part)."""
        kept, c = [], self.c
        for r in results:
            if isinstance(r, str):
                self.skip(*r.split("\t", 1))
            elif r.digest in self.texts:
                self.skipped["duplicate"] += 1
            elif r.title_digest in self.titles:
                self.skip("duplicate_title")
                c.setdefault("repeated_title", json.loads(r.knowledge)["title"])  # the example the summary names
            elif self.args.max_articles and c["kept"] >= self.args.max_articles:
                break
            else:
                self.texts.add(r.digest)
                self.titles.add(r.title_digest)
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
        self.out.write(member)
        self.kout.write(b"".join(r.knowledge for r in kept) + redirects)
        self.progress.count(results, c["kept"])

    def skip(self, reason: str, title: str | None = None):
        self.skipped[reason] += 1
        n, why = self.skipped[reason], {
            "too_large": f"more than {MAX_PAGE_BYTES >> 20} MiB of XML (Wikipedia stores at most 2 MiB of "
                         "wikitext a page)",
            "timeout": f"its cleaning took more than {self.args.page_timeout:g} s (--page_timeout)",
            "crashed": "the worker process cleaning it died (a crash in the parser)"}.get(reason)
        if why and n <= MAX_WARNINGS:
            more = "; any more such pages are only counted (meta.json's 'dropped')" if n == MAX_WARNINGS else ""
            self.progress.bar.write(f"warning: skipped the page {title!r}: {why}{more}", file=sys.stderr)

    def open_part(self):
        i = self.c["parts"]
        self.out = open(self.part_path(i).with_suffix(".tmp"), "wb")
        self.kout = open(self.know_path(i).with_suffix(".tmp"), "wb")

    def finish_part(self):
        """The part is whole: its bytes on disk, named, then the progress that counts it saved."""
        self.out.close()
        self.kout.close()
        replace_durably(self.kout.name, self.know_path(self.c["parts"]))
        replace_durably(self.out.name, self.part_path(self.c["parts"]))
        self.c.update(parts=self.c["parts"] + 1, skipped=dict(self.skipped),
                      carry=base64.b64encode(self.stitcher.carry).decode())
        atomic_write_json(self.work / PROGRESS, self.state)

    def stitch(self, pool, stitch, end: int, plan, last_of_file: bool):
        """The pages across the range boundary, cleaned before this range's own pages."""
        head, has_body, tail, truncated = stitch
        joined = self.stitcher.feed(head, has_body, tail, plan.url_prefix,
                                    lambda i: f"{plan.path}: in the page that ends near byte {end}", plan.path)
        if joined:  # in a worker too: the same time bound as every page
            self.keep(*run_now(pool, ("pages", joined, self.opts))[0])
        if last_of_file:
            self.stitcher.finish(plan.path)
            self.stitcher = Stitcher()
        self.progress.to(end)

    def run(self) -> dict:
        args, c, since = self.args, self.c, 0
        self.open_part()
        try:
            with worker_pool(clean_job, args.workers, page_seconds=args.page_timeout or None) as pool:
                for (results, member, redirects), stitch in ordered_map(pool, self.jobs()):
                    end, nbytes, plan, last_of_file = self.metas.popleft()
                    if stitch:
                        self.stitch(pool, stitch, end, plan, last_of_file)
                    self.keep(results, member, redirects)
                    if stitch and stitch[3]:  # the file's last bz2 stream is cut short
                        raise WikiError(truncated_message(plan.path, self.progress.pages, self.progress.articles))
                    c["jobs"] += 1
                    since += nbytes
                    if args.max_articles and c["kept"] >= args.max_articles:
                        break
                    if since >= args.checkpoint_mb * 1e6:
                        self.finish_part()
                        self.open_part()
                        since = 0
            self.finish_part()
        finally:
            self.out.close()
            self.kout.close()
            self.progress.bar.close()  # before any error message
        return self.join()

    def join(self) -> dict:
        """The parts -> work/articles.jsonl.gz (gzip members join into one file)."""
        c, work = self.c, self.work
        if c["kept"] < 2:
            fix = (f"raise --max_articles (now {self.args.max_articles})" if self.args.max_articles
                   else f"use a larger dump, or lower --min_chars (now {self.settings.min_chars})")
            raise WikiError(f"only {c['kept']} article(s) left after cleaning ({dict(self.skipped)} dropped), too "
                            f"few to train on: need at least one train and one val article. {fix[0].upper()}{fix[1:]}.")
        if c["splits"]["train"] == 0:  # (no val article is mended below: one is moved there)
            raise WikiError(f"--val_fraction {self.args.val_fraction} put all {c['kept']} articles in val, none in "
                            "train: lower --val_fraction. (Nothing was published.)")
        with open(work / (ARTICLES + ".tmp"), "wb") as joined:
            for i in range(c["parts"]):
                with open(self.part_path(i), "rb") as f:
                    shutil.copyfileobj(f, joined, 1 << 20)
        replace_durably(work / (ARTICLES + ".tmp"), work / ARTICLES)
        if c["splits"]["val"] == 0:  # a tiny source: move the article with the lowest hash to val
            settle_val_fallback(work, c["lowest"][1])
            c["members"] = [(work / ARTICLES).stat().st_size]
        self.state["cleaned"] = {"articles": c["kept"], "dropped": dict(self.skipped), "members": c.pop("members"),
                                 "repeated_title": c.get("repeated_title")}
        atomic_write_json(work / PROGRESS, self.state)  # parts/ goes only now: see drop_done
        return self.state["cleaned"]


def settle_val_fallback(work: Path, index: int):
    """Move one article to val in the kept articles (so that val is never empty)."""
    with open_articles_for_writing(work / (ARTICLES + ".new")) as out:
        for i, row in enumerate(read_articles(work)):
            row["split"] = "val" if i == index else row["split"]
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    replace_durably(work / (ARTICLES + ".new"), work / ARTICLES)


# ----------------------------------------------------------------------------------------
# The pipeline, resumable

# what a step leaves that the next ones no longer read, once progress.json records the step done
LEFTOVERS = {"cleaned": "parts", "knowledge": KNOWLEDGE_PARTS}


def drop_done(work: Path, state: dict):
    """Delete the folders that recorded steps made redundant. Only after the progress that records
    the step is saved: a kill in the middle of a deletion then leaves leftovers (deleted here again
    by the resumed run), never a step to redo from half of its input."""
    for step, folder in LEFTOVERS.items():
        if step in state and (work / folder).exists():
            shutil.rmtree(work / folder)


def max_workers() -> int:
    return max(8, 4 * usable_cores())


def check_options(args):
    if not 0.0 < args.val_fraction < 1.0:
        raise WikiError(f"--val_fraction must be between 0 and 1 (exclusive), got {args.val_fraction}.")
    try:  # before hours of cleaning: GPT-2's encoding is a download the first time
        gpt2_encoding() if args.tokenizer == "gpt2" else parse_bpe_name(args.tokenizer)
    except TokenizerError as e:
        hint = "; or train a tokenizer here, with no download: --tokenizer bpe:8192" if args.tokenizer == "gpt2" else ""
        raise WikiError(f"--tokenizer: {e}{hint}")
    if not 1 <= args.workers <= max_workers():
        raise WikiError(f"--workers must be 1 to {max_workers()} (this machine may use {usable_cores()} cores: "
                        f"more processes only wait their turn, each started at once), got {args.workers}.")
    if args.tokenizer_chars < 1:
        raise WikiError(f"--tokenizer_chars must be positive, got {args.tokenizer_chars:,}.")
    if args.shard_tokens < 1:
        raise WikiError(f"--shard_tokens must be at least 1, got {args.shard_tokens}.")
    if args.max_articles < 0:
        raise WikiError(f"--max_articles must be 0 (all) or more, got {args.max_articles}.")
    if args.checkpoint_mb <= 0:
        raise WikiError(f"--checkpoint_mb must be positive, got {args.checkpoint_mb}.")
    if args.page_timeout < 0:
        raise WikiError(f"--page_timeout must be 0 (no bound) or more seconds, got {args.page_timeout}.")


def check_out(out: Path, overwrite: bool):
    """Before any work: --out is new, or a folder prepare_wiki.py made and --overwrite says to replace."""
    if problem := output_path_problem(out, "--out"):  # a link, a pipe, a device, a file above it
        raise WikiError(problem)
    if not out.exists():
        return
    if looks := not_replaceable(out):
        raise WikiError(f"{out} is not a dataset folder prepare_wiki.py made: it {looks}. So --overwrite "
                        "will not replace it: choose another --out. (Nothing was changed.)")
    if not overwrite:
        raise WikiError(f"{out} already exists. Pass --overwrite to replace it, or choose "
                        "another --out. (Nothing was changed.)")


def resolve_source(args) -> Path:
    if args.source is None:
        return default_source()
    if re.match(r"^[a-zA-Z][\w+.-]*://", args.source) and not re.match(r"^https?://", args.source):  # ftp://, htps://
        raise WikiError(f"{args.source}: only https:// (and http://) URLs are downloaded; give one, or a file here.")
    if not re.match(r"^https?://", args.source):
        return Path(args.source)
    source = download(args.source, Path(args.cache_dir).expanduser())
    if index := index_name(source.name):  # a multistream dump: its index lets workers split it
        try:
            download(args.source.rsplit("/", 1)[0] + "/" + index, source.parent)
        except WikiError as e:
            print(f"warning: no index for {source.name} ({e}); its streams will be found "
                  "by scanning.", file=sys.stderr)
    return source


def tokenizer_for(args, work: Path, state: dict) -> Tokenizer:
    """Pass 2: the tokenizer (bpe: trained on an even sample of the train split), saved in the work folder."""
    if args.tokenizer == "gpt2":
        tok = Tokenizer.from_name("gpt2")
    elif state.get("tokenizer") and (saved := saved_tokenizer(work, state["tokenizer"])) is not None:
        return saved
    else:
        t = time.time()
        # BPE training holds every distinct chunk its pattern cuts the text into, and in Chinese
        # almost every clause is one: an even sample bounds it (docs/data.md, "Tokenizers")
        texts = even_sample(iter_articles(work, "train"), args.tokenizer_chars)
        print(f"training {args.tokenizer} tokenizer on {sum(map(len, texts)):,} characters of the train split "
              f"({len(texts):,} articles, an even sample of at most --tokenizer_chars)...")
        tok = Tokenizer.from_name(args.tokenizer, texts)
        print(f"  trained in {time.time() - t:.1f}s")
    tok.save(work / "tokenizer.json")
    fsync_path(work / "tokenizer.json")  # on disk before the progress that says it is there
    state["tokenizer"] = file_digest(work / "tokenizer.json")  # what a resumed run checks it against
    atomic_write_json(work / PROGRESS, state)
    return tok


def build(files, args, work: Path, state: dict, t0: float) -> dict:
    """The three passes into the work folder -> meta.json's contents."""
    settings = CleanSettings(min_chars=args.min_chars)
    # the pool's exit waits for the writer: after a crash no thread is left writing into
    # work/ to race the run that resumes it (or the cleanup of bad input)
    with ThreadPoolExecutor(1) as pool:
        cleaned = state.get("cleaned") or CleanPass(files, args, settings, work, state).run()
        drop_done(work, state)  # parts/, now that progress.json says they are joined
        print(f"cleaned {cleaned['articles']} articles in {time.time() - t0:.1f}s; dropped: {cleaned['dropped']}")
        if n := cleaned["dropped"].get("duplicate_title"):
            print(f"skipped {n} article(s) whose title repeats an earlier one: e.g. {cleaned['repeated_title']!r} "
                  "(the first article of a title is kept)")
        writing = None
        if "knowledge" not in state:  # knowledge.sqlite, in a thread beside passes 2 and 3 (the
            # main process mostly waits for workers there): ~0.1 s off the x10 sample's 4 s
            parts = sorted((work / KNOWLEDGE_PARTS).glob("*.jsonl"))
            writing = pool.submit(write_knowledge, work / KNOWLEDGE, parts)
        tok = tokenizer_for(args, work, state)
        if "splits" not in state:
            state["splits"] = encode_pass(tok, work, cleaned["members"], args)
            atomic_write_json(work / PROGRESS, state)
        if writing is not None:
            if not writing.done():  # ~14 min for enwiki's graph, beside passes 2 and 3: said, not silent
                print("waiting for the knowledge graph (knowledge.sqlite) to be written...", flush=True)
            state["knowledge"] = writing.result()
            atomic_write_json(work / PROGRESS, state)
        drop_done(work, state)  # knowledge-parts/, now that progress.json says the graph is written
    splits = state["splits"]
    return {
        "format_version": FORMAT_VERSION,
        "made_by": MADE_BY,  # what --overwrite looks for before it replaces a folder
        "source": str(args.source or files[0]),
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


def prepare(args) -> Path:
    t0 = time.time()
    out = Path(args.out)
    check_out(out, args.overwrite)
    check_options(args)
    source = resolve_source(args)
    if source.is_dir() and out.resolve().is_relative_to(source.resolve()):  # a re-run would read the dataset as source
        raise WikiError(f"--out {out} is inside the source folder {source}, whose files are all read as articles: "
                        "choose an --out outside it. (Nothing was changed.)")
    files = source_files(source)
    if out.exists() and any(f.resolve().is_relative_to(out.resolve()) for f in files):
        raise WikiError(f"the source {source} is inside --out {out}, which a new dataset replaces: move it "
                        "out first, or choose another --out. (Nothing was changed.)")
    print(f"source: {source} ({len(files)} file(s)); workers: {args.workers}")
    out.parent.mkdir(parents=True, exist_ok=True)
    work, state = open_work(out, files, args)  # locked until this run ends, however it ends
    try:
        check_out(out, args.overwrite)  # again, locked: a run that held the lock may have published meanwhile
        # a run killed between its meta.json and its publish left a whole dataset: only publish it
        meta = state.get("finished") or finish(files, args, work, state, t0, out)
        with not_in_use(out):  # no index build of it running
            publish(work, out)  # --overwrite: the old folder goes only now that the new one is whole
    finally:
        unlock(work)
    report(out, meta)
    return out


def finish(files, args, work: Path, state: dict, t0: float, out: Path) -> dict:
    """The passes, then meta.json, written last: it marks the work folder a whole dataset."""
    try:
        meta = build(files, args, work, state, t0)
    except WikiError:  # bad input: nothing to resume
        shutil.rmtree(work)
        raise
    # every file's size, so a loader or a check can tell a whole dataset from one that is not;
    # what made it, and that it is newer than the dataset it replaces: so that a run killed
    # before its publish is only published by the next (workdir.finished)
    meta["files"] = {p.name: p.stat().st_size for p in sorted(work.iterdir()) if p.name not in (PROGRESS, "meta.json")}
    meta |= {"made_from": made_from(state["fingerprint"]), "generation": generation(out) + 1}
    atomic_write_json(work / "meta.json", meta)
    (work / PROGRESS).unlink()  # after meta.json: killed between the two, a re-run redoes no pass
    return meta


def report(out: Path, meta: dict):
    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    print(f"\nwrote {out}/ in {meta['seconds']:.1f}s (tokenizer {meta['tokenizer']}, vocab {meta['vocab_size']})")
    for s, st in (("train", tr), ("val", va)):
        print(f"  {s:5s}: {st['articles']:>8,} articles {st['chars']:>14,} chars "
              f"{st['tokens']:>13,} tokens  {st['chars_per_token']:.2f} chars/token  "
              f"{len(meta['shards'][s])} shard(s)")
    k = meta["knowledge"]
    print(f"  knowledge graph: {k['facts']:,} facts from {k['infoboxes']:,} infoboxes, {k['aliases']:,} aliases "
          f"(of {k['redirects']:,} redirects), {k['links']:,} links, {k['sections']:,} section openings "
          f"-> {out / KNOWLEDGE}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="?", help="dump file, .jsonl/.parquet, folder, or https:// (or http://) URL "
                   "(default: the English sample shipped with gensim)")
    p.add_argument("--out", default="data/wiki", help="dataset folder to create (default: data/wiki)")
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2' or 'bpe:VOCAB' trained on the train split (an even sample of it)")
    p.add_argument("--tokenizer_chars", type=int, default=TOKENIZER_CHARS,
                   help=f"a bpe: tokenizer learns from at most this many characters of the train split, an even "
                        f"sample (default {TOKENIZER_CHARS:,}: ~8 GB of memory for Chinese text, under 1 GB for English)")
    p.add_argument("--val_fraction", type=float, default=0.01, help="share of articles for val")
    p.add_argument("--seed", type=int, default=1337, help="seed of the train/val split")
    p.add_argument("--min_chars", type=int, default=200, help="drop articles shorter than this")
    p.add_argument("--workers", type=int, default=usable_cores(),
                   help="worker processes (the output is the same for any number)")
    p.add_argument("--shard_tokens", type=int, default=100_000_000, help="tokens per shard (about)")
    p.add_argument("--max_articles", type=int, default=0, help="stop after this many articles (0: all)")
    p.add_argument("--checkpoint_mb", type=float, default=256,
                   help="save progress every this many MB of source read (a re-run continues from there)")
    p.add_argument("--page_timeout", type=float, default=PAGE_SECONDS,
                   help=f"skip (and name) a page whose cleaning takes longer than this many seconds "
                        f"(default {PAGE_SECONDS:g}; the largest real pages take ~1 s; 0: no bound)")
    p.add_argument("--cache_dir", default="~/.cache/wikigpt", help="where URL sources are downloaded")
    p.add_argument("--overwrite", action="store_true", help="replace an --out folder that prepare_wiki.py made")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        prepare(args)
    except WikiError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except WorkerLost as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:  # a read-only or full disk: what was published before is intact (workdir.py)
        if (message := path_error(e)) is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\ninterrupted: progress is saved in {work_folder(Path(args.out))}; run the same command "
              "again to continue.", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
