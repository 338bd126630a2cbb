"""
Data preparation at dump scale, side by side with WikiExtractor (the tool people use for this
job): wall time, MB/s of XML, peak memory and the markup left in the output.

    python bench/bench_prep.py                  # x10 and x40 samples, 1 and 2 workers (~6 minutes)
    python bench/bench_prep.py --copies 10 --workers 2 --no-extractor

The dumps are the built-in Wikipedia sample (206 pages) repeated `copies` times (each copy's
titles, ids and first line made distinct, so that no copy is dropped as a duplicate), written
as Wikimedia writes a multistream dump: one bz2 stream per 100 pages plus the index file.
WikiExtractor 3.1.0 (`pip install wikiextractor==3.1.0`) runs with `--json` and the same
number of processes; it extracts text only, prepare_wiki.py also tokenizes (GPT-2 BPE) and
writes the shards.
"""
import argparse
import bz2
import gzip
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: its commands and wikigpt/

from wikigpt.prep.dumps import default_source
from wikigpt.prep.ranges import write_multistream

LEFTOVERS = {"{{": "{{", "}}": "}}", "[[": "[[", "[[File:": "[[File:", "<ref": "<ref",
             "&amp;": "&amp;", "&lt;": "&lt;", "&nbsp;": "&nbsp;"}


def build_dump(copies: int, folder: Path) -> Path:
    """The built-in sample, `copies` times over, as a multistream dump with its index."""
    path = folder / f"enwiki-x{copies}-pages-articles-multistream.xml.bz2"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    xml = bz2.decompress(default_source().read_bytes())
    first, last = xml.index(b"  <page>"), xml.rindex(b"</page>") + len(b"</page>\n")
    pages = re.findall(rb"  <page>.*?</page>\n", xml[first:last], re.S)
    out = []
    for k in range(copies):
        for p in pages:
            if k:
                p = p.replace(b"</title>", b" (%d)</title>" % k, 1)
                p = re.sub(rb"<id>(\d+)</id>", lambda m: b"<id>%d</id>" % (int(m[1]) + k * 10**7), p, 1)
                if b"<redirect" not in p:  # a distinct first line: no copy is a duplicate
                    p = re.sub(rb'(<text[^>]*>)', rb"\1Copy %d of this page.\n" % k, p, 1)
            out.append(p)
    write_multistream(xml[:first], out, xml[last:], path)
    return path


def run_measured(cmd: list) -> tuple[float, float]:
    """Run cmd; its wall time and the peak memory (PSS) of its process tree (MB), polled."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.25)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr.read()[-2000:]}")
    return seconds, peak / 1e6


def tree_rss(pid: int) -> int:
    """Memory of pid and all its descendants, from /proc: the proportional set size (PSS),
    which counts a page shared by forked workers once in total, not once per process."""
    total = 0
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        total += int(re.search(r"Pss:\s+(\d+)", rollup)[1]) * 1024
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_rss(int(child))
    except (OSError, TypeError):  # the process ended while we looked
        pass
    return total


def leftovers(texts) -> dict:
    counts = dict.fromkeys(LEFTOVERS, 0)
    for text in texts:
        for name, s in LEFTOVERS.items():
            counts[name] += text.count(s)
    return counts


def ours(dump: Path, workers: int, out: Path) -> dict:
    seconds, rss = run_measured([sys.executable, "prepare_wiki.py", dump, "--out", out,
                                 "--workers", str(workers), "--overwrite"])
    with gzip.open(out / "articles.jsonl.gz", "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    return {"seconds": seconds, "rss": rss, "articles": len(texts), "leftovers": leftovers(texts)}


def extractor(dump: Path, workers: int, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    seconds, rss = run_measured([sys.executable, "-m", "wikiextractor.WikiExtractor", dump, "--json",
                                 "--processes", str(workers), "-q", "-o", out])
    texts = [json.loads(line)["text"] for f in sorted(out.rglob("wiki_*"))
             for line in f.read_text().splitlines()]
    return {"seconds": seconds, "rss": rss, "articles": len(texts), "leftovers": leftovers(texts)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, nargs="+", default=[10, 40])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-extractor", action="store_true", help="only prepare_wiki.py")
    p.add_argument("--folder", default="data/bench_prep")
    args = p.parse_args()
    folder = Path(args.folder)
    tools = [("prepare_wiki.py (clean + tokenize + shards)", ours)]
    if not args.no_extractor:
        if importlib.util.find_spec("wikiextractor") is None:
            sys.exit("WikiExtractor is not installed: `pip install wikiextractor==3.1.0`, "
                     "or pass --no-extractor to time prepare_wiki.py alone.")
        tools.insert(0, ("WikiExtractor 3.1.0 --json (text only)", extractor))
    print("| dump | tool | workers | wall s | MB/s of XML | peak memory MB (PSS) | articles | leftover markup |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for copies in args.copies:
        dump = build_dump(copies, folder)
        xml_mb = len(bz2.decompress(dump.read_bytes())) / 1e6
        for name, tool in tools:
            for w in args.workers:
                r = tool(dump, w, folder / f"out-x{copies}-{tool.__name__}-{w}")
                left = ", ".join(f"{v} `{k}`" for k, v in r["leftovers"].items() if v) or "none"
                print(f"| x{copies} ({dump.stat().st_size / 1e6:.0f} MB bz2, {xml_mb:.0f} MB XML) | {name} "
                      f"| {w} | {r['seconds']:.1f} | {xml_mb / r['seconds']:.1f} | {r['rss']:.0f} "
                      f"| {r['articles']:,} | {left} |", flush=True)


if __name__ == "__main__":
    main()
