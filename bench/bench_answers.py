"""
Answers to the hand-written questions of bench/natural_qa/, read by the evidence reader with
copying on (the reply is the best evidence, or "not found"): per kind right / wrong / declined /
missed, follow-up turns, out-of-corpus declines, retrieval recall@5. No model needed; with --ckpt,
also the chat model's pick among the rules' top K candidates (knowledge/likelihood.py).

    python bench/bench_answers.py --data data/demo                 # the dev split
    python bench/bench_answers.py --data data/demo --calibrate     # choose and store the threshold on dev
    python bench/bench_answers.py --data data/demo --confidence    # the learned confidence: 5-fold on dev, stored
    python bench/bench_answers.py --data data/demo --ckpt out/chat/best.pt   # + the model's likelihood
    python bench/bench_answers.py --data data/demo --split test     # once, to report
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from wikigpt.chat.chat_template import ContextOverflow, prompt_room  # noqa: E402
from wikigpt.cli import UsageError, run_main  # noqa: E402
from wikigpt.decoding.load import add_model_args, load_model  # noqa: E402
from wikigpt.knowledge.evidence import Reader  # noqa: E402
from wikigpt.knowledge.grounding import fit_grounded, sources_of  # noqa: E402
from wikigpt.knowledge.likelihood import (K, candidate_scores, conversation, likeliest, reply_scores,  # noqa: E402
                                          tie_broken)
from wikigpt.knowledge.natural import (MAX_WRONG, NATURAL_QA, NaturalSet, choose_threshold, evaluate_reader,  # noqa: E402
                                       format_natural, format_where, holds, load_natural, read_turns, scores_of,
                                       where_answers)
from wikigpt.knowledge.retrieval import add_index_info  # noqa: E402


def grounded_scores(model, tok, found, history, k: int) -> list[float]:
    """reply_scores under the prompt chat.py --rag sends (the rules' best items and the top
    passage as sources): the contrast that shows why likelihood.py's column goes without it."""
    texts = [i.quoted for i in found.items[:k]]  # as a reply says each
    longest = max(len(tok.encode(t)) for t in texts) + 2  # + <|assistant|> and <|end|>
    block = model.cfg.block_size
    sources, messages = [(s.title, s.text) for s in sources_of(found)], conversation(found.question, history)
    try:
        _, messages, _ = fit_grounded(tok, messages, sources, prompt_room(block, longest), block - 1)
    except ContextOverflow:  # the question alone fills the context: no source fits (reply_scores cuts it)
        pass
    return reply_scores(model, tok, messages, texts)


ROWS = {"any": "an accepted answer in the top {k}", "rules": "the rules' first",
        "model": "the model's likeliest of the {k}", "random": "a random one of the {k} (expected)",
        "tie": "the rules, ties broken by the model", "grounded": "the model, prompt grounded as chat.py --rag"}


def likelihood_table(reader: Reader, data: NaturalSet, model, tok, k: int) -> tuple[int, dict]:
    """How many of the answerable questions and turns each way (ROWS) picks right among the
    rules' top k candidates (a stored ranker set aside). Returns (questions and turns, {row: count})."""
    rows, n = dict.fromkeys(ROWS, 0), 0
    saved, reader.ranker = reader.ranker, None
    try:
        for _, found, history, answers in read_turns(reader, data):
            n += 1
            ok = [holds(item.quoted, answers) for item in found.items[:k]]
            if not ok:
                continue
            scores = candidate_scores(model, tok, found, history, k)
            rows["any"] += any(ok)
            rows["rules"] += ok[0]
            rows["model"] += ok[likeliest(scores)]
            rows["random"] += sum(ok) / len(ok)
            rows["tie"] += ok[tie_broken(found.items, scores)]
            rows["grounded"] += ok[likeliest(grounded_scores(model, tok, found, history, k))]
    finally:
        reader.ranker = saved
    return n, rows


def chat_model(args):
    """The --ckpt model, checked before the reader's minutes of work: (model, tok, info)."""
    if args.k < 1:
        raise UsageError(f"--k {args.k}: the model needs at least one candidate to choose; the default is {K}.")
    model, tok, info = load_model(args.ckpt, args.device, args.dtype)
    if not tok.has_chat_tokens():
        raise UsageError(f"{args.ckpt}: its tokenizer has no chat tokens (<|user|>, <|assistant|>, <|end|>), so it "
                         "cannot be asked a question: pass a chat checkpoint (chat_sft.py), e.g. out/chat/best.pt.")
    return model, tok, info


def print_likelihood(args, reader: Reader, model, tok, info):
    start = time.time()
    n, rows = likelihood_table(reader, load_natural(args.split, args.natural), model, tok, args.k)
    print(f"the chat model's pick: {args.ckpt} ({info['device']}), mean log-probability per token of each of "
          f"the rules' top {args.k} as its reply, no sources in the prompt; {n} answerable questions and turns, "
          f"{time.time() - start:.0f} s")
    for key, count in rows.items():
        print(f"  {ROWS[key].format(k=args.k):46s} {round(count, 1):6g} {count / max(n, 1):6.2f}")  # random: a mean


def shown(folder) -> str:
    """The question set's folder as the index info and messages name it (bench/natural_qa, bench/zh_sample)."""
    path = Path(folder).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def refuse_declining_all(threshold: float, folder):
    """Stop before storing a threshold that declines every question: no cut kept the wrong
    answers' upper bound at MAX_WRONG, which takes more questions than a small dev split has."""
    if threshold > 1:
        dev = load_natural("dev", folder)
        n = len(dev.questions) + sum(len(c["turns"]) for c in dev.conversations)
        sys.exit(f"no 'not found' threshold keeps wrong answers at or under {MAX_WRONG:.0%} (an upper bound) on "
                 f"{n} answerable dev questions and turns: with so few, none wrong already bounds above it under "
                 f"~23 and one wrong under ~75. Add hand-written dev questions to {folder}; the index's threshold "
                 "is left as it was.")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/demo", help="the dataset folder with its index (retrieve.py --build)")
    ap.add_argument("--natural", default=str(NATURAL_QA), help="the question set's folder (bench/natural_qa)")
    ap.add_argument("--split", default="dev", choices=("dev", "test"), help="test: only to report, once")
    ap.add_argument("--calibrate", action="store_true",
                    help=f"choose the 'not found' threshold on the dev split (at most {MAX_WRONG:.0%}% answered wrong) "
                         "and store it with the index")
    ap.add_argument("--ab", action="store_true", help="A/B on dev: the rules against the learned ranker; "
                    "stores the better one with the index, its threshold chosen on dev")
    ap.add_argument("--confidence", action="store_true",
                    help="the learned confidence (ranker.Confidence): its 5-fold held-out report on dev, then the "
                         "model trained on all of dev and its threshold stored with the index")
    ap.add_argument("--no_confidence", action="store_true", help="judge the best score even if a confidence is stored")
    ap.add_argument("--threshold", type=float, default=None, help="read with this threshold instead of the index's")
    ap.add_argument("--where", action="store_true", help="also where each answer is among the rules' candidates "
                    "(first, top 8, any, the passages read): what ranking, candidates and retrieval could each win")
    ap.add_argument("--show", default="", help="print the questions with this verdict (right, wrong, missed, declined)")
    add_model_args(ap, ckpt=None, ckpt_help="also the chat model's pick among the rules' top --k candidates "
                   "(its likelihood of each as its reply, knowledge/likelihood.py)")
    ap.add_argument("--k", type=int, default=K, help="with --ckpt: the rules' top candidates the model chooses among")
    args = ap.parse_args(argv)
    if args.threshold is not None and not 0 <= args.threshold <= 1:  # nan too: every answer would be declined
        ap.error(f"--threshold {args.threshold}: give a number from 0 to 1")
    if not (Path(args.natural) / "questions.jsonl").is_file():
        ap.error(f"--natural {args.natural}: no questions.jsonl there (the question set's folder: {NATURAL_QA})")
    chat = chat_model(args) if args.ckpt else None
    reader = Reader.open(args.data)
    reader.remembered = {}  # dev is read several times below (folds, thresholds): each question ranked once
    if args.no_confidence:
        reader.confidence = None
    if args.confidence:
        if args.split != "dev":
            sys.exit("--confidence trains on the dev split only: drop --split test")
        from wikigpt.knowledge.natural import confidence_rows, cross_validated, fit_confidence, template_confidence_rows
        reader.confidence, reader.threshold = None, reader.rules_threshold  # the rows are read by the rules alone
        templates = template_confidence_rows(args.data, reader)
        print(f"dev split, each fold read by a confidence and threshold from the other folds (and {len(templates)} "
              f"template questions), {args.data}")
        print(format_natural(cross_validated(reader, load_natural("dev", args.natural), extra=templates)))
        reader.confidence, reader.threshold = fit_confidence(confidence_rows(reader, load_natural("dev", args.natural))
                                                             + templates)
        refuse_declining_all(reader.threshold, args.natural)
        add_index_info(args.data, reader.confidence.to_info() | {"rules_abstain_below": reader.rules_threshold,
            "abstain_below": reader.threshold, "abstain_chosen_on": f"{shown(args.natural)} dev (confidence, held-out folds)"})
        print(f"confidence trained on all of dev, 'not found' below {reader.threshold:.4f} -> {args.data}/index; "
              "as read with it (dev, seen in training):")
    if args.ab:
        from wikigpt.knowledge.natural import compare
        table, rankers = compare(args.data, reader, load_natural("dev", args.natural))
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
        t = choose_threshold(scores_of(reader, load_natural("dev", args.natural)))  # on the confidence's scale when one is stored
        refuse_declining_all(t, args.natural)
        add_index_info(args.data, {"abstain_below": t, "abstain_chosen_on": f"{shown(args.natural)} dev"})
        reader.threshold = t
        print(f"'not found' below {t:.4f}, chosen on {shown(args.natural)}'s dev split -> {args.data}/index")
    report = evaluate_reader(reader, load_natural(args.split, args.natural), args.threshold)
    print(f"{args.split} split, {args.data}")
    print(format_natural(report))
    if args.show:
        for row in report["rows"]:
            if row["verdict"] == args.show:
                print(f"  [{row['kind']}] {row['question']!r} {row['score']:.2f} -> {row['reply'][:110]!r}")
    if args.where:
        saved, reader.ranker = reader.ranker, None
        print(format_where(where_answers(reader, load_natural(args.split, args.natural))))
        reader.ranker = saved
    if chat:
        print_likelihood(args, reader, *chat)


if __name__ == "__main__":
    run_main(main)
