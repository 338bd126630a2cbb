"""
Validate the hand-written natural question set against a dataset folder (make demo's data/demo):
    python bench/natural_qa/check.py [--data data/demo]
Exit 0 and counts per kind and split when every check passes; the problems and exit 1 otherwise.
"""
import argparse
import json
import re
import sqlite3
import sys
import unicodedata
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from wikigpt.prep.data import read_articles  # noqa: E402

KINDS = ("fact", "reverse", "stands_for", "agent", "date", "number", "superlative", "yes_no", "section", "definition")
MIN = {"kind": 12, "questions": 160, "articles": 40, "conversations": 24, "out_of_corpus": 36}
problems = []


def words(text: str) -> list[str]:
    """Case-folded, accent-free words: what titles are matched by."""
    text = "".join(c for c in unicodedata.normalize("NFD", text.casefold()) if unicodedata.category(c) != "Mn")
    return re.findall(r"\w+", text)


def contains(seq: list[str], sub: list[str]) -> bool:
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def load(name: str) -> list[dict]:
    rows = [json.loads(line) for line in (HERE / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    ids = [r.get("id") for r in rows]
    for i, n in Counter(ids).items():
        if n > 1:
            problems.append(f"{name}: id {i} used {n} times")
    for r in rows:  # the split rule: test when the id's number is a multiple of 3
        want = "test" if int(re.sub(r"\D", "", r["id"]) or 0) % 3 == 0 else "dev"
        if r.get("split") != want:
            problems.append(f"{name} {r['id']}: split {r.get('split')!r}, the rule says {want!r}")
    test = sum(r.get("split") == "test" for r in rows) / max(len(rows), 1)
    if not 0.25 <= test <= 0.42:
        problems.append(f"{name}: {test:.0%} test, not about a third")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--data", default="data/demo", help="the dataset folder (prepare_wiki.py --out)")
    data = Path(ap.parse_args().data)
    articles = {a["title"]: a for a in read_articles(data)}
    train = {t for t, a in articles.items() if a["split"] == "train"}
    db = sqlite3.connect((data / "knowledge.sqlite").resolve().as_uri() + "?mode=ro", uri=True)
    facts = {}
    for title, value in db.execute("SELECT a.title, f.value FROM facts f JOIN articles a ON a.no = f.subject"):
        facts.setdefault(title, []).append(value)
    haystack = {t: (a["text"] + "\n" + "\n".join(facts.get(t, []))).casefold() for t, a in articles.items()}
    everything = "\n".join(list(haystack.values()) + [t.casefold() for t in articles])
    titles = {t: words(re.sub(r"\s*\([^()]*\)$", "", t)) for t in articles}  # "Animalia (book)" -> animalia
    titles = {t: w for t, w in titles.items() if len("".join(w)) > 1}  # not the letter "A"

    def answerable(where: str, article: str, answers, yes_no=False):
        if article not in train:
            problems.append(f"{where}: article {article!r} is not a train article")
            return
        if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            problems.append(f"{where}: answers must be a non-empty list of strings")
        elif yes_no:
            if answers not in (["yes"], ["no"]):
                problems.append(f"{where}: a yes/no question's answers are ['yes'] or ['no']")
        else:
            for a in answers:
                if a.casefold() not in haystack[article]:
                    problems.append(f"{where}: answer {a!r} is not in {article!r} (text or facts)")

    questions = load("questions.jsonl")
    for q in questions:
        if not re.fullmatch(r"q\d{3}", q["id"]) or q.get("kind") not in KINDS or not q.get("question"):
            problems.append(f"questions {q['id']}: bad id, kind {q.get('kind')!r} or empty question")
        answerable(f"questions {q['id']}", q.get("article"), q.get("answers"), q.get("kind") == "yes_no")
    kinds = Counter(q.get("kind") for q in questions)
    short = {k: kinds[k] for k in KINDS if kinds[k] < MIN["kind"]}
    if short:
        problems.append(f"questions: fewer than {MIN['kind']} of kinds {short}")
    if len(questions) < MIN["questions"]:
        problems.append(f"questions: {len(questions)} < {MIN['questions']}")
    n_articles = len({q.get("article") for q in questions})
    if n_articles < MIN["articles"]:
        problems.append(f"questions: over {n_articles} articles, < {MIN['articles']}")

    conversations = load("conversations.jsonl")
    for c in conversations:
        turns = c.get("turns", [])
        if not re.fullmatch(r"c\d{2,3}", c["id"]) or not 2 <= len(turns) <= 4:
            problems.append(f"conversations {c['id']}: bad id or {len(turns)} turns (2-4)")
        for i, t in enumerate(turns):
            answerable(f"conversations {c['id']} turn {i + 1}", t.get("article"), t.get("answers"))
            named = [x for x, w in titles.items() if contains(words(t.get("question", "")), w)]
            if i and named:  # a follow-up names no entity: "it", "he", "its capital"
                problems.append(f"conversations {c['id']} turn {i + 1}: a follow-up names {named}")
    if len(conversations) < MIN["conversations"]:
        problems.append(f"conversations: {len(conversations)} < {MIN['conversations']}")

    ooc = load("out_of_corpus.jsonl")
    for o in ooc:
        where, q = f"out_of_corpus {o['id']}", o.get("question", "")
        if not re.fullmatch(r"o\d{2,3}", o["id"]) or not isinstance(o.get("near_miss"), bool) or not q:
            problems.append(f"{where}: bad id, near_miss or question")
        elif o["near_miss"]:  # names something the corpus has: "names" is in the question and the corpus
            name = o.get("names", "")
            if not name or name.casefold() not in q.casefold() or not re.search(
                    rf"(?<!\w){re.escape(name.casefold())}(?!\w)", everything):
                problems.append(f"{where}: near miss names {name!r}, not both in the question and the corpus")
        else:
            named = [x for x, w in titles.items() if contains(words(q), w)]
            if named:
                problems.append(f"{where}: not a near miss but names the articles {named}")
    near = sum(bool(o.get("near_miss")) for o in ooc)
    if len(ooc) < MIN["out_of_corpus"] or 2 * near < len(ooc):
        problems.append(f"out_of_corpus: {len(ooc)} questions, {near} near misses (want >= {MIN['out_of_corpus']}, half near)")

    per = Counter((q.get("kind"), q.get("split")) for q in questions)
    print(f"questions.jsonl: {len(questions)} over {n_articles} articles")
    print(f"  {'kind':12} {'dev':>4} {'test':>5} {'all':>4}")
    for k in KINDS:
        print(f"  {k:12} {per[k, 'dev']:4} {per[k, 'test']:5} {kinds[k]:4}")
    for name, rows in (("conversations.jsonl", conversations), ("out_of_corpus.jsonl", ooc)):
        s = Counter(r.get("split") for r in rows)
        extra = (f", {sum(len(c['turns']) for c in rows)} turns" if name.startswith("conv")
                 else f", {near} near misses ({sum(o['near_miss'] for o in rows if o['split'] == 'test')} in test)")
        print(f"{name}: {len(rows)} ({s['dev']} dev, {s['test']} test){extra}")
    for p in problems:
        print("PROBLEM", p)
    print("FAIL" if problems else "OK: every check passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
