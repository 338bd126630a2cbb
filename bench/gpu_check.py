"""
The GPU check: one command that says whether this machine trains and serves as it should, and
that cannot say so wrongly.

    bash bench/gpu_check.sh            # on one GPU: at most 8 minutes, no download

Each check runs in a process of its own under a timeout (bench/gpu_steps.py), so a hang or a
crash costs that row only; the whole run stops starting checks after 8 minutes. One table at the
end: the device; gpt2_124m's real shape (vocab 50304, context 1024) on synthetic tokens (compile
time, micro-step and full-step tokens/s and MFU, peak memory, recompiles and graph breaks, the
attention kernel); train.py end to end in bf16 and fp16 (a fallback to eager fails the row) with
the host syncs of one of its own steps; the engine eager vs CUDA graphs; serve.py under 8 streams;
FSDP on one GPU; int8 refused. On a CPU the rows that need CUDA say "not run" and the rest run at
the demo's scale.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 8 * 60  # the whole check, cold (compiles included), on one GPU
# (check, its timeout in seconds): generous for a cold compile on a GPU, far above a CPU run
CHECKS = [("env", 60), ("data", 150), ("model", 180), ("train_bf16", 180), ("train_fp16", 150),
          ("engine", 180), ("serve", 150), ("fsdp", 150), ("int8", 60)]


def run_check(name: str, timeout: float, work: Path) -> list[tuple[str, str]]:
    """The rows one check printed (lines 'ROW<TAB>name<TAB>value'), or one row saying how it failed."""
    try:
        r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_steps.py"), name, "--work", str(work)],
                           cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        rows = rows_in(e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or "")
        return rows + [(name, f"FAILED: timed out after {timeout:.0f} s")]
    rows = rows_in(r.stdout)
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["(no message)"])[-1][:300]
        rows.append((name, f"FAILED (exit {r.returncode}): {last}"))
    return rows


def rows_in(stdout: str) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")[1:3]) for line in stdout.splitlines() if line.startswith("ROW\t")]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="out/gpu_check", help="where the dataset, runs and logs go")
    p.add_argument("--only", default="", help="comma-separated checks to run (default: all): "
                   + ", ".join(name for name, _ in CHECKS))
    args = p.parse_args()
    work, t0, rows = ROOT / args.work, time.time(), []
    work.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only.split(",")) if args.only else {name for name, _ in CHECKS}
    for name, timeout in CHECKS:
        if name not in wanted:
            continue
        left = BUDGET_S - (time.time() - t0)
        if left < 10:
            rows.append((name, f"not run: the {BUDGET_S // 60}-minute budget ran out"))
            continue
        started = time.time()
        got = run_check(name, min(timeout, left), work)
        rows += got
        print(f"{name}: {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    print("\n| check | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    failed = [name for name, value in rows if value.startswith("FAILED")]
    print(f"\n{len(rows)} rows in {time.time() - t0:.0f} s; " + (f"FAILED: {', '.join(failed)}" if failed else "no failure"))
    (work / "gpu_check.json").write_text(json.dumps(rows, indent=1))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
