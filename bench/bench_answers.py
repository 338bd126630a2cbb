"""
Answers to the hand-written questions of bench/natural_qa/, read by the evidence reader with
copying on (the reply is the best evidence, or "not found"): per kind right / wrong / declined /
missed, follow-up turns, out-of-corpus declines, retrieval recall@5. No model needed.

    python bench/bench_answers.py --data data/demo                 # the dev split
    python bench/bench_answers.py --data data/demo --calibrate     # choose and store the threshold on dev
    python bench/bench_answers.py --data data/demo --confidence    # the learned confidence: 5-fold on dev, stored
    python bench/bench_answers.py --data data/demo --split test     # once, to report
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wikigpt.knowledge.evidence import Reader  # noqa: E402
from wikigpt.knowledge.natural import (MAX_WRONG, choose_threshold, evaluate_reader, format_natural,  # noqa: E402
                                       load_natural, scores_of)
from wikigpt.knowledge.retrieval import add_index_info  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--data", default="data/demo", help="the dataset folder with its index (retrieve.py --build)")
    ap.add_argument("--split", default="dev", choices=("dev", "test"), help="test: only to report, once")
    ap.add_argument("--calibrate", action="store_true",
                    help=f"choose the 'not found' threshold on the dev split (at most {MAX_WRONG:.0%} answered wrong) "
                         "and store it with the index")
    ap.add_argument("--ab", action="store_true", help="A/B on dev: the rules against the learned ranker; "
                    "stores the better one with the index, its threshold chosen on dev")
    ap.add_argument("--confidence", action="store_true",
                    help="the learned confidence (ranker.Confidence): its 5-fold held-out report on dev, then the "
                         "model trained on all of dev and its threshold stored with the index")
    ap.add_argument("--no_confidence", action="store_true", help="judge the best score even if a confidence is stored")
    ap.add_argument("--threshold", type=float, default=None, help="read with this threshold instead of the index's")
    ap.add_argument("--show", default="", help="print the questions with this verdict (right, wrong, missed, declined)")
    args = ap.parse_args()
    reader = Reader.open(args.data)
    if args.no_confidence:
        reader.confidence = None
    if args.confidence:
        if args.split != "dev":
            sys.exit("--confidence trains on the dev split only: drop --split test")
        from wikigpt.knowledge.natural import confidence_rows, cross_validated, fit_confidence
        print(f"dev split, each fold read by a confidence and threshold from the other folds, {args.data}")
        print(format_natural(cross_validated(reader, load_natural("dev"))))
        reader.confidence = None
        reader.confidence, reader.threshold = fit_confidence(confidence_rows(reader, load_natural("dev")))
        add_index_info(args.data, reader.confidence.to_info() | {
            "abstain_below": reader.threshold, "abstain_chosen_on": "bench/natural_qa dev (confidence, held-out folds)"})
        print(f"confidence trained on all of dev, 'not found' below {reader.threshold:.4f} -> {args.data}/index; "
              "as read with it (dev, seen in training):")
    if args.ab:
        from wikigpt.knowledge.natural import compare
        table, rankers = compare(args.data, reader, load_natural("dev"))
        print(f"  {'ranking':34s} {'right':>6s} {'wrong':>6s} {'follow-up':>10s} {'ooc declined':>13s}")
        for name, r in table.items():
            print(f"  {name:34s} {r['right']:6.2f} {r['wrong']:6.2f} {r['follow-up']:10.2f} {r['ooc declined']:13.2f}")
        pick = max(table, key=lambda n: table[n]["right"] + table[n]["follow-up"] - 2 * max(table[n]["wrong"] - MAX_WRONG, 0))
        ranker = rankers["templates + dev"] if "dev" in pick else rankers.get("templates") if "ranker" in pick else None
        add_index_info(args.data, ranker.to_info() if ranker else {"ranker": None})
        reader.ranker, reader.confidence = ranker, None
        add_index_info(args.data, {"confidence": None})  # its features were measured under the old ranking
        print(f"picked: {pick} -> {args.data}/index" + (" (weights trained on templates + all of dev)" * ("dev" in pick)))
        args.calibrate = True
    if args.calibrate:
        if args.split != "dev":
            sys.exit("--calibrate chooses on the dev split only: drop --split test")
        t = choose_threshold(scores_of(reader, load_natural("dev")))  # on the confidence's scale when one is stored
        add_index_info(args.data, {"abstain_below": t, "abstain_chosen_on": "bench/natural_qa dev"})
        reader.threshold = t
        print(f"'not found' below {t:.4f}, chosen on bench/natural_qa's dev split -> {args.data}/index")
    report = evaluate_reader(reader, load_natural(args.split), args.threshold)
    print(f"{args.split} split, {args.data}")
    print(format_natural(report))
    if args.show:
        for row in report["rows"]:
            if row["verdict"] == args.show:
                print(f"  [{row['kind']}] {row['question']!r} {row['score']:.2f} -> {row['reply'][:110]!r}")


if __name__ == "__main__":
    main()
