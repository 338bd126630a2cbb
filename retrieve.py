"""
Search the articles of a dataset folder: build its BM25 index, or print the passages a query finds.

    python retrieve.py --data data/demo --build               # writes data/demo/index/
    python retrieve.py --data data/demo "Who was Aristotle?"   # the top passages, titles, scores
    python retrieve.py --data data/zh --k 5 "亚里士多德是谁？"

The index itself (passages, terms, scoring) is wikigpt/retrieval.py.
"""
import argparse
import sys
from pathlib import Path

from wikigpt.cli import UsageError, run_main
from wikigpt.retrieval import INDEX_DIR, PASSAGE_CHARS, Index, build_index


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("query", nargs="*", help="what to look for")
    p.add_argument("--data", default="data/demo", help="dataset folder (from prepare_wiki.py)")
    p.add_argument("--build", action="store_true", help="(re)build the index of the folder's articles")
    p.add_argument("--k", type=int, default=3, help="how many passages to show")
    p.add_argument("--passage_chars", type=int, default=PASSAGE_CHARS, help="passage size when building")
    args = p.parse_args(argv)
    if args.build:
        if args.passage_chars < 50:
            raise UsageError(f"--passage_chars must be at least 50, got {args.passage_chars}")
        info = build_index(args.data, args.passage_chars)
        print(f"indexed {info['passages']:,} passages of {info['articles']:,} articles in "
              f"{info['seconds']:.1f}s ({info['passages_per_s']:,} passages/s) -> {Path(args.data) / INDEX_DIR}")
        if not args.query:
            return
    query = " ".join(args.query).strip()
    if not query:
        raise UsageError('give a query, e.g. python retrieve.py --data data/demo "Who was Aristotle?"')
    if args.k < 1:
        raise UsageError(f"--k must be at least 1, got {args.k}")
    index = Index.open(args.data)
    found = index.search(query, args.k)
    if not found:
        print(f"no passage shares a term with {query!r}.")
    for rank, hit in enumerate(found, 1):
        print(f"[{rank}] {hit.title}  (score {hit.score:.2f}){'  ' + hit.url if hit.url else ''}")
        print("    " + hit.text.replace("\n", "\n    ")[:600])
    sys.stdout.flush()


if __name__ == "__main__":
    run_main(main)
