"""
The GPU check: one command that says whether this machine trains and serves as it should, and
that cannot say so wrongly.

    bash bench/gpu_check.sh            # on one GPU: at most 8 minutes, no download

Each check runs in a process group of its own under a timeout (bench/gpu_steps.py), so a hang or
a crash costs that row only, and nothing a check started outlives it; a check the 8-minute budget
cuts or leaves out is a FAILED row, never a silent pass. One table at the end: the device;
gpt2_124m's real shape (vocab 50304, context 1024) on synthetic tokens (compile time, micro-step
and full-step tokens/s and MFU, peak memory, graph breaks and graphs compiled after the first
step, the attention kernel); train.py end to end in bf16 and fp16 (a fallback to eager fails the
row) with the host syncs of one of its own steps; the engine eager vs CUDA graphs (a fallback to
eager fails the row); serve.py under 8 streams; torchrun DDP where there are 2 GPUs; FSDP on one GPU, compiled; int8 refused. On a CPU
the rows that need CUDA say "not run", the rest run at the demo's scale, and the run exits 3 (no
GPU was checked) unless --cpu says that was meant; on a machine with a GPU that torch does not
see, those rows are FAILED.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ROOT / "bench" / "gpu_steps.py"  # the checks themselves, one per process
# (check, its timeout in seconds): generous for a cold compile on a GPU, far above a CPU run
CHECKS = [("env", 60), ("data", 150), ("model", 180), ("train_bf16", 180), ("train_fp16", 150),
          ("engine", 180), ("serve", 150), ("ddp", 150), ("fsdp", 300), ("int8", 60)]  # fsdp: 3 compiled runs
# The timeouts are each check's bound on a hang; together (1,560 s) they are the worst case, not a
# healthy run's time. The budget is what a healthy run takes on one GPU, cold (on a 2-core CPU the
# whole check ran in about 5 minutes), and keeps the table inside a lent machine's time: a check
# it cuts short or leaves out did not pass, so its row says FAILED (--budget gives more time).
BUDGET_S = 8 * 60


def run_check(name: str, timeout: float, work: Path) -> list[tuple[str, str]]:
    """The rows one check printed (lines 'ROW<TAB>name<TAB>value'), or one row saying how it failed.
    The check runs in a session of its own: subprocess.run(timeout=) killed gpu_steps.py alone and
    left what it started (train.py, chat_sft.py, serve.py, the compile workers) running."""
    proc = subprocess.Popen([sys.executable, str(STEPS), name, "--work", str(work)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        failure = None
    except subprocess.TimeoutExpired:  # it hangs, or it exited and something it started holds our pipes
        failure = (f"FAILED: timed out after {timeout:.0f} s" if proc.poll() is None else
                   f"FAILED: processes it started still ran {timeout:.0f} s in (killed)")
    # Its whole group, even when it exited on time: a process it left behind dies with it. The
    # group's id (gpu_steps.py's pid) is not handed out again while a process of the group lives.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is empty: nothing was left behind
    if failure:
        out, err = proc.communicate()  # reaps it; the pipes close with the group
    rows = rows_in(out)
    if failure:
        return rows + [(name, failure)]
    if proc.returncode:
        last = (err.strip().splitlines() or ["(no message)"])[-1][:300]
        rows.append((name, f"FAILED (exit {proc.returncode}): {last}"))
    return rows


def rows_in(stdout: str) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")[1:3]) for line in stdout.splitlines() if line.startswith("ROW\t")]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="out/gpu_check", help="where the dataset, runs and logs go")
    names = [name for name, _ in CHECKS]
    p.add_argument("--only", default="", help="comma-separated checks to run (default: all): " + ", ".join(names))
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole run (default: %(default)s)")
    p.add_argument("--cpu", action="store_true", help="a run without a GPU on purpose: rows that need CUDA "
                   "and were not run do not fail it (without --cpu: exit 3)")
    args = p.parse_args()
    wanted = set(args.only.split(",")) if args.only else set(names)
    if wanted - set(names):  # a typo ran nothing and passed
        p.error(f"unknown check(s) {', '.join(sorted(wanted - set(names)))}; the checks are: {', '.join(names)}")
    work, t0, rows = ROOT / args.work, time.time(), []
    work.mkdir(parents=True, exist_ok=True)
    for name, timeout in CHECKS:
        if name not in wanted:
            continue
        left = args.budget - (time.time() - t0)
        if left < 10:
            rows.append((name, f"FAILED: not run, the {args.budget:.0f} s budget ran out (--budget gives more)"))
            continue
        started = time.time()
        got = run_check(name, min(timeout, left), work)
        rows += got
        print(f"{name}: {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    print("\n| check | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    failed = [name for name, value in rows if value.startswith("FAILED")]
    # "no failure" with the CUDA rows not run is not a GPU that passed: it says so, and exits 3
    not_run = [name for name, value in rows if value.startswith("not run")]
    print(f"\n{len(rows)} rows in {time.time() - t0:.0f} s; " + (f"FAILED: {', '.join(failed)}" if failed else "no failure")
          + (f"; {len(not_run)} rows need CUDA and were not run: no GPU was checked" if not_run else ""))
    (work / "gpu_check.json").write_text(json.dumps(rows, indent=1))
    if not failed and not_run and not args.cpu:
        print("exit 3: this was not a GPU check (run it where torch sees a GPU; --cpu: a CPU run on purpose)")
    sys.exit(1 if failed else 3 if not_run and not args.cpu else 0)


if __name__ == "__main__":
    main()
