"""
What a training run leaves behind besides checkpoints: OUT_DIR/metrics.jsonl, one JSON object
per log step ("train") and per eval ("eval"), OUT_DIR/loss.png drawn from it, and
OUT_DIR/summary.json at the end of a run.

    {"type": "train", "kind": "pretrain", "step": 40, "tokens": 81920, "loss": 5.91, "lr": 0.003,
     "tok_per_s": 4100.0, "mfu": 0.012, "elapsed": 21.3}
    {"type": "eval", "kind": "pretrain", "step": 40, "tokens": 81920, "val_loss": 5.87, "val_bpb": 2.41, ...}

train.py and chat_sft.py write it (process 0 only); `python eval.py plot RUN...` overlays runs.
"""
import json
import math
import shutil
from pathlib import Path

from wikigpt.run.durable import replacing, write_text

METRICS = "metrics.jsonl"
PLOT = "loss.png"
SUMMARY = "summary.json"  # how the run ended: steps, val loss, tokens/s (what train() returns)
RUN_FILES = ("last.pt", "best.pt", "last.dcp")  # a training run's checkpoints in its out_dir


PLOT_TITLE = "wikigpt loss curves"  # in the PNG's text (plot_runs): how a file we drew is known


def is_loss_plot(path: Path) -> bool:
    """A PNG that plot_runs drew (its title in the text chunks matplotlib writes before the image),
    whatever its name: eval.py plot replaces only those."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"\x89PNG\r\n\x1a\n") and b"Title\x00" + PLOT_TITLE.encode() in head


def written_by_a_run(path: Path) -> bool:
    """Is OUT_DIR/metrics.jsonl, summary.json or loss.png one a run wrote, which a new run may
    replace? A user's own file of the same name (a folder used for other work) is not."""
    if path.name == PLOT:
        return is_loss_plot(path)
    try:
        text = path.read_text(encoding="utf-8")
        if path.name == SUMMARY:
            return {"step", "stop_reason"} <= json.loads(text).keys()
        # metrics: its first row is ours, or it is empty (a run killed before its first row)
        return text == "" or {"type", "kind", "step"} <= json.loads(text.split("\n", 1)[0]).keys()
    except (OSError, ValueError, AttributeError):  # unreadable, not UTF-8 or JSON, not an object
        return False


def read_metrics(path) -> list[dict]:
    """The rows of a metrics file, or of RUN_DIR/metrics.jsonl. A line cut short by a kill
    (the last one, mid-write) is skipped."""
    path = Path(path)
    path = path / METRICS if path.is_dir() else path
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MetricsLog:
    """Appends rows to OUT_DIR/metrics.jsonl. A fresh run starts the file anew (the run it replaces,
    --overwrite's, ends here: its last checkpoint goes with its rows, so that a kill in the new run's
    first save, between its best.pt and its last.pt, never leaves the old last.pt that --resume would
    continue; it is made only once the new run has passed every check of its input); a resumed run
    (resume_step = the checkpoint's step) keeps the rows up to that step and drops the ones
    logged after it, which the resumed run logs again: no step twice, none missing (the eval of
    the step it resumes at was logged before its checkpoint; a run that resumes at its last step
    evaluates it again, and that row is kept once). The elapsed time goes on from the kept rows',
    so a resumed run's clock does not restart at 0."""

    def __init__(self, out_dir, kind: str, resume_step: int | None = None):
        self.path, self.kind = Path(out_dir) / METRICS, kind
        if resume_step is None:
            (Path(out_dir) / "last.pt").unlink(missing_ok=True)
            shutil.rmtree(Path(out_dir) / "last.dcp", ignore_errors=True)
        kept = []
        if resume_step is not None and self.path.is_file():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
        self.elapsed_before = max((r.get("elapsed", 0.0) for r in kept), default=0.0)
        self.evaluated = {r.get("step") for r in kept if r.get("type") == "eval"}
        # a kill or a power cut here leaves the old file or the new, never half
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, type: str, step: int, elapsed: float, **values):
        if type == "eval":
            if step in self.evaluated:
                return
            self.evaluated.add(step)
        row = {"type": type, "kind": self.kind, "step": step, **values,
               "elapsed": round(self.elapsed_before + elapsed, 3)}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict]:
        return read_metrics(self.path)


# ----------------------------------------------------------------------------------------
# Loss curves

def _series(rows, type, key):
    pts = [(r["tokens"], r[key]) for r in rows if r.get("type") == type and key in r
           and isinstance(r[key], (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_runs(runs: list[tuple[str, list[dict]]], path):
    """Draw runs = [(label, rows)] into one PNG (draw_runs)."""
    path = Path(path)
    with replacing(path) as tmp:  # readers never see half a PNG
        draw_runs(runs).savefig(tmp, format="png", dpi=110, metadata={  # PNG text: which runs are drawn
            "Title": PLOT_TITLE, "Description": "runs: " + ", ".join(label for label, _ in runs)})
    return path


def draw_runs(runs: list[tuple[str, list[dict]]]):
    """The figure of runs = [(label, rows)]: loss (train line, val dots) and val bits per byte
    against tokens seen. An SFT run's val loss is its held-out assistant-token loss."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    from matplotlib.figure import Figure

    # each run adds two legend entries to the loss axes: past 4 runs they would cover the curves,
    # so the legends go below the axes, the figure taller by a line for every two entries
    below = len(runs) > 4
    fig = Figure(figsize=(11, 4.2 + (0.15 * len(runs) if below else 0)), layout="constrained")
    ax_loss, ax_bpb = fig.subplots(1, 2)
    colors = matplotlib.colormaps["tab10"].colors
    for i, (label, rows) in enumerate(runs):
        c, dash = colors[i % len(colors)], ("-", "--", ":")[i // len(colors) % 3]  # past 10 runs: another line style
        sft = any(r.get("kind") == "sft" for r in rows)
        val_name = "held-out assistant loss" if sft else "val loss"
        ax_loss.plot(*_series(rows, "train", "loss"), color=c, ls=dash, alpha=0.45, lw=1, label=f"{label}: train loss")
        ax_loss.plot(*_series(rows, "eval", "val_loss"), "o", ls=dash, color=c, ms=3, lw=1.5, label=f"{label}: {val_name}")
        ax_bpb.plot(*_series(rows, "eval", "val_bpb"), "o", ls=dash, color=c, ms=3, lw=1.5,
                    label=f"{label}: {'held-out assistant tokens' if sft else 'val text'}")
    ax_loss.set(xlabel="tokens seen", ylabel="loss (nats per token)", title="loss")
    ax_bpb.set(xlabel="tokens seen", ylabel="bits per byte", title="val bits per byte (lower is better)")
    for ax in (ax_loss, ax_bpb):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, **(dict(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2) if below else {}))
    return fig


def distinct_names(folders: list[Path], least: int = 1) -> list[str]:
    """Each run's folder name (or file's), with as many folders above it as tell them apart, at
    least `least` parts: a/run and b/run, not run and run."""
    parts = [f.resolve().parts for f in folders]
    for k in range(least, max(map(len, parts), default=1) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return names
