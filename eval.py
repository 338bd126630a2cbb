"""
Is my model any good? Score checkpoints on the same data, side by side, and draw loss curves.

    python eval.py --ckpt out/demo/best.pt --ckpt out/chat/best.pt --out out/report.json
    python eval.py --ckpt out/chat/best.pt --sft_data my_test.jsonl --max_examples 500
    python eval.py plot out/demo out/chat --out out/loss.png      # several runs in one figure

Writes report.json and report.md (one column per checkpoint) and prints the table:
  pretraining  val bits per byte, loss and perplexity on the dataset's val split: the same
               text for every checkpoint (bits per byte also compares different tokenizers)
  chat         (chat checkpoints) held-out dialogues: the assistant-token loss, and sampled
               replies scored against the real ones (wikigpt/knowledge/scores.py): BLEU, chrF, ROUGE-L,
               distinct-1/2, the share of replies that loop, end-of-turn and role-leak rates
  knowledge    (chat checkpoints, a dataset with a search index) held-out Wikipedia questions of
               four kinds (lead, fact, section, out-of-corpus): retrieval recall, answer accuracy
               and F1 without retrieval, with retrieval and with copying, and "not found"
               precision / recall (wikigpt/knowledge/wikiqa.py; the per-kind table is printed and in report.md)
  natural      (a dataset whose articles the hand-written set bench/natural_qa asks about, or
               --natural FOLDER) questions as people ask them, read by the evidence reader with
               copying on: right / wrong / declined per kind, missed answers, follow-ups,
               out-of-corpus declined, recall@5 (wikigpt/knowledge/natural.py)
Everything is seeded: the same command gives the same report.
"""
import argparse
import json
import math
import random
import shlex
import sys
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from wikigpt.knowledge import scores
from wikigpt.knowledge import natural, wikiqa
from wikigpt.chat.sft_config import SFTConfig
from wikigpt.chat.sft_rows import TokenRows, rows_of, val_set
from wikigpt.chat.sft_data import heldout_conversations, parse_sft_data, read_dialogues
from wikigpt.decoding.load import add_dtype_arg, load_model
from wikigpt.cli import UsageError, output_file, run_main
from wikigpt.run.progress import progress_bar
from wikigpt.prep.data import load_dataset, same_dataset
from wikigpt.run.durable import write_text
from wikigpt.decoding.generate import generate_batch
from wikigpt.knowledge.grounding import reader_of
from wikigpt.knowledge.retrieval import INDEX_DIR, Index
from wikigpt.run.runlog import METRICS, PLOT, distinct_names, is_loss_plot, plot_runs, read_metrics
from wikigpt.decoding.sampling import CHAT_DEFAULTS, add_sampling_knobs, params_from_args
from wikigpt.chat.chat_template import ContextOverflow, Message, fit_history, prompt_room
from wikigpt.run.dist import Dist
from wikigpt.loss_eval import evaluate, token_bytes_table
from wikigpt.batches import val_windows


# ----------------------------------------------------------------------------------------
# Pretraining: the dataset's val split

def retokenize(ids: np.ndarray, src, dst) -> np.ndarray:
    """Val ids of one tokenizer -> the same text in another, document breaks kept as breaks."""
    docs, start = [], 0
    for i in [*np.flatnonzero(ids == src.doc_sep), len(ids)]:
        docs.append(src.decode(ids[start:i]))
        start = i + 1
    out = []
    for k, doc in enumerate(dst.encode_batch(docs)):
        out += ([dst.doc_sep] if k else []) + doc
    return np.array(out, dtype=np.int64)


def loss_on(model, tok, x, y, batch_size) -> dict:
    device = str(model.device)
    r = evaluate(model, x, y, token_bytes_table(tok, model.cfg.padded_vocab, device), batch_size,
                 Dist(device=device), nullcontext())
    model.eval()  # evaluate() hands the model back in training mode
    return r


def pretraining_rows(models, ds, block: int, args) -> list[dict]:
    """Every model reads the same val text, in windows of `block` (the smallest context)."""
    x, y = val_windows(ds.val, block, args.eval_tokens)
    stream = torch.cat([x.flatten(), y[-1, -1:]])  # (n * block + 1,) the val text as ids
    values = {"bpb": [], "loss": [], "ppl": []}
    for model, tok, info in models:
        if tok.spec != ds.tokenizer.spec:  # another tokenizer: the same text, its own ids
            ids = torch.from_numpy(retokenize(stream.numpy(), ds.tokenizer, tok))
            n = max((len(ids) - 1) // block, 1)
            mx, my = ids[:n * block].view(n, block), ids[1:n * block + 1].view(n, block)
        else:
            mx, my = x, y
        r = loss_on(model, tok, mx, my, args.batch_size)
        values["bpb"].append(r["bpb"])
        values["loss"].append(None if args.bpb_only else r["loss"])
        values["ppl"].append(None if args.bpb_only else math.exp(min(r["loss"], 50)))
    rows = [row("pretraining", "val bits per byte", values["bpb"], "lower")]
    if not args.bpb_only:
        rows += [row("pretraining", "val loss (nats per token)", values["loss"], "lower"),
                 row("pretraining", "val perplexity", values["ppl"], "lower")]
    return rows


def row(section, name, values, better, digits=3) -> dict:
    return {"section": section, "metric": name, "values": values, "better": better, "digits": digits}


# ----------------------------------------------------------------------------------------
# Chat: held-out dialogues

def chat_conversations(args, chat_infos: list[dict], tok, block: int) -> tuple[list, str]:
    """The dialogue set: --sft_data files whole, or the conversations the (first) chat
    checkpoint's own SFT run held out of the built-in data."""
    cfg = SFTConfig(skip_bad_records=args.skip_bad_records == "true")
    if args.sft_data:
        convs, skipped = [], []
        for path, _ in parse_sft_data(args.sft_data):
            convs += list(read_dialogues(path, cfg, skipped))
        where = args.sft_data + (f" ({len(skipped)} malformed record(s) skipped, e.g. {skipped[0]})" if skipped else "")
    else:
        stored = chat_infos[0]["train_config"]
        for f in fields(SFTConfig):
            if f.name in ("seed", "sft_val_fraction", "system_prompt"):
                setattr(cfg, f.name, stored.get(f.name, getattr(cfg, f.name)))
        convs = list(heldout_conversations(cfg, tok, block))
        where = f"built-in dialogues held out by {chat_infos[0]['label']}'s SFT (seed {cfg.seed})"
    if not convs:
        raise UsageError(f"no conversations in {where}: give a dialogue file with --sft_data.")
    if not any(next(rows_of(tok, conv, block + 1, Counter()), None) for conv in convs):  # said before any scoring
        raise UsageError(f"none of the {len(convs)} conversations in {where} fits the chat model's {block}-token "
                         "context (each needs its first question and some of its answer in it): give shorter dialogues.")
    return convs, where


def reply_examples(convs, max_examples: int, seed: int) -> list[tuple[list[Message], str]]:
    """(history, reference reply): one assistant turn, chosen at random, of each of up to
    max_examples conversations in a seeded random order (so every source and language shows)."""
    rng, out = random.Random(seed), []
    for conv in rng.sample(convs, len(convs)):
        turns = [j for j, m in enumerate(conv) if m.role == "assistant" and j > 0]
        if turns:
            j = rng.choice(turns)
            out.append((conv[:j], conv[j].content))
        if len(out) == max_examples:
            break
    return out


def chat_scores(model, tok, convs, examples, args, seed: int) -> dict:
    block = model.cfg.block_size
    rows = [r for conv in convs for r in rows_of(tok, conv, block + 1, Counter())]
    tokens = np.array([t for ids, _ in rows for t in ids], dtype=np.uint16)
    mask = np.array([m for _, ms in rows for m in ms], dtype=np.uint8)
    offsets = np.cumsum([0] + [len(ids) for ids, _ in rows])
    x, y = val_set(TokenRows(tokens, mask, offsets), block, args.eval_tokens)
    loss = loss_on(model, tok, x, y, args.batch_size)["loss"]

    room = prompt_room(block, args.max_new_tokens)
    prompts, refs = [], []
    for history, reference in examples:
        try:
            prompts.append(fit_history(tok, history, room, block - 1)[0])
            refs.append(reference)
        except ContextOverflow:
            continue  # a last message longer than the context: nothing to ask
    with progress_bar(total=len(prompts), desc="sampling replies", unit="reply", file=sys.stderr) as bar:
        replies = generate_batch(model, tok, prompts, args.max_new_tokens, params_from_args(args),
                                 seeds=[seed + i for i in range(len(prompts))], on_done=bar.update)
    other_specials = set(tok.special.values()) - {tok.end_of_turn}
    texts = [tok.decode([t for t in r if t not in tok.special.values()]).strip() for r in replies]
    n = max(len(replies), 1)
    return {
        "assistant_loss": loss, "bleu": scores.bleu(texts, refs), "chrf": scores.chrf(texts, refs),
        "rouge_l": sum(scores.rouge_l(t, r) for t, r in zip(texts, refs)) / n,
        "distinct_1": scores.distinct(texts, 1), "distinct_2": scores.distinct(texts, 2),
        "loops": sum(map(scores.loops, texts)) / n,
        "end_of_turn": sum(r[-1:] == [tok.end_of_turn] for r in replies) / n,
        "role_leaks": sum(bool(other_specials & set(r)) for r in replies) / n,
        "reply_tokens": sum(len(r) for r in replies) / n,
        "replies": len(replies),
        "examples": [{"prompt": h[-1].content, "reply": t, "reference": r}
                     for (h, r), t in list(zip(examples, texts))[:3]]}


CHAT_ROWS = [("assistant_loss", "held-out assistant-token loss", "lower"),
             ("bleu", "BLEU (0-100)", "higher"), ("chrf", "chrF (0-100)", "higher"),
             ("rouge_l", "ROUGE-L F", "higher"), ("distinct_1", "distinct-1", "higher"),
             ("distinct_2", "distinct-2", "higher"), ("loops", "replies that loop (share)", "lower"),
             ("end_of_turn", "replies ending their turn (share)", "higher"),
             ("role_leaks", "replies leaking a role token (share)", "lower"),
             ("reply_tokens", "mean reply length (tokens)", "")]
QA_ROWS = [(("recall@1",), "retrieval recall@1", "higher"), (("recall@5",), "retrieval recall@5", "higher"),
           (("without retrieval", "f1"), "answer F1 without retrieval", "higher"),
           (("with retrieval", "f1"), "answer F1 with retrieval", "higher"),
           (("with retrieval, copying", "f1"), "answer F1 with retrieval, copying", "higher"),
           (("without retrieval", "rouge_l"), "answer ROUGE-L without retrieval", "higher"),
           (("with retrieval", "rouge_l"), "answer ROUGE-L with retrieval", "higher"),
           (("with retrieval, copying", "rouge_l"), "answer ROUGE-L with retrieval, copying", "higher")]
# the other kinds of question (wikiqa.py); the whole per-kind table is in report.md
QA_ROWS += [(("kinds", kind, row_name, key), f"{kind} {metric} {row_name}", "higher") for row_name in wikiqa.ROWS
            for kind, key, metric in (("fact", "accuracy", "accuracy"), ("section", "f1", "F1"),
                                      ("out-of-corpus", "abstained", "abstained"))]
QA_ROWS += [(("abstention", wikiqa.COPYING, "precision"), "'not found' precision, copying", "higher"),
            (("abstention", wikiqa.COPYING, "answered"), "in-corpus answered, copying", "higher")]


# ----------------------------------------------------------------------------------------
# The report

def format_table(report: dict) -> str:
    labels = [c["label"] for c in report["checkpoints"]]
    lines = ["| metric | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    section = None
    for r in report["rows"]:
        if r["section"] != section:
            section = r["section"]
            lines.append(f"| **{section}** |" + " |" * len(labels))
        arrow = {"lower": " ↓", "higher": " ↑"}.get(r["better"], "")
        cells = ["–" if v is None else f"{v:.{r['digits']}f}" for v in r["values"]]
        lines.append(f"| {r['metric']}{arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replaceable(path: Path, looks_made: bool, inputs: list, option: str):
    """An output path that is none of the inputs, and, if a file is there, one this command
    made before (looks_made): a typo in --out never replaces a checkpoint or a README."""
    if any(path.resolve() == Path(i).resolve() for i in inputs):
        raise UsageError(f"{option} {path} is one of the inputs: choose another {option}.")
    if path.is_file() and not looks_made:
        raise UsageError(f"{option} {path} exists and is not one eval.py wrote: choose another {option} "
                         "(or move that file away).")


def earlier_report(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
        return text.startswith("# Evaluation report") if path.suffix == ".md" else "checkpoints" in json.loads(text)
    except (OSError, ValueError, TypeError):  # unreadable, not UTF-8, not JSON, not an object
        return False


def write_report(report: dict, out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").unlink(missing_ok=True)  # (checked to be ours) a kill before the new one: none, never the old
    write_text(out, json.dumps(report, indent=2, ensure_ascii=False) + "\n")  # each file whole, even after a crash
    notes = "".join(f"- {n}\n" for n in report["notes"])
    md = f"# Evaluation report\n\n{format_table(report)}\n\n↓ lower is better, ↑ higher is better.\n\n{notes}"
    for label, table in report.get("qa_tables", {}).items():
        md += f"\n## Knowledge, per kind of question: {label}\n\n```\n{table}\n```\n"
    if "natural_table" in report:
        md += f"\n## Natural questions, per kind (with retrieval, copying)\n\n```\n{report['natural_table']}\n```\n"
    for c in report["checkpoints"]:
        for ex in c.get("examples", []):
            md += f"\n{c['label']}: **{ex['prompt']}**  \n→ {ex['reply']}  \n(reference: {ex['reference']})\n"
    write_text(out.with_suffix(".md"), md)


def check_tokenizers(models, bpb_only: bool):
    if len({json.dumps(tok.spec, sort_keys=True) for _, tok, _ in models}) > 1 and not bpb_only:
        detail = ", ".join(f"{info['label']}: {tok.name}" for _, tok, info in models)
        raise UsageError(f"the checkpoints use different tokenizers ({detail}), so their losses per "
                         "token cannot be compared. Compare them by bits per byte only, which does not "
                         "depend on the tokenizer: add --bpb_only.")


def run_eval(args) -> dict:
    if args.natural not in ("none", "auto"):  # a question set that cannot be read: said before any work
        natural.load_natural(args.natural_split, Path(args.natural))
    models = []
    ckpts = list({Path(path).resolve(): path for path in reversed(args.ckpt)}.values())[::-1]  # twice: once
    labels = distinct_names([Path(path) for path in ckpts], least=2)  # a/chat/best.pt, b/chat/best.pt
    for path, label in zip(ckpts, labels):
        model, tok, info = load_model(path, args.device, args.dtype)
        info["label"] = label  # what a model's scores are kept under: one per model
        models.append((model, tok, info))
    check_tokenizers(models, args.bpb_only)
    data = args.data or next((i["data"] for _, _, i in models if (Path(i["data"]) / "meta.json").is_file()), "")
    if not data:
        raise UsageError("which dataset? None of the checkpoints' training datasets is here ("
                         + ", ".join(sorted({i["data"] or "none" for _, _, i in models})) + "): pass --data FOLDER.")
    ds = load_dataset(data)
    torch.manual_seed(args.seed)
    report = {"checkpoints": [{"path": i["path"], "label": i["label"], "kind": i["kind"], "step": i["step"],
                               "parameters": m.n_params(), "tokenizer": t.name} for m, t, i in models],
              "settings": {k: v for k, v in vars(args).items() if k != "command"}, "rows": [], "notes": []}
    same = {i["label"]: same_dataset(i["data"], data) for _, _, i in models}
    elsewhere, unknown = [k for k, v in same.items() if v is False], [k for k, v in same.items() if v is None]
    if elsewhere:  # another dataset's val split may hold articles of their train split
        report["notes"].append(f"data: {data} is not the dataset {', '.join(elsewhere)} trained on: its val articles "
                               "may be ones they trained on, and their val rows then overstate them.")
    if unknown:
        report["notes"].append(f"data: whether {data} is the dataset {', '.join(unknown)} trained on cannot be told "
                               "(the folder recorded is not found from here): if not, its val articles may be ones "
                               "they trained on.")
    chat = [(m, t, i) for m, t, i in models if i["kind"] == "sft"]
    if chat and not args.bpb_only:  # read first: a dialogue file that cannot be used is said before any work
        convs, where = chat_conversations(args, [i for _, _, i in chat], chat[0][1], min(m.cfg.block_size for m, _, _ in chat))
    print(f"pretraining: {len(models)} checkpoint(s) on {data} val ...", file=sys.stderr)
    block = min(m.cfg.block_size for m, _, _ in models)
    report["rows"] += pretraining_rows(models, ds, block, args)
    report["notes"].append(f"pretraining: the first {args.eval_tokens:,} val tokens of {data} (in "
                           f"{models[0][1].name} tokens), windows of {block}; bits per byte = loss in "
                           "bits / UTF-8 bytes, comparable across tokenizers.")
    for _, _, info in models:
        if info["kind"] != "sft":
            report["notes"].append(f"{info['label']} is a base (pretrained) checkpoint: it gets the "
                                   "pretraining rows only (it was never taught the chat turns).")
    if chat and not args.bpb_only:
        examples = reply_examples(convs, args.max_examples, args.seed)
        report["notes"].append(f"chat: {len(convs)} conversations ({where}); {len(examples)} replies "
                               f"sampled (temperature {args.temperature}, top-k {args.top_k}, top-p "
                               f"{args.top_p}, repetition penalty {args.repetition_penalty}, presence / frequency "
                               f"penalties {args.presence_penalty} / {args.frequency_penalty}, seed {args.seed}).")
        index = Index.open(data) if (Path(data) / INDEX_DIR).is_dir() else None
        if index is None:
            report["notes"].append(f"knowledge: {data} has no search index (python retrieve.py --data "
                                   f"{shlex.quote(str(data))} --build).")
        per_model = {}
        for model, tok, info in chat:
            print(f"chat: {info['label']} ...", file=sys.stderr)
            per_model[info["label"]] = chat_scores(model, tok, convs, examples, args, args.seed)
            if index is not None:
                per_model[info["label"]]["qa"] = wikiqa.evaluate_qa(model, tok, data, index, 3, args.seed,
                                                                 max_items=args.max_examples)

        def values(get):
            return [get(per_model[i["label"]]) if i["label"] in per_model else None for _, _, i in models]

        for key, name, better in CHAT_ROWS:
            report["rows"].append(row("chat", name, values(lambda s: s[key]), better,
                                      1 if key in ("bleu", "chrf", "reply_tokens") else 3))
        if index is not None:
            qa = next(iter(per_model.values()))["qa"]
            unseen = "not in its train split" if elsewhere else "never trained on"
            report["notes"].append(f"knowledge: {qa['questions']} questions about {qa['articles']} val "
                                   f"articles of {data}, {unseen}, and out-of-corpus ones; 'answer' "
                                   "rows: lead questions against each article's opening sentence; fact: the "
                                   "infobox value; section: its first sentence (per-kind table below).")
            report["qa_tables"] = {label: wikiqa.format_report(s["qa"]) for label, s in per_model.items()}
            for keys, name, better in QA_ROWS:
                report["rows"].append(row("knowledge", name, values(lambda s: _dig(s["qa"], keys)), better))
        if index is not None:
            natural_rows(report, args, data, index, values(lambda s: 1))
        for c in report["checkpoints"]:
            if c["label"] in per_model:
                c["examples"] = per_model[c["label"]]["examples"]
    return report


def natural_set(args, index: Index):
    """The hand-written questions to ask, or None: --natural FOLDER, or (auto) bench/natural_qa
    when the dataset holds every article its questions are about (the demo's)."""
    if args.natural == "none":
        return None
    folder = natural.NATURAL_QA if args.natural == "auto" else Path(args.natural)
    if not (folder / "questions.jsonl").is_file():
        if args.natural == "auto":
            return None
        raise UsageError(f"--natural {folder}: no questions.jsonl there (the format: bench/natural_qa/README.md).")
    data = natural.load_natural(args.natural_split, folder)
    reader = reader_of(index)
    articles = {q["article"] for q in data.questions}
    if args.natural == "auto" and (reader.kb is None or any(reader.kb.subject(a) is None for a in articles)):
        return None  # another dataset: its questions would be about articles it lacks
    return folder, data, reader


# the natural rows: (report keys, metric) of natural.evaluate_reader's report
NATURAL_ROWS = [(("answerable", "right"), "answered right"), (("answerable", "wrong"), "answered wrong (confident)"),
                (("answerable", "declined"), "declined"), (("answerable", "missed"), "missed (declined, evidence held it)"),
                (("answerable", "recall"), "retrieval recall@5")]


def natural_rows(report: dict, args, data: str, index: Index, chat_columns: list):
    """The natural questions' rows: with copying on the reply is the best evidence, the same for
    every chat checkpoint (their column), so they are read once, by the evidence reader."""
    found = natural_set(args, index)
    if found is None:
        return
    folder, questions, reader = found
    print(f"natural questions: {folder} ({args.natural_split}) ...", file=sys.stderr)
    r = natural.evaluate_reader(reader, questions)
    per_chat = lambda v: [v if c is not None else None for c in chat_columns]  # noqa: E731
    section = "natural questions, with retrieval, copying"
    for keys, name in NATURAL_ROWS:
        report["rows"].append(row(section, name, per_chat(_dig(r, keys)), "lower" if "wrong" in name or
                                  name.startswith(("declined", "missed")) else "higher"))
    for kind, k in sorted(r["kinds"].items()):
        for key in ("right", "wrong", "declined"):
            report["rows"].append(row(section, f"{kind} {key}", per_chat(k[key] / max(k["n"], 1)),
                                      "higher" if key == "right" else "lower"))
    f, o = r["follow_up"], r["out_of_corpus"]
    report["rows"].append(row(section, "follow-up turns right", per_chat(f["right"] / max(f["n"], 1)), "higher"))
    report["rows"].append(row(section, "out-of-corpus declined", per_chat(
        (o["declined"] + o["near_declined"]) / max(o["n"] + o["near_n"], 1)), "higher"))
    report["natural"] = {k: v for k, v in r.items() if k != "rows"} | {"folder": str(folder), "split": args.natural_split}
    report["natural_table"] = natural.format_natural(r)
    report["notes"].append(f"natural questions: {r['questions']} hand-written answerable questions, "
                           f"{f['n']} conversation turns and {o['n'] + o['near_n']} out-of-corpus ones of {folder} "
                           f"({args.natural_split} split), over {data}; with copying on, a reply is the best evidence "
                           "or 'not found', so these rows are the reader's and the same for each chat checkpoint. The "
                           "model alone and retrieval without copying are not asked these questions (the "
                           "'knowledge' rows above compare those three on generated questions).")


def _dig(d, keys):
    for k in keys:
        d = d[k]
    return d


# ----------------------------------------------------------------------------------------

def plot_main(argv):
    p = argparse.ArgumentParser(prog="eval.py plot", description="Overlay the loss curves of several runs.")
    p.add_argument("runs", nargs="+", help=f"run folders (with {METRICS}) or metrics files")
    p.add_argument("--out", default="loss.png", help="the PNG to write")
    args = p.parse_args(argv)
    out = output_file(args.out, "--out")  # a link, pipe or device at --out: refused, not replaced by the PNG
    metrics = [run / METRICS if run.is_dir() else run for run in map(Path, args.runs)]
    replaceable(out, is_loss_plot(out), metrics, "--out")  # a plot of ours: not a photo, not a run's metrics
    runs, given = [], list(dict.fromkeys(map(Path, args.runs)))  # a run given twice is drawn once
    folder = out.resolve().parent
    if out.name == PLOT and (folder / METRICS).is_file() \
            and folder not in {p.resolve().parent for p in metrics}:  # a run's own plot, of a run not drawn
        raise UsageError(f"--out {out} is the loss plot of the run {folder}, which its training draws: write the "
                         "comparison elsewhere (nothing was changed).")
    names = distinct_names([run if run.is_dir() else run.parent for run in given])
    for run, name in zip(given, names):
        path = run / METRICS if run.is_dir() else run
        if not path.is_file():
            raise UsageError(f"{run}: no {METRICS} there. Give the out_dir of a train.py or chat_sft.py run.")
        try:
            rows = [r for r in read_metrics(path) if isinstance(r, dict) and "step" in r]
        except UnicodeDecodeError:  # a checkpoint or a picture given as a run
            rows = []
        if not rows:
            raise UsageError(f"{path} holds no metrics: give a run's out_dir or its {METRICS} (the run may have "
                             "logged nothing yet).")
        runs.append((name, rows))
        if out.resolve().parent == path.resolve().parent and (len(given) > 1 or out.name != "loss.png"):  # its own
            # loss.png, which its training redraws: the same picture redrawn, never another one
            raise UsageError(f"--out {out} is in the folder of the run {path.parent}, whose training draws its "
                             "own loss.png there: write the comparison elsewhere (nothing was changed).")
    if out.suffix.lower() != ".png":  # written as PNG whatever the name says
        raise UsageError(f"--out {out}: the plot is a PNG; give a path ending in .png.")
    print(f"wrote {plot_runs(runs, args.out)} ({len(runs)} runs)")


def main(argv):
    if argv[:1] == ["plot"]:
        return plot_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", action="append", required=True, help="a checkpoint; repeat to compare several")
    p.add_argument("--out", default="report.json", help="report.json path (report.md is written beside it)")
    p.add_argument("--data", default="", help="dataset folder (default: the one the first checkpoint trained on)")
    p.add_argument("--sft_data", default="", help="dialogue files to score chat on (default: held-out built-in dialogues)")
    p.add_argument("--skip_bad_records", choices=["true", "false"], default="false",
                   help="true: skip --sft_data's malformed records (and say how many) instead of stopping")
    p.add_argument("--max_examples", type=int, default=100, help="replies sampled, at most; QA questions asked: about as many, "
                   "shared among the kinds (at least 2 of each)")
    p.add_argument("--max_new_tokens", type=int, default=64, help="length limit of each sampled reply")
    p.add_argument("--eval_tokens", type=int, default=65536, help="val tokens for the losses")
    p.add_argument("--batch_size", type=int, default=16, help="windows per forward for the losses")
    p.add_argument("--bpb_only", action="store_true", help="only val bits per byte (any tokenizers)")
    p.add_argument("--natural", default="auto", help="hand-written questions (bench/natural_qa's format) to ask "
                   "with retrieval: a folder, none, or auto (bench/natural_qa when the dataset holds its articles)")
    p.add_argument("--natural_split", default="dev", choices=("dev", "test"), help="test: only to report, once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    add_dtype_arg(p)
    add_sampling_knobs(p, CHAT_DEFAULTS)
    args = p.parse_args(argv)
    params_from_args(args)  # bad sampling knobs: a clear error before any work
    for name in ("max_examples", "eval_tokens", "batch_size"):  # (max_new_tokens: params_from_args)
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}.")
    out = output_file(args.out, "--out")  # before minutes of evaluation
    if out.suffix.lower() == ".md":
        raise UsageError(f"--out {out}: give the .json path; the .md report is written beside it.")
    for path, option in ((out, "--out"), (output_file(out.with_suffix(".md"), "--out (report.md beside it)"),
                                          "--out (its .md beside it)")):
        replaceable(path, earlier_report(path), args.ckpt + [args.data] * bool(args.data), option)
    t0 = time.time()
    report = run_eval(args)
    write_report(report, out)
    print(format_table(report))
    for label, table in report.get("qa_tables", {}).items():
        print(f"\n{label}: {table}\n")
    if "natural_table" in report:
        print(f"\n{report['natural_table']}\n")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    run_main(main)
