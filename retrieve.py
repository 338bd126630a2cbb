"""
Search the articles of a dataset folder: build its BM25 index, or show the evidence and passages
a question finds.

    python retrieve.py --data data/demo --build               # writes data/demo/index/
    python retrieve.py --data data/demo "What is the capital of Andorra?"
    python retrieve.py --data data/zh --k 5 "亚里士多德是谁？"

--build also chooses the "not found" threshold on the train split's questions (wikigpt/knowledge/qa_items.py)
and stores it with the index. A query prints the entities it names, the best evidence (facts,
section openings, sentences: wikigpt/knowledge/evidence.py) with its score, and the top passages. The
index itself is wikigpt/knowledge/retrieval.py; the knowledge graph it reads with, wikigpt/knowledge/graph.py.
"""
import argparse
import sys
from pathlib import Path

from wikigpt.cli import UsageError, run_main
from wikigpt.prep.data import DatasetError
from wikigpt.knowledge.evidence import PENDING, Reader
from wikigpt.knowledge.graph import KNOWLEDGE, Knowledge
from wikigpt.knowledge.qa_items import calibrate
from wikigpt.knowledge.retrieval import INDEX_DIR, PASSAGE_CHARS, Index, add_index_info, build_index


def build(folder: str, passage_chars: int):
    if (Path(folder) / KNOWLEDGE).exists():
        Knowledge.open(folder)  # a damaged graph: say so before anything is rebuilt
    learned = had_learned_confidence(folder)
    if threshold_pending(folder, passage_chars):  # a build stopped after its index: hours of work kept
        print(f"{Path(folder) / INDEX_DIR} is whole and of these articles; choosing its 'not found' threshold")
    else:
        info = build_index(folder, passage_chars, extra_info={"calibration": PENDING})  # replaced by calibrate's
        print(f"indexed {info['passages']:,} passages of {info['articles']:,} articles in "
              f"{info['seconds']:.1f}s ({info['passages_per_s']:,} passages/s) -> {Path(folder) / INDEX_DIR}")
    reader = Reader.open(folder)
    if reader.kb is None:
        add_index_info(folder, {"calibration": None})  # nothing to choose it on: the default, said by the note
        print(f"note: {reader.note}")
        return
    chosen = calibrate(folder, reader) or {"calibration": None}  # none: no question to choose it on (a tiny split)
    add_index_info(folder, chosen)
    if "abstain_below" in chosen:
        c = chosen["calibration"]
        print(f"'not found' below an evidence score of {chosen['abstain_below']:.2f}, chosen on {c['questions']} "
              f"train questions ({100 * c['answered']:.0f}% answered) and {c['out_of_corpus']} out-of-corpus ones "
              f"({100 * c['abstained']:.0f}% abstained); knowledge graph: {reader.kb.counts['facts']:,} facts, "
              f"{reader.kb.counts['aliases']:,} aliases, {reader.kb.counts['links']:,} links")
    if learned:  # learned on the old index's evidence: it judges the new one's no longer
        print(f"note: the learned 'not found' confidence of the old index was dropped with it; learn it again "
              f"with: python bench/bench_answers.py --data {folder} --confidence")


def had_learned_confidence(folder: str) -> bool:
    try:
        return bool(Index.open(folder).info.get("confidence"))
    except DatasetError:  # none, another format, damaged
        return False


def threshold_pending(folder: str, passage_chars: int) -> bool:
    """Whether the folder's index is current (this format, these articles, this passage size) and
    only its threshold was never chosen: its build was stopped between the two."""
    try:
        info = Index.open(folder).info
    except DatasetError:  # none, another format, other articles, damaged: built again
        return False
    return info.get("calibration") == PENDING and info.get("passage_chars") == passage_chars


def show(folder: str, query: str, k: int):
    index = Index.open(folder)
    reader = Reader.open(folder, index)
    if reader.note:
        print(f"note: {reader.note}")
    found = reader.find(query)
    named = ", ".join(link.title for link in found.links) or "nothing in the knowledge graph"
    verdict = "answerable" if found.answerable else "not found: below the threshold"
    judged = "" if found.confidence is None else f", confidence {found.confidence:.2f}"  # the scale the threshold is on
    print(f"{query!r} names {named}; best evidence {found.score:.2f}{judged} ({verdict}, threshold "
          f"{found.threshold:.2f}{' on the confidence' if judged else ''})")
    for item in found.items[:3]:
        print(f"  {item.score:.2f} {item.kind:8s} {item.label}: {item.text[:200]}")
    if not found.passages:
        print(f"no passage shares a term with {query!r}.")
    for rank, hit in enumerate(found.passages[:k], 1):
        print(f"[{rank}] {hit.title}  (score {hit.score:.2f}){'  ' + hit.url if hit.url else ''}")
        print("    " + hit.text.replace("\n", "\n    ")[:600])
    sys.stdout.flush()


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("query", nargs="*", help="what to look for")
    p.add_argument("--data", default="data/demo", help="dataset folder (from prepare_wiki.py)")
    p.add_argument("--build", action="store_true", help="(re)build the index of the folder's articles")
    p.add_argument("--k", type=int, default=3, help="how many passages to show")
    p.add_argument("--passage_chars", type=int, default=PASSAGE_CHARS, help="passage size when building")
    args = p.parse_args(argv)
    query = " ".join(args.query).strip()
    if args.k < 1:  # checked before a build, not after it
        raise UsageError(f"--k must be at least 1, got {args.k}")
    if Path(args.data).is_file():  # "--data data/demo/meta.json"
        raise UsageError(f"--data {args.data} is a file: give the dataset folder that prepare_wiki.py wrote "
                         f"({Path(args.data).parent}, say).")
    if args.build:
        if args.passage_chars < 50:
            raise UsageError(f"--passage_chars must be at least 50, got {args.passage_chars}")
        build(args.data, args.passage_chars)
        if not args.query:
            return
    if not query:
        raise UsageError('give a query, e.g. python retrieve.py --data data/demo "Who was Aristotle?"')
    show(args.data, query, args.k)


if __name__ == "__main__":
    run_main(main)
