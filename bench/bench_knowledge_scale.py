"""
How the retrieval index scales (project issue 29): build time, build peak memory, size on disk,
open time, query latency and serving memory on synthetic corpora of N x the demo's articles,
and a linear fit extrapolated to English and Chinese Wikipedia.

    python bench/bench_knowledge_scale.py --src data/demo --n 10 100      # ~4 minutes on 2 cores
    python bench/bench_knowledge_scale.py --src data/demo --n 500         # 3.9 M passages, ~20 minutes
    python bench/bench_knowledge_scale.py --report                        # the table again, from results.json

The corpus: copy 0 is the source's articles unchanged; copy c >= 1 titles them "<title> (c)"
and gives ~10 % of their words a random 3-letter suffix ("philosopher" -> "philosopherqzk"), so
the vocabulary grows with the corpus as a real one does instead of repeating the same terms.
200 questions go with it: a third "What is / Who was / Tell me about <title>", the rest runs of
3-5 words from an article's text.

Every build and every serving run is a fresh child process. Build peak memory: the child's
process tree (the build and its worker processes) is sampled every 0.2 s from /proc, the
largest sum of VmRSS. Serving: a child opens the index and asks the 200 questions with k = 8
(evidence.RETRIEVE_K), then again with the named article boosted (what the evidence reader
does); latency per search() call, passages read from disk included; then its VmRSS. The page
cache is warm (the index was just written): cold-disk latency is not measured.

The knowledge graph: a child writes N copies of the source folder's knowledge.sqlite beside the
corpus (copy_graph: N x the demo's ~880 facts, values suffixed as the text is), timed, and of that
KnowledgeWriter.close (indexes, names, the facts' full-text index); then the serving child reads
each of the 200 questions backwards (evidence.Reader.reverse, which every question to the reader
calls), timing each call and the Knowledge.facts_naming inside it, with a digest of what was found.
"""
import argparse
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository root: wikigpt/

from wikigpt.prep.data import ARTICLES, open_articles_for_writing, read_articles  # noqa: E402

WORK = ROOT / "out" / "bench_knowledge_scale"
K = 8  # evidence.RETRIEVE_K
WORD = re.compile(r"([^\W\d_]+)")  # letters only: re.split keeps the words at the odd positions
SUFFIX_SHARE = 0.10
LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
TARGETS = {"enwiki (~20 GB of text)": 20e9, "zhwiki (~1.7 GB of text)": 1.7e9}
# issue 29's targets (2 cores, 24 GiB): build peak RSS <= 2 GB, flat within 20 %; at >= 3 M
# passages query p95 <= 50 ms and serving RSS <= 1.5 GB
TARGET_BUILD_MB, TARGET_P95_MS, TARGET_SERVE_MB = 2048, 50, 1536


# ----------------------------------------------------------------------------------------
# The synthetic corpus

def copies(source: list[dict], n: int, seed: int = 0):
    """The n x len(source) articles, copy by copy (see the module doc)."""
    pieces = [WORD.split(a["text"]) for a in source]  # [sep, word, sep, word, ..., sep]
    rng = np.random.default_rng(seed)
    for c in range(n):
        for a, parts in zip(source, pieces):
            if c == 0:
                yield a
                continue
            yield a | {"title": f"{a['title']} ({c})", "text": suffixed(parts, rng), "id": f"{a.get('id', '')}-{c}",
                       "url": f"{a.get('url', '')}?copy={c}"}


def suffixed(parts: list[str], rng) -> str:
    """A text split by WORD.split, put together again with ~SUFFIX_SHARE of its words given a
    random 3-letter suffix."""
    parts = list(parts)
    words = np.arange(1, len(parts), 2)
    chosen = words[rng.random(len(words)) < SUFFIX_SHARE]
    for i, s in zip(chosen.tolist(), rng.integers(0, 26, size=(len(chosen), 3))):
        parts[i] += "".join(LETTERS[s])
    return "".join(parts)


def copy_graph(src: Path, n: int, folder: Path, seed: int = 2) -> dict:
    """folder/knowledge.sqlite: the source's graph copied as copies() copies its articles (copy c
    >= 1: titles "<title> (c)", ~10 % of the words of each fact value suffixed, each redirect
    "<alias> (c)"; sections and links as they are), written by KnowledgeWriter as prepare_wiki.py
    does. The source's persons come back only from their infoboxes (a lead's "(born ...)" is not
    stored). Its article numbers are the corpus's, so the evidence reader takes both."""
    from wikigpt.knowledge.graph import KNOWLEDGE, KnowledgeWriter

    db = sqlite3.connect(f"{(src / KNOWLEDGE).resolve().as_uri()}?mode=ro", uri=True)
    titles = [t for t, in db.execute("SELECT title FROM articles ORDER BY no")]
    rows = lambda sql, no: db.execute(sql, (no,)).fetchall()  # noqa: E731
    records = [{"facts": rows("SELECT attribute, value FROM facts WHERE subject = ? ORDER BY ord", no),
                "sections": rows("SELECT heading, opening FROM sections WHERE subject = ? ORDER BY ord", no),
                "links": "".join(t for t, in rows("SELECT targets FROM links WHERE subject = ?", no))}
               for no in range(len(titles))]
    aliases = db.execute("SELECT alias, subject FROM aliases ORDER BY rowid").fetchall()
    db.close()
    folder.mkdir(parents=True, exist_ok=True)
    rng, writer = np.random.default_rng(seed), KnowledgeWriter(folder / KNOWLEDGE)
    for c in range(n):
        named = (lambda t: t) if c == 0 else (lambda t: f"{t} ({c})")  # noqa: E731
        for title, record in zip(titles, records):
            if c:
                record = record | {"facts": [(a, suffixed(WORD.split(v), rng)) for a, v in record["facts"]]}
            writer.article(named(title), record)
        for alias, subject in aliases:
            writer.redirect(named(alias), named(titles[subject]))
    t0 = time.time()
    counts = writer.close()
    return {"facts": counts["facts"], "close_s": time.time() - t0}


def questions(source: list[dict], n: int, count: int = 200, seed: int = 1) -> list[dict]:
    """count questions, {"q": text, "article": the article it names, or None}."""
    rng, out = random.Random(seed), []
    for i in range(count):
        j, c = rng.randrange(len(source)), rng.randrange(n)
        a = source[j]
        title, article = (a["title"] if c == 0 else f"{a['title']} ({c})"), c * len(source) + j
        kind = i % 6
        if kind < 4:
            out.append({"q": ("What is {}?", "What is {}?", "Who was {}?", "Tell me about {}.")[kind].format(title),
                        "article": article})
        else:
            words = [w for w in WORD.findall(a["text"]) if len(w) > 3]
            start = rng.randrange(max(1, len(words) - 5))
            out.append({"q": " ".join(words[start:start + rng.randint(3, 5)]), "article": None})
    return out


def make_corpus(src: Path, n: int, folder: Path) -> Path:
    """folder/articles.jsonl.gz (as prepare_wiki.py writes it) and folder/questions.json."""
    if (folder / ARTICLES).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    source = list(read_articles(src))
    tmp = folder / (ARTICLES + ".tmp")
    with open_articles_for_writing(tmp) as f:
        for row in copies(source, n):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (folder / "questions.json").write_text(json.dumps(questions(source, n), ensure_ascii=False))
    tmp.replace(folder / ARTICLES)
    return folder


# ----------------------------------------------------------------------------------------
# The children: one build, one serving run

def child_build(data: str):
    import resource

    from wikigpt.knowledge.retrieval import build_index

    t0 = time.time()
    info = build_index(data, quiet=True)
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"info": info, "wall_s": time.time() - t0,
                      "cpu_s": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime}))


def child_graph(src: str, n: str, folder: str):
    t0 = time.time()
    row = copy_graph(Path(src), int(n), Path(folder))
    print(json.dumps(row | {"wall_s": time.time() - t0}))


def vm_rss_mb(pid="self") -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def child_serve(data: str, questions_file: str, graph: str = ""):
    from wikigpt.knowledge.retrieval import Index

    qs = json.loads(Path(questions_file).read_text())
    t0 = time.time()
    index = Index.open(data)
    open_s = time.time() - t0
    plain, boosted = [], []
    for item in qs:
        t = time.perf_counter()
        index.search(item["q"], K)
        plain.append(time.perf_counter() - t)
    for item in qs:
        t = time.perf_counter()
        index.search(item["q"], K, boost=[item["article"]] if item["article"] is not None else [])
        boosted.append(time.perf_counter() - t)
    titled = [i for i in qs if i["article"] is not None]  # the named article's passage first?
    right = sum(index.search(i["q"], 1)[0].title == index.passage(int(index.lead_ids[i["article"]])).title
                for i in titled)
    ms = lambda xs, p: round(1e3 * float(np.percentile(xs, p)), 2)  # noqa: E731
    row = {"open_s": round(open_s, 3), "p50_ms": ms(plain, 50), "p95_ms": ms(plain, 95),
           "boosted_p50_ms": ms(boosted, 50), "boosted_p95_ms": ms(boosted, 95),
           "title_top1": f"{right}/{len(titled)}"}
    if graph:
        reverse, naming, found = read_backwards(index, graph, qs)
        row |= {"reverse_p50_ms": ms(reverse, 50), "reverse_p95_ms": ms(reverse, 95), "naming_p50_ms": ms(naming, 50),
                "naming_p95_ms": ms(naming, 95), "reverse_found": found}
    print(json.dumps(row | {"serving_rss_mb": round(vm_rss_mb())}))


def read_backwards(index, graph: str, qs: list[dict]) -> tuple[list, list, str]:
    """The graph read backwards, as each question to the evidence reader does: seconds per
    Reader.reverse call, per Knowledge.facts_naming call inside it, and what was found: the facts
    named per question (a digest of them, in no order: which of two equally long phrases names a
    fact first may differ from run to run), and the reader's items."""
    import hashlib

    from wikigpt.knowledge.evidence import Reader
    from wikigpt.knowledge.graph import Knowledge

    reader = Reader(index, Knowledge.open(graph))
    naming, named, facts_naming = [], [], reader.kb.facts_naming

    def timed(*args, **kwargs):
        t = time.perf_counter()
        out = facts_naming(*args, **kwargs)
        naming.append(time.perf_counter() - t)
        named.append(sorted((s, a) for s, a, _, _ in out))
        return out

    reader.kb.facts_naming = timed
    reverse, items = [], 0
    for item in qs:
        links = reader.links(item["q"])
        t = time.perf_counter()
        items += len(reader.reverse(item["q"], links))
        reverse.append(time.perf_counter() - t)
    digest = hashlib.sha256(repr(named).encode()).hexdigest()[:12]
    return reverse, naming or [0.0], f"{sum(map(len, named))} facts (sha256 {digest}), {items} items"


# ----------------------------------------------------------------------------------------
# The parent

def tree_rss_mb(pid: int) -> float:
    """VmRSS of a process and all its descendants."""
    kids = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            total += vm_rss_mb(p)
        except (OSError, StopIteration):
            pass
    return total


def run_child(args: list[str], sample: bool = False) -> dict:
    """Run this file as a child: its last stdout line (JSON), and with `sample` the peak VmRSS
    of its process tree."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    peak, stop = [0.0], threading.Event()

    def sampler():
        while not stop.wait(0.2):
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))

    if sample:
        threading.Thread(target=sampler, daemon=True).start()
    out, err = proc.communicate()
    stop.set()
    if proc.returncode != 0:
        sys.exit(f"{args[0]} of {args[-1]} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1]) | ({"tree_peak_rss_mb": round(peak[0])} if sample else {})


def du_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def bench(src: Path, n: int, work: Path, keep: bool) -> dict:
    corpus = make_corpus(src, n, work / f"x{n}")
    print(f"x{n}: building the index of {corpus / ARTICLES} ...", file=sys.stderr, flush=True)
    build = run_child(["build", str(corpus)], sample=True)
    graph = corpus / "graph"  # beside the corpus, not in it: the index's build does not calibrate with it
    print(f"x{n}: building a knowledge graph of {n} copies of {src}'s ...", file=sys.stderr, flush=True)
    made = run_child(["graph", str(src), str(n), str(graph)])
    print(f"x{n}: serving 2 x 200 questions, and 200 read backwards ...", file=sys.stderr, flush=True)
    serve = run_child(["serve", str(corpus), str(corpus / "questions.json"), str(graph)])
    info = build["info"]
    row = {"n": n, "articles": info["articles"], "passages": info["passages"],
           "text_mb": round(sum(len(a["text"]) for a in read_articles(corpus)) / 1e6, 1),
           "build_wall_s": round(build["wall_s"], 1), "build_cpu_s": round(build["cpu_s"], 1),
           "build_peak_rss_mb": build["tree_peak_rss_mb"], "index_mb": du_mb(corpus / "index"),
           "graph_facts": made["facts"], "graph_build_s": round(made["wall_s"], 1),
           "graph_close_s": round(made["close_s"], 1), "graph_mb": du_mb(graph),
           "load_avg_1m": round(os.getloadavg()[0], 2), "cores": len(os.sched_getaffinity(0))} | serve
    if not keep:
        shutil.rmtree(corpus / "index", ignore_errors=True)
        shutil.rmtree(graph, ignore_errors=True)
    return row


def save(results: Path, row: dict) -> list[dict]:
    rows = json.loads(results.read_text()) if results.is_file() else []
    rows = sorted([r for r in rows if r["n"] != row["n"]] + [row], key=lambda r: r["n"])
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(rows, indent=1))
    return rows


def report(rows: list[dict]):
    print("| N x demo | text MB | passages | build s (CPU s) | build peak RSS MB | index MB | open s "
          "| p50 / p95 ms | boosted p50 / p95 ms | serving RSS MB | title top-1 | load (1 min) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']}{' (' + r['source'] + ')' if r.get('source') else ''} | {r['text_mb']:,} | {r['passages']:,} "
              f"| {r['build_wall_s']} ({r['build_cpu_s']}) | {r['build_peak_rss_mb']} | {r['index_mb']:,} "
              f"| {r['open_s']:.3f} | {r['p50_ms']} / {r['p95_ms']} | {r['boosted_p50_ms']} / {r['boosted_p95_ms']} "
              f"| {r['serving_rss_mb']} | {r['title_top1']} | {r['load_avg_1m']} |")
    graphs = [r for r in rows if "reverse_p50_ms" in r]
    if graphs:
        print("\n| N x demo | facts | graph build s (of it the tables' close) | knowledge.sqlite MB "
              "| Reader.reverse p50 / p95 ms | facts_naming p50 / p95 ms | found (200 questions) |")
        print("|---:|---:|---:|---:|---:|---:|---|")
        for r in graphs:
            print(f"| {r['n']} | {r['graph_facts']:,} | {r['graph_build_s']} ({r['graph_close_s']}) | {r['graph_mb']:,} "
                  f"| {r['reverse_p50_ms']} / {r['reverse_p95_ms']} | {r['naming_p50_ms']} / {r['naming_p95_ms']} "
                  f"| {r['reverse_found']} |")
    peaks, big = [r["build_peak_rss_mb"] for r in rows], [r for r in rows if r["passages"] >= 3e6]
    verdict = lambda ok: "met" if ok else "missed"  # noqa: E731
    print(f"\nbuild peak RSS {min(peaks)}-{max(peaks)} MB: <= {TARGET_BUILD_MB} {verdict(max(peaks) <= TARGET_BUILD_MB)}, "
          f"flat within 20 % {verdict(max(peaks) <= 1.2 * min(peaks))}")
    for r in big:
        print(f"at {r['passages'] / 1e6:.1f} M passages: query p95 {r['p95_ms']} ms (<= {TARGET_P95_MS}: "
              f"{verdict(r['p95_ms'] <= TARGET_P95_MS)}), serving RSS {r['serving_rss_mb']} MB (<= {TARGET_SERVE_MB}: "
              f"{verdict(r['serving_rss_mb'] <= TARGET_SERVE_MB)})")
    if len(rows) >= 2:
        extrapolate(rows)


def extrapolate(rows: list[dict]):
    """Least-squares lines read at enwiki's and zhwiki's size: in the number of passages for
    time, disk, latency and serving memory (pages touched: an upper bound); in its logarithm
    for build peak memory, which the writer heap bounds and which grew ~0.2 GB per 10x here."""
    x = np.array([r["passages"] for r in rows], float)
    chars_per_passage = sum(r["text_mb"] for r in rows) * 1e6 / x.sum()
    linear = {"build s": "build_wall_s", "build CPU s": "build_cpu_s", "index MB": "index_mb", "p95 ms": "p95_ms",
              "serving RSS MB": "serving_rss_mb"}
    fits = {name: np.polyfit(x, np.array([r[key] for r in rows], float), 1) for name, key in linear.items()}
    peak = np.polyfit(np.log10(x), np.array([r["build_peak_rss_mb"] for r in rows], float), 1)
    print(f"\nfits over N = {[r['n'] for r in rows]}, passages = text / {chars_per_passage:.0f} chars:")
    for target, chars in TARGETS.items():
        p = chars / chars_per_passage
        print(f"  {target}: ~{p / 1e6:.1f} M passages -> "
              + ", ".join(f"{name} {max(np.polyval(f, p), 0):,.0f}" for name, f in fits.items())
              + f", build peak RSS MB {np.polyval(peak, np.log10(p)):,.0f} (log fit)")


def main(argv):
    if argv and argv[0] == "build":
        return child_build(argv[1])
    if argv and argv[0] == "serve":
        return child_serve(*argv[1:])
    if argv and argv[0] == "graph":
        return child_graph(*argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default="data/demo", help="a dataset folder with articles.jsonl.gz (make demo's)")
    p.add_argument("--n", type=int, nargs="*", default=[], help="corpus sizes, in copies of the source")
    p.add_argument("--work", default=str(WORK), help="where the corpora, indexes and results.json go")
    p.add_argument("--keep", action="store_true", help="keep each built index (default: removed after its row)")
    p.add_argument("--report", action="store_true", help="print the table of results.json")
    args = p.parse_args(argv)
    work, results = Path(args.work), Path(args.work) / "results.json"
    if args.n and not (Path(args.src) / ARTICLES).is_file():
        sys.exit(f"{args.src} has no {ARTICLES}: make one with make demo (its step 1), or pass --src DATASET_FOLDER.")
    rows = json.loads(results.read_text()) if results.is_file() else []
    for n in args.n:
        rows = save(results, bench(Path(args.src), n, work, args.keep))
        print(json.dumps(rows[-1] if rows[-1]["n"] == n else next(r for r in rows if r["n"] == n)), flush=True)
    if not rows:
        sys.exit(f"no results in {results} yet: run with --n 10 100")
    report(rows)
    print(f"\nresults: {results}")


if __name__ == "__main__":
    main(sys.argv[1:])
