"""
What training a bpe: tokenizer holds in memory as its text grows (why prepare_wiki.py trains on at
most --tokenizer_chars characters): rustbpe keeps every distinct chunk its pattern cuts the text
into, and in Chinese nearly every clause between two punctuation marks is one.

    python bench/bench_bpe_memory.py                 # zh and en, 5 and 10 MB each (~1 minute)
    python bench/bench_bpe_memory.py --lang zh --mb 20

Each size runs in a process of its own (the peak RSS is a process's). The texts are synthetic:
"zh" clauses of ~12 characters drawn Zipf-like from 3,500 common CJK characters between "，"
and "。" (about zhwiki's prose: mostly distinct clauses), "en" words drawn Zipf-like from 2 M
letter strings (words repeat, as English does).
"""
import argparse
import itertools
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository root: wikigpt/


def texts(lang: str, mb: float) -> list[str]:
    rng, out, size = random.Random(0), [], 0
    if lang == "zh":
        chars = [chr(c) for c in range(0x4E00, 0x4E00 + 3500)]
        weights = list(itertools.accumulate(1 / (i + 1) for i in range(len(chars))))

        def doc():
            return "".join("".join(rng.choices(chars, cum_weights=weights, k=max(2, int(rng.expovariate(1 / 12)))))
                           + rng.choice("，，，。、") for _ in range(60))  # ~60 clauses, ~2 KB of UTF-8
    else:
        words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(2_000_000)]
        weights = list(itertools.accumulate(1 / (i + 1) for i in range(len(words))))

        def doc():
            return " ".join(rng.choices(words, cum_weights=weights, k=350)) + "."
    while size < mb * 1e6:
        out.append(doc())
        size += len(out[-1].encode())
    return out


def peak_mb() -> float:
    """This process's peak RSS: VmHWM, which starts afresh with the program (ru_maxrss, as Linux
    keeps it across fork and exec, would start at the parent's, which made the text)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def measure(path: Path, lang: str, mb: float, vocab: str):
    """In this process: the text read from `path` (made in another: its generator's tables would
    hide the training's peak), then the tokenizer trained on it; one line of figures."""
    sys.path.insert(0, str(ROOT))
    from wikigpt.tokenizer import Tokenizer

    docs = path.read_text(encoding="utf-8").split("\n")
    chars = sum(map(len, docs))
    before, t = peak_mb(), time.time()
    Tokenizer.from_name(vocab, iter(docs))
    peak = peak_mb()
    print(f"| {lang} | {mb:g} | {chars:,} | {before:,.0f} | {peak:,.0f} | {(peak - before) * 2**20 / chars:,.0f} "
          f"| {time.time() - t:.1f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lang", choices=("zh", "en"), nargs="+", default=["zh", "en"])
    p.add_argument("--mb", type=float, nargs="+", default=[5, 10], help="MB of UTF-8 text per run")
    p.add_argument("--vocab", default="bpe:8192")
    p.add_argument("--one", help=argparse.SUPPRESS)  # a child process: the text file of one size
    args = p.parse_args()
    if args.one:
        return measure(Path(args.one), args.lang[0], args.mb[0], args.vocab)
    print(f"| text | MB | characters | RSS with the text read (MB) | peak while training {args.vocab} (MB) | "
          "bytes a character | seconds |\n|---|---:|---:|---:|---:|---:|---:|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for lang in args.lang:
            for mb in args.mb:
                path = Path(tmp) / f"{lang}_{mb:g}.txt"
                path.write_text("\n".join(t.replace("\n", " ") for t in texts(lang, mb)), encoding="utf-8")
                subprocess.run([sys.executable, __file__, "--one", str(path), "--lang", lang, "--mb", str(mb),
                                "--vocab", args.vocab], check=True)


if __name__ == "__main__":
    main()
