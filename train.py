"""
Pretrain a GPT on the token shards of prepare_wiki.py. One GPU, CPU, or many GPUs:

    python train.py config/demo_cpu.toml                      # laptop CPU, minutes
    python train.py config/gpt2_124m.toml --data=data/enwiki  # one GPU
    torchrun --standalone --nproc_per_node=8 train.py config/gpt2_124m.toml
    python train.py config/demo_cpu.toml --resume=true        # continue exactly where it stopped

Settings: wikigpt/config.py's TrainConfig (defaults), then TOML files, then --key=value
(`python train.py -h` lists them). The training loop (`train`) is shared with chat_sft.py: only
the batches differ. Read `train` first: build, then a loop of evaluate/checkpoint, step, log.
"""
import json
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from model import GPT, GPTConfig
from wikigpt.batches import PretrainBatches, batch_plan, val_windows
from wikigpt.checkpoint import (BackgroundSaver, build_checkpoint, load_checkpoint, model_from_checkpoint,
                                refuse_unrunnable)
from wikigpt.loss import NextTokenLoss
from wikigpt.cli import RUN_INTERRUPTED, UsageError, load_config, run_main
from wikigpt.config import TrainConfig
from wikigpt.prep.data import load_dataset
from wikigpt.run.resume import check_start, keep_checkpoint_shape
from wikigpt.run.dist import Dist, data_parallel, gradient_sync, out_of_time, pick_dtype, setup_dist
from wikigpt.loss_eval import evaluate, token_bytes_table
from wikigpt.optim import build_optimizers, lr_factor
from wikigpt.tokenizer import Tokenizer
from wikigpt.run.train_log import TrainLog


# ----------------------------------------------------------------------------------------
# The training loop, shared by pretraining and chat SFT

def train(cfg: TrainConfig, dist: Dist, tok: Tokenizer, batches, val_xy, kind: str, start: "Start") -> dict:
    """Train until max_steps / stop_after / max_time / patience. `batches` has next_batch(),
    state_dict() and load_state_dict(); val_xy is the fixed (x, y) val set; `start` is
    starting_point(cfg, resume). Returns a summary of the run."""
    sharded = cfg.shard == "fsdp"
    if start.resume and start.checkpoint.get("kind") != kind:
        raise UsageError(f"{last_path(cfg)} is a {start.checkpoint.get('kind')} checkpoint; cannot resume it as {kind}.")
    model, lora = build_model(cfg, tok, start)
    model.to(dist.device)
    dtype = pick_dtype(cfg, dist.device_type)
    if sharded:
        from wikigpt.run import fsdp
        fsdp.shard_model(model, dist.device_type, dist.world, dtype)
    optimizers = build_optimizers(model, cfg, dist.device_type)
    scaler = torch.amp.GradScaler(dist.device_type, enabled=dtype == torch.float16)
    run = restore(start, model, optimizers, scaler, batches, sharded) if start.resume else Progress()
    run.data = batches.state_dict()
    x, y = batches.next_batch()
    autocast = torch.autocast(dist.device_type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    token_bytes = token_bytes_table(tok, model.cfg.padded_vocab, dist.device)
    # Two handles on one set of weights: `model`, the GPT itself (evaluated, checkpointed with clean
    # state_dict keys, clipped), and `loss_fn`, what each step calls, (x, y) -> loss: the fused loss
    # over the model (with a teacher, distillation's), wrapped by DDP (which syncs its gradients),
    # then compiled. DDP wraps first: Dynamo then splits the graph at DDP's gradient buckets, and
    # each bucket's all-reduce overlaps the rest of backward (compiled first, it never does)
    loss_fn = student_loss(model, cfg, tok, dist.device) if cfg.teacher else NextTokenLoss(model)
    if dist.world > 1 and not sharded:
        loss_fn = data_parallel(loss_fn, dist)
    if cfg.compile:
        loss_fn = try_compile(loss_fn, x, y, autocast)
    micro, accum = batch_plan(cfg, model.cfg.block_size, dist.world)
    assert batches.B == micro, "build the batches with batch_plan's rows per process"
    log = TrainLog(cfg, dist, kind, model, tok, dtype, micro, accum, lora, start.path if start.resume else None,
                   resume_step=run.step if start.resume else None)
    checkpoints = Checkpoints(cfg, kind, model, optimizers, tok, lora, dist, scaler)

    stop_at = min(cfg.max_steps, cfg.stop_after or cfg.max_steps)  # stop_after: a part, to be resumed (said so)
    stop_reason = "max_steps" if stop_at == cfg.max_steps else f"stop_after {stop_at}: --resume=true, a later stop_after"
    first_val = None
    with BackgroundSaver() as saver:  # on any way out, the write in flight finishes first
        while True:
            # ---- evaluate and checkpoint (a resumed run's first step was evaluated before)
            done = run.step >= stop_at
            if not done and cfg.max_time and out_of_time(log.t_start, cfg.max_time, dist, run.step,
                                                         cfg.log_interval):
                done, stop_reason = True, f"max_time {cfg.max_time:.0f}s reached"
            if (run.step % cfg.eval_interval == 0 and not (start.resume and run.step == log.first_step)) or done:
                check_finite(log, last_path(cfg), cfg)  # never checkpoint weights a diverged step wrote
                with log.evaluating():
                    improved = run.record(evaluate(model, *val_xy, token_bytes, cfg.batch_size, dist, autocast))
                    first_val = first_val or run.val
                    log.record_eval(run.step, run.val)  # before last.pt moves on: a resumed run skips this eval
                    if dist.master or sharded:
                        with log.saving():  # the copy to the CPU; the write goes on while training does
                            checkpoints.save(run, improved, saver)
                    log.evaluated(run.step, run.val, improved)
                if cfg.patience and run.bad_evals >= cfg.patience:
                    done, stop_reason = True, f"early stop: no val improvement in {cfg.patience} evals"
            if done:
                break

            # ---- one optimizer step: accum micro-steps, gradients synced on the last one only
            torch.manual_seed(dropout_seed(cfg.seed, run.step, dist))
            lr_mult = lr_factor(run.step, cfg)
            for o in optimizers:
                for g in o.param_groups:
                    g["lr"] = g["base_lr"] * lr_mult
            syncs = host_sync_watch(cfg, dist, run.step - log.first_step)  # bench/gpu_check.sh: 0 is the aim
            loss_sum = torch.zeros((), device=dist.device)
            for i in range(accum):
                with gradient_sync(model if sharded else loss_fn, i == accum - 1, dist.world > 1):
                    with autocast:
                        loss = loss_fn(x, y) / accum
                    run.data = batches.state_dict()
                    x, y = batches.next_batch()  # fetched while the GPU still works on this step
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
            log.watch(run.step, loss_sum)
            if cfg.grad_clip:
                for o in optimizers:
                    scaler.unscale_(o)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            for o in optimizers:
                scaler.step(o)
            scaler.update()
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            if syncs:
                log(f"host syncs in step {run.step + 1}: {syncs.stop()}")
            run.step += 1
            if run.step % cfg.log_interval == 0:  # ---- log (reading the loss is a host sync: only here)
                check_finite(log, last_path(cfg), cfg)
            log.train_step(run.step, stop_at, cfg.lr * lr_mult)
        with log.saving():
            saver.wait()  # the last write, whole, before the run says it is done
    log.done(model, optimizers, stop_reason, run.step, run.val, run.best_val)
    summary = {"step": run.step, "val": run.val, "val_at_start": first_val, "best_val": run.best_val,
               "stop_reason": stop_reason, **log.summary()}
    log.write_summary(summary)
    return summary


def main(argv):
    cfg = load_config(TrainConfig, argv)
    resume = resolve_resume(cfg)
    dist = setup_dist(cfg)
    ds = load_dataset(cfg.data)
    start = starting_point(cfg, resume)
    keep_checkpoint_shape(cfg, start, dist.master)
    check_start(dist, start, cfg)  # out_dir outside the dataset; a resume's settings and step as its run's
    if dist.master:
        print("config:", json.dumps(asdict(cfg)))
    block_size = start.checkpoint["model_config"]["block_size"] if start.checkpoint else cfg.block_size
    micro, _ = batch_plan(cfg, block_size, dist.world)
    batches = PretrainBatches(ds.train, block_size, micro, cfg.seed, dist.rank, dist.world, dist.device)
    val_xy = val_windows(ds.val, block_size, cfg.eval_tokens)
    train(cfg, dist, ds.tokenizer, batches, val_xy, "pretrain", start)


# ----------------------------------------------------------------------------------------
# Where a run starts: resume or not, from which checkpoint

def resolve_resume(cfg: TrainConfig) -> bool:
    """The one place resume=auto is resolved: true when the last checkpoint exists (a restarted
    worker), else false; written back to cfg (the config line and checkpoints say which). Called
    before the process group forms (no process can see one this run wrote), out_dir locked first."""
    from wikigpt.run import fsdp
    from wikigpt.run.output_paths import claim_out_dir, start_new_run
    problem = claim_out_dir(cfg.out_dir)  # before out_dir is read: two runs never both find it free
    if cfg.resume != "false" and not problem:  # auto: never a silent start over; true: not "last.pt not found"
        fsdp.refuse_other_kind(Path(cfg.out_dir), cfg.shard == "fsdp")
        cfg.resume = "true" if cfg.resume == "true" or resumable_checkpoint(cfg) else "false"
    restart = not problem and cfg.resume == "false" and fsdp.lost_before_first_save(Path(cfg.out_dir))
    if problem or cfg.resume == "false" and (problem := start_new_run(cfg, restart)):  # never over another run
        raise UsageError(problem)
    return cfg.resume == "true"


@dataclass
class Start:
    """What a run starts from: resume (the last checkpoint) or not, and the checkpoint read."""
    resume: bool
    checkpoint: dict | None  # the last one to resume, else init_from's, else None
    path: Path | str | None  # where it was read


def starting_point(cfg: TrainConfig, resume: bool) -> Start:
    """The last checkpoint to resume, else init_from, else none. A sharded one gives its
    training state here; its tensors load once the model is sharded."""
    if resume and cfg.shard == "fsdp":
        from wikigpt.run import fsdp
        path = resumable_checkpoint(cfg) or last_path(cfg)
        return Start(True, fsdp.load_train_state(path), path)
    if resume:
        return Start(True, load_checkpoint(last_path(cfg)), last_path(cfg))
    return Start(False, load_checkpoint(cfg.init_from), cfg.init_from) if cfg.init_from else Start(False, None, None)


def last_path(cfg: TrainConfig) -> Path:
    """The resumable checkpoint: one file, or with shard=fsdp a folder of shards (DCP)."""
    return Path(cfg.out_dir) / ("last.dcp" if cfg.shard == "fsdp" else "last.pt")


def resumable_checkpoint(cfg: TrainConfig) -> Path | None:
    """last_path(cfg) if it exists; with shard=fsdp, else the folder a cut-short save left."""
    from wikigpt.run import fsdp
    last = last_path(cfg)
    return fsdp.resumable(last) if cfg.shard == "fsdp" else last if last.exists() else None


def build_model(cfg: TrainConfig, tok: Tokenizer, start: Start) -> tuple[GPT, dict | None]:
    """The model a run trains: a resumed run's, init_from's (with new LoRA adapters if asked),
    or a new one of cfg's shape. Returns (model on the CPU, LoRA settings or None)."""
    torch.manual_seed(cfg.seed)  # same initial weights in every process
    ckpt = start.checkpoint
    lora = ckpt.get("lora") if ckpt is not None else None  # a LoRA run being resumed
    if ckpt is not None and not start.resume:  # init_from: a float model, not adapters or int8 weights
        refuse_unrunnable(ckpt, cfg.init_from, "init_from")
    if start.resume and cfg.shard == "fsdp":  # the weights come later, into the sharded model
        model = GPT(GPTConfig(**ckpt["model_config"]))
    elif ckpt is not None:
        model, _ = model_from_checkpoint(ckpt, path=start.path)
        if cfg.lora_rank and not lora:
            from wikigpt.adapt.lora import apply_lora, base_reference
            rows = sorted(tok.special.values()) if cfg.lora_special_rows else []
            apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets, rows)
            lora = {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                    "targets": cfg.lora_targets, "token_rows": rows, "base": base_reference(cfg.init_from)}
    else:
        model = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=cfg.block_size, n_layer=cfg.n_layer,
                              n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout,
                              arch=cfg.arch, mlp=None if cfg.mlp == "auto" else cfg.mlp))
    if ckpt is not None and ckpt.get("tokenizer", tok.spec) != tok.spec:  # same ids, other words: no error would show
        raise UsageError(f"{start.path} was trained with another tokenizer than {cfg.data}'s: use its own dataset "
                         f"({ckpt.get('train_config', {}).get('data', '?')}); only gpt2 datasets share one tokenizer.")
    if model.cfg.vocab_size < tok.n_vocab:  # (said after the tokenizer: another one is the usual cause)
        raise UsageError(f"the model has {model.cfg.vocab_size} token ids but the tokenizer {tok.n_vocab}.")
    model.activation_checkpointing = cfg.activation_checkpointing
    return model, lora


# ----------------------------------------------------------------------------------------
# The loop's helpers: compile, progress and resume, checkpoints, checks

def try_compile(module: torch.nn.Module, x, y, autocast):
    """torch.compile the loss module (or its DDP wrapper) and run one forward/backward to trigger
    compilation; if that fails (no C++ compiler or Triton, Windows...), say so in one line and
    stay eager."""
    compiled = torch.compile(module)
    try:
        with autocast:
            compiled(x, y).backward()
    except Exception as e:
        print(f"warning: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:150]}); "
              "training in eager mode instead.", file=sys.stderr)
        compiled = module
    module.zero_grad(set_to_none=True)
    return compiled


@dataclass
class Progress:
    """Where a run is: saved in last.pt, so that a resumed run goes on from the same place."""
    step: int = 0
    best_val: float = float("inf")
    bad_evals: int = 0  # evals in a row without a better val loss (for patience)
    data: dict | None = None  # the batches' state from which the batch in hand was read
    val: dict | None = None  # the last evaluation
    resumed_at: int = -1  # a resumed run's first step, evaluated before its checkpoint: again is not anew

    def record(self, val: dict) -> bool:
        """Take an evaluation; True when its loss is the best so far."""
        self.val = val
        if val["loss"] < self.best_val:
            self.best_val, self.bad_evals = val["loss"], 0
            return True
        self.bad_evals += self.step > 0 and self.step != self.resumed_at
        return False


def restore(start: Start, model: GPT, optimizers: list, scaler, batches, sharded: bool) -> Progress:
    """Put a resumed run back where it was: optimizer state, fp16's loss scale, data position."""
    ckpt = start.checkpoint
    if sharded:  # written by any number of processes: DCP reshards on load
        from wikigpt.run import fsdp
        fsdp.load(start.path, model, optimizers)
    else:
        for o, state in zip(optimizers, ckpt["optimizer"]):
            o.load_state_dict(state)
    if ckpt.get("scaler"):  # {} unless float16
        scaler.load_state_dict(ckpt["scaler"])
    batches.load_state_dict(ckpt["data"])
    return Progress(ckpt["step"], ckpt["best_val"], ckpt["bad_evals"], resumed_at=ckpt["step"])


@dataclass
class Checkpoints:
    """last.pt can resume (optimizer, data position); best.pt (when val improved) holds what
    tools load: the weights (or adapters) and their description, a third of last.pt's size with
    AdamW. best() and last() give the (path, checkpoint) pairs process 0 writes (save(): in the
    background, in that order). Sharded: every process calls them; last.dcp is written by all,
    in last(), and best.pt gathered by all."""
    cfg: TrainConfig
    kind: str
    model: GPT
    optimizers: list
    tok: Tokenizer
    lora: dict | None
    dist: Dist
    scaler: torch.amp.GradScaler

    def save(self, run: Progress, improved: bool, saver: BackgroundSaver):
        """best.pt (if improved), then last: a kill between leaves the last.pt that redoes the eval.
        Sharded, last.dcp is saved in last() itself: best.pt is written, whole, before it."""
        best = self.best(run) if improved else []
        if best and self.cfg.shard == "fsdp" and self.dist.master:
            saver.save(best)
            saver.wait()
        files = (best if self.cfg.shard != "fsdp" else []) + self.last(run)
        if self.dist.master:
            saver.save(files)

    def last(self, run: Progress) -> list[tuple[Path, dict]]:
        resume_state = dict(data=run.data, best_val=run.best_val, bad_evals=run.bad_evals,
                            scaler=self.scaler.state_dict())  # {} unless float16
        if self.cfg.shard != "fsdp":
            optimizer = [o.state_dict() for o in self.optimizers]
            return [(last_path(self.cfg), self.checkpoint(run, self.weights(), optimizer=optimizer, **resume_state))]
        if run.step > 0:  # at step 0 there is nothing to resume, and DCP would give the optimizers a fake step
            from wikigpt.run import fsdp
            state = self.checkpoint(run, None, **resume_state)
            del state["model"]
            fsdp.save(last_path(self.cfg), self.model, self.optimizers, state, self.dist.master)
        return []

    def best(self, run: Progress) -> list[tuple[Path, dict]]:
        return [(Path(self.cfg.out_dir) / "best.pt", self.checkpoint(run, self.weights()))]

    def weights(self) -> dict:
        from wikigpt.run import fsdp
        if self.cfg.shard == "fsdp":
            return fsdp.full_state(self.model)  # gathered: every process takes part
        if self.lora:
            from wikigpt.adapt.lora import adapter_state
            return adapter_state(self.model)
        return self.model.state_dict()

    def checkpoint(self, run: Progress, weights, **extra) -> dict:
        # what the dataset held (resume.check_start read it): a resume on another one is refused
        config = asdict(self.cfg) | {"data_fingerprint": getattr(self.cfg, "data_fingerprint", None)}
        return build_checkpoint(self.kind, weights, asdict(self.model.cfg), self.tok.spec, train_config=config,
                                step=run.step, val=run.val, **({"lora": self.lora} if self.lora else {}), **extra)


def student_loss(model: GPT, cfg: TrainConfig, tok: Tokenizer, device) -> torch.nn.Module:
    """With a teacher: the distillation loss (wikigpt/adapt/distill.py), off the plain path."""
    from wikigpt.adapt import distill
    return distill.student_loss(model, cfg, tok, device)


def dropout_seed(seed: int, step: int, dist: Dist) -> int:
    """Dropout's masks: each process's own, and each step's whatever ran before it (a resumed
    run draws the masks the uninterrupted one did; on another number of processes, which splits
    the batches otherwise too, each process still draws its own)."""
    return (seed + 1 + step) * dist.world + dist.rank  # seed < 2**32: far from torch's 2**64


def host_sync_watch(cfg: TrainConfig, dist: Dist, steps_done: int):
    """--sync_check: count the host syncs of this run's third step (CUDA only; wikigpt/run/throughput.py)."""
    if not (cfg.sync_check and dist.device_type == "cuda" and steps_done == 2):
        return None
    from wikigpt.run.throughput import HostSyncWatch
    return HostSyncWatch().start()


def check_finite(log: TrainLog, last_ckpt: Path, cfg: TrainConfig):
    """Stop with a clear message if a step's loss was NaN or infinite since the last check."""
    bad = log.diverged()
    if bad:
        step, loss = bad
        log.plot()  # the curves up to it, drawn at once (see PLOT_EVERY_S)
        raise UsageError(f"loss became {loss} at step {step}: training diverged. The last good checkpoint is "
                         f"{last_ckpt} (step {step - step % cfg.eval_interval}). Lower lr, raise "
                         "warmup_steps, or use dtype=bfloat16 instead of float16.")


if __name__ == "__main__":
    run_main(main, RUN_INTERRUPTED)
