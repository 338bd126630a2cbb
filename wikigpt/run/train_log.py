"""
What the training loop says while it runs: the log lines (process 0), OUT_DIR/metrics.jsonl
and its loss plot (runlog.py), Weights & Biases if asked, and the clock behind tokens/s, MFU
and the ETA. The loop calls `TrainLog.train_step` and `TrainLog.evaluated`; it keeps no timers
of its own.
"""
import json
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as torch_dist

from wikigpt.run.durable import write_text
from wikigpt.run.runlog import METRICS, PLOT, SUMMARY, MetricsLog, plot_runs
from wikigpt.run.throughput import fmt_time, held_mb, peak_flops, peak_memory_mb, sum_dtype, synchronize

# A non-finite loss, coded for an all-reduce MIN across processes: BAD_KINDS_N * step + the index
# of its kind, so that the earliest step wins and its kind comes with it in one integer.
BAD_KINDS = (float("nan"), float("inf"), float("-inf"))
BAD_KINDS_N = len(BAD_KINDS)
NOT_DIVERGED = 2 ** 62  # larger than any code: what MIN keeps while no step went bad
# loss.png is drawn at the first eval, then at an eval at most this often, and at the run's end (or
# its divergence): a drawing takes ~0.5 s on a CPU, most of a short run's evals; a run stopped
# otherwise leaves it at most this far behind metrics.jsonl (eval.py plot redraws it)
PLOT_EVERY_S = 60


class TrainLog:
    def __init__(self, cfg, dist, kind: str, model, tok, dtype, micro: int, accum: int, lora: dict | None,
                 resumed_from, resume_step: int | None):
        """Opens the run's logs and says what the run is: its shape, batch, MFU's peak, LoRA,
        where it resumes from (micro rows x accum micro-steps per process and optimizer step)."""
        self.cfg, self.dist = cfg, dist
        self.tokens_per_step = micro * model.cfg.block_size * accum * dist.world
        self.out_dir = Path(cfg.out_dir)
        peak, note = peak_flops(dist.device, dtype)  # one process's
        self.flops_peak = peak * dist.world  # tokens/s counts every process's tokens, so the peak counts them all
        self.peak_note = f"{dist.world} x {note}" if dist.world > 1 else note
        self.flops_per_token = model.flops_per_token()
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if lora:  # frozen weights get no weight gradient: 4 of the 6 FLOPs per weight and token
            self.flops_per_token -= 2 * (model.n_params(for_flops=True) - self.trainable)
        self.wandb = None
        if cfg.wandb_project and dist.master:
            import wandb
            self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run or None, config=asdict(cfg))
        self.metrics = None  # OUT_DIR/metrics.jsonl, written by process 0
        if dist.master:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.metrics = MetricsLog(self.out_dir, kind, resume_step=resume_step)
        self.t_start = time.time()
        self.t_plot, self.plot_behind = float("-inf"), False  # the last drawing (the first eval draws); a row not drawn
        self.t_eval, self.t_block = 0.0, None  # time in eval blocks; the start of the one running
        self.t_save, self.last_save = 0.0, None  # the loop's time for checkpoints (see saving())
        self.t_log, self.tokens_since_log = time.time(), 0
        self.t_train, self.tokens_trained = 0.0, 0  # steady-state throughput: after the first log interval
        self.first_step = resume_step or 0
        self.first_bad, self.loss_sum = None, None  # see watch()
        self._start(kind, model, tok, dtype, micro, accum, lora, resumed_from)

    def __call__(self, msg: str):
        if self.dist.master:
            print(msg, flush=True)

    def elapsed(self) -> float:
        return time.time() - self.t_start

    def _start(self, kind, model, tok, dtype, micro: int, accum: int, lora: dict | None, resumed_from):
        mcfg, d = model.cfg, self.dist
        self(f"{kind} | {model.n_params():,} parameters | {mcfg.arch} {mcfg.n_layer}x{mcfg.n_embd} "
             f"ctx {mcfg.block_size} vocab {tok.n_vocab} | {d.world} process(es) on {d.device} "
             f"{str(dtype).replace('torch.', '')} | {self.tokens_per_step:,} tokens/step = {d.world} process(es) "
             f"x {accum} micro-step(s) x {micro} rows x {mcfg.block_size}")
        self(f"MFU is against {self.flops_peak / 1e12:.2f} TFLOP/s: {self.peak_note}")
        if self.cfg.warmup_steps >= self.cfg.max_steps:  # e.g. the SFT config's warmup with a short --max_steps
            self(f"warning: warmup_steps >= max_steps ({self.cfg.max_steps}): the learning rate never reaches its peak")
        if lora:
            self(f"LoRA rank {lora['rank']}, alpha {lora['alpha']:g} on {lora['targets']}: {self.trainable:,} "
                 f"trainable parameters ({100 * self.trainable / model.n_params():.2f}%), base "
                 f"{lora['base']['path']} frozen")
        if resumed_from:
            self(f"resuming {resumed_from} at step {self.first_step}")
        if resumed_from and resumed_from.suffix in (".tmp", ".old"):  # fsdp.resumable's fallbacks
            self(f"{resumed_from.with_suffix('')} is missing: a save was cut short between its renames and "
                 f"left {resumed_from.name}, the newest complete checkpoint; the next save renames it back")

    @contextmanager
    def evaluating(self):
        """Time spent inside (evaluation, checkpoints, plots) is not training time: tokens/s
        and MFU count the steps alone."""
        self.t_block = time.time()
        yield
        spent = time.time() - self.t_block
        self.t_eval, self.t_log, self.t_block = self.t_eval + spent, self.t_log + spent, None

    @contextmanager
    def saving(self):
        """The time the loop stops for a checkpoint: the copy to the CPU and any wait for the
        previous write (the write itself runs beside training), or the whole of a .dcp save.
        Inside an evaluating() block it is out of tok/s too; the eval line and the summary
        report it on its own."""
        t = time.time()
        yield
        self.last_save = time.time() - t
        self.t_save += self.last_save

    def evaluated(self, step: int, val: dict, improved: bool):
        spent = self.t_eval + (time.time() - self.t_block if self.t_block else 0.0)
        share = (f" | evals and checkpoints took {100 * spent / self.elapsed():.1f}% of the run"
                 if step > self.first_step else "")
        saved = f" | checkpoint {self.last_save:.2f} s" if self.last_save is not None else ""
        self(f"step {step}: val loss {val['loss']:.4f}, val bpb {val['bpb']:.4f}"
             f"{' (best)' if improved else ''}{saved}{share}")

    def record_eval(self, step: int, val: dict):
        """The eval's row in metrics.jsonl (and wandb), written before the checkpoint of its step."""
        if self.wandb:
            self.wandb.log({"val/loss": val["loss"], "val/bpb": val["bpb"]}, step=step)
        if self.metrics:
            self.metrics.log("eval", step, self.elapsed(), tokens=step * self.tokens_per_step,
                             val_loss=val["loss"], val_bpb=val["bpb"])
            self.plot_behind = True
            if time.time() - self.t_plot >= PLOT_EVERY_S:
                self.plot()

    def plot(self):
        """loss.png from metrics.jsonl, if an eval was recorded since it was last drawn."""
        if self.metrics and self.plot_behind:
            plot_runs([(self.out_dir.name, self.metrics.rows())], self.out_dir / PLOT)
            self.t_plot, self.plot_behind = time.time(), False

    def watch(self, step: int, loss_sum: torch.Tensor):
        """Take a step's loss without reading it: it stays on the device (reading it is a host
        sync, one per micro-step before), and so does the first step whose loss was not finite,
        coded as BAD_KINDS_N * step + its kind (see diverged)."""
        if self.first_bad is None:
            self.first_bad = torch.full((), NOT_DIVERGED, dtype=torch.long, device=loss_sum.device)
        kind = torch.where(torch.isnan(loss_sum), 0, torch.where(loss_sum > 0, 1, 2))  # BAD_KINDS' order
        bad_here = torch.where(torch.isfinite(loss_sum), NOT_DIVERGED, BAD_KINDS_N * step + kind)
        self.first_bad = torch.minimum(self.first_bad, bad_here)
        self.loss_sum = loss_sum

    def diverged(self) -> tuple[int, float] | None:
        """(step, loss) of the first step whose loss was not finite on any process, if any.
        Every process must agree: one stopping alone leaves the others waiting in their next
        collective until NCCL's timeout. The earliest bad step of all is an all-reduce MIN of
        the coded steps, read in the one host sync this check always took."""
        if self.first_bad is None:  # no step yet (on every process alike)
            return None
        first_bad = self.first_bad.clone()
        if self.dist.world > 1:
            torch_dist.all_reduce(first_bad, op=torch_dist.ReduceOp.MIN)
        code = int(first_bad)
        return None if code == NOT_DIVERGED else (code // BAD_KINDS_N, BAD_KINDS[code % BAD_KINDS_N])

    def train_step(self, step: int, stop_at: int, lr: float):
        """Count one optimizer step; every log_interval steps (and at the last) print a line."""
        self.tokens_since_log += self.tokens_per_step
        if not (step % self.cfg.log_interval == 0 or step == stop_at):
            return
        d = self.dist
        total = self.loss_sum.detach().to(sum_dtype(d.device))
        if d.world > 1:  # the whole batch's loss, not only process 0's share of it
            total = total.reshape(1)
            torch_dist.all_reduce(total)
        loss_sum = total.item() / d.world
        synchronize(d.device)
        dt = time.time() - self.t_log
        tok_s = self.tokens_since_log / max(dt, 1e-9)
        # a peak below what we just did was mismeasured
        self.flops_peak = max(self.flops_peak, tok_s * self.flops_per_token)
        mfu = tok_s * self.flops_per_token / self.flops_peak
        eta = (stop_at - step) * dt / max(1, self.tokens_since_log // self.tokens_per_step)
        if step - self.first_step > self.cfg.log_interval:  # the first interval holds compile + warmup
            self.t_train, self.tokens_trained = self.t_train + dt, self.tokens_trained + self.tokens_since_log
        self(f"step {step}/{stop_at} | loss {loss_sum:.4f} | lr {lr:.2e} | "
             f"{tok_s:,.0f} tok/s | MFU {100 * mfu:.1f}% | ETA {fmt_time(eta)}")
        if self.wandb:
            self.wandb.log({"train/loss": loss_sum, "lr": lr, "tok_per_s": tok_s, "mfu": mfu}, step=step)
        if self.metrics:
            self.metrics.log("train", step, self.elapsed(), tokens=step * self.tokens_per_step, loss=loss_sum,
                             lr=lr, tok_per_s=tok_s, mfu=mfu)
        self.t_log, self.tokens_since_log = time.time(), 0

    def summary(self) -> dict:
        elapsed = self.elapsed()
        return {"seconds": elapsed, "eval_share": self.t_eval / max(elapsed, 1e-9), "checkpoint_seconds": self.t_save,
                "tok_per_s": self.tokens_trained / self.t_train if self.t_train else float("nan"),
                "flops_per_token": self.flops_per_token}

    def done(self, model, optimizers: list, stop_reason: str, step: int, val: dict, best_val: float):
        """The end of a run: are DDP's replicas still identical (checked, not trusted), what each
        process held and peaked at, and what the run did and where its files are."""
        dist, sharded = self.dist, self.cfg.shard == "fsdp"
        if dist.world > 1 and not sharded:
            fingerprint = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(dist.device)
            gathered = [torch.zeros_like(fingerprint) for _ in range(dist.world)]
            torch_dist.all_gather(gathered, fingerprint)
            same = all(torch.equal(g, gathered[0]) for g in gathered)
            self(f"weights identical on all {dist.world} processes: {'yes' if same else 'NO'}")
        peaks = [torch.tensor([peak_memory_mb(dist.device)], device=dist.device) for _ in range(dist.world)]
        if dist.world > 1:
            torch_dist.all_gather(peaks, peaks[dist.rank].clone())
        weights_mb, state_mb = held_mb(model, optimizers)
        self(f"process 0 holds {weights_mb:,.1f} MB of weights and {state_mb:,.1f} MB of optimizer state "
             f"({'1/' + str(dist.world) + ' of each: sharded' if sharded and dist.world > 1 else 'all of it'}); "
             f"peak memory per process: {' / '.join(f'{p.item():,.0f}' for p in peaks)} MB "
             f"({'GPU allocated' if dist.device_type == 'cuda' else 'RSS'})")
        self.plot()
        last = self.out_dir / ("last.dcp" if sharded else "last.pt")
        self(f"done ({stop_reason}) at step {step} in {fmt_time(self.elapsed())}: val loss {val['loss']:.4f}, "
             f"val bpb {val['bpb']:.4f}, best val loss {best_val:.4f}. Checkpoints: {last}, {self.out_dir / 'best.pt'}; "
             f"metrics: {self.out_dir / METRICS}, loss curves: {self.out_dir / PLOT}")
        self.finish()

    def write_summary(self, summary: dict):
        if self.dist.master:
            write_text(self.out_dir / SUMMARY, json.dumps(summary, indent=2))  # whole, even after a crash

    def finish(self):
        if self.wandb:
            self.wandb.finish()
