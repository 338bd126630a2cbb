"""
Pretrain a GPT on the token shards of prepare_wiki.py. One GPU, CPU, or many GPUs:

    python train.py config/demo_cpu.toml                      # laptop CPU, minutes
    python train.py config/gpt2_124m.toml --data=data/enwiki  # one GPU
    torchrun --standalone --nproc_per_node=8 train.py config/gpt2_124m.toml
    python train.py config/demo_cpu.toml --resume=true        # continue exactly where it stopped

Settings come from the TrainConfig dataclass below, then TOML files, then --key=value.
The training loop (`train`) is shared with chat_sft.py: only the data source differs.
"""
import json
import math
import os
import random
import socket
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist

from checkpoint import CHECKPOINT_VERSION, load_checkpoint, model_from_checkpoint, pick_device, save_checkpoint
from cli import UsageError, load_config, opt, run_main
from data import load_dataset
from lora import DEFAULT_TARGETS, adapter_state, apply_lora, base_reference
from model import GPT, PRESET_MLP, GPTConfig
from optim import build_optimizers, lr_factor
from runlog import METRICS, PLOT, MetricsLog, plot_runs
from throughput import fmt_time, held_mb, peak_flops, peak_memory_mb, synchronize
from tokenizer import Tokenizer

@dataclass
class TrainConfig:
    # data and output
    data: str = opt("data/wiki", "dataset folder written by prepare_wiki.py")
    out_dir: str = opt("out/wiki", "where last.pt and best.pt are written")
    init_from: str = opt("", "start from this checkpoint's weights (fine-tuning)")
    resume: str = opt("false", "true: continue out_dir/last.pt exactly where it stopped; auto: continue it "
                                "if it exists, else start (for torchrun --max_restarts); false")
    # model (ignored when init_from or resume gives a model)
    arch: str = opt("modern", "gpt2 | modern (see model.py)")
    mlp: str = opt("auto", "auto (the preset's: gelu for gpt2, swiglu for modern) | gelu | relu2 | swiglu")
    n_layer: int = opt(6, "transformer blocks")
    n_head: int = opt(6, "attention heads")
    n_embd: int = opt(384, "width")
    block_size: int = opt(256, "context length in tokens")
    dropout: float = opt(0.0, "dropout rate")
    # optimisation
    batch_size: int = opt(16, "sequences per micro-step, per process")
    grad_accum: int = opt(1, "micro-steps per optimizer step (with total_batch_tokens 0)")
    total_batch_tokens: int = opt(0, "tokens per optimizer step over all processes (0: batch_size x "
                                     "block_size x grad_accum); the same maths on 1 process or N")
    max_steps: int = opt(2000, "optimizer steps; the LR schedule spans them")
    stop_after: int = opt(0, "end this run after this step (0: at max_steps); resume continues")
    # measured (bench.py, 150 s on 2 CPU cores, val bits/byte): modern+muon 2.35, gpt2+muon 2.47,
    # gpt2+adamw 2.56, modern+adamw 2.58: Muon and the modern preset together learn fastest
    optimizer: str = opt("muon", "muon (Muon for hidden matrices, AdamW for the rest) | adamw")
    lr: float = opt(3e-3, "peak AdamW learning rate")
    muon_lr: float = opt(0.02, "peak Muon learning rate")
    min_lr_frac: float = opt(0.1, "final LR as a fraction of the peak")
    warmup_steps: int = opt(100, "linear warmup steps")
    schedule: str = opt("cosine", "cosine | wsd (warmup-stable-decay) | constant")
    decay_frac: float = opt(0.2, "wsd: share of steps spent decaying")
    weight_decay: float = opt(0.1, "AdamW weight decay, on matrices only")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0: off)")
    # evaluation, checkpoints, stopping
    eval_interval: int = opt(200, "evaluate and checkpoint every this many steps")
    eval_tokens: int = opt(65536, "size of the fixed val subset, in tokens")
    patience: int = opt(0, "stop after this many evals without val improvement (0: off)")
    max_time: float = opt(0.0, "stop (with a checkpoint) after this many seconds (0: off)")
    log_interval: int = opt(10, "print a log line every this many steps")
    # LoRA (lora.py): train small adapters on a frozen model instead of all weights
    lora_rank: int = opt(0, "adapter rank (0: off, train all weights); needs init_from")
    lora_alpha: float = opt(16.0, "adapter scale numerator: updates are scaled by lora_alpha / lora_rank")
    lora_dropout: float = opt(0.0, "dropout on the adapters' input")
    lora_targets: str = opt(DEFAULT_TARGETS, "comma-separated linear layer name patterns to adapt")
    lora_special_rows: bool = opt(True, "also train the special tokens' embedding and head rows")
    # system
    shard: str = opt("none", "none (DDP: every process holds the whole model) | fsdp (FSDP2: each holds "
                             "1/N of weights, gradients and optimizer state; checkpoints in out_dir/last.dcp)")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: str = opt("auto", "auto (bf16 or fp16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
    # measured on a 2-core CPU (bench.py): +13% tokens/s with the 8k vocab, +22% with GPT-2's
    compile: bool = opt(True, "torch.compile the model (falls back to eager if it cannot)")
    seed: int = opt(1337, "seed for weights, data order and dropout")
    wandb_project: str = opt("", "log to this Weights & Biases project (empty: off)")
    wandb_run: str = opt("", "W&B run name")

    def validate(self):
        def need(ok, msg):
            if not ok:
                raise UsageError(f"config: {msg}")
        for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum",
                     "max_steps", "eval_interval", "eval_tokens", "log_interval"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.arch in ("gpt2", "modern"), f"arch must be gpt2 or modern, got {self.arch!r}")
        need(self.mlp in ("auto", "gelu", "relu2", "swiglu"), f"mlp: unknown {self.mlp!r}")
        need(self.optimizer in ("adamw", "muon"), f"optimizer must be adamw or muon, got {self.optimizer!r}")
        need(self.schedule in ("cosine", "wsd", "constant"), f"schedule: unknown {self.schedule!r}")
        need(self.dtype in ("auto", "float32", "bfloat16", "float16"), f"dtype: unknown {self.dtype!r}")
        need(self.n_embd % self.n_head == 0, f"n_embd ({self.n_embd}) must divide by n_head ({self.n_head})")
        need(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.lr > 0 and self.muon_lr > 0, "learning rates must be > 0")
        need(self.total_batch_tokens >= 0, "total_batch_tokens must be >= 0")
        need(self.lora_rank >= 0 and 0 <= self.lora_dropout < 1, "lora_rank must be >= 0 and lora_dropout in [0, 1)")
        need(self.resume in ("false", "true", "auto"), f"resume must be false, true or auto, got {self.resume!r}")
        need(self.shard in ("none", "fsdp"), f"shard must be none or fsdp, got {self.shard!r}")
        need(not (self.lora_rank and self.shard == "fsdp"), "LoRA trains a few parameters on a frozen "
             "model, which DDP already fits: use shard=none with lora_rank")
        need(not self.lora_rank or self.init_from or self.resume != "false",
             "lora_rank needs a model to adapt: set init_from (e.g. --init_from=out/demo/best.pt)")


# ----------------------------------------------------------------------------------------
# Processes and devices

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]


def setup_dist(cfg: TrainConfig) -> Dist:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK: NCCL between GPUs, gloo between CPU processes."""
    want = pick_device(cfg.device)
    if "RANK" not in os.environ and cfg.shard == "fsdp":  # FSDP needs a process group, even of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    if "RANK" not in os.environ:
        return Dist(device=want)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    store = dict(store=attempt_store(rank, world), rank=rank, world_size=world)
    if want.startswith("cuda"):
        torch.cuda.set_device(local)
        torch_dist.init_process_group("nccl", device_id=torch.device(f"cuda:{local}"), **store)
        return Dist(rank, world, local, f"cuda:{local}")
    torch_dist.init_process_group("gloo", **store)
    return Dist(rank, world, local, "cpu")


def attempt_store(rank: int, world: int):
    """The key-value store processes meet in, its keys prefixed with torchrun's restart count.
    After a lost worker torchrun restarts the group on the same store, and without the prefix a
    new process could read the address a dead one left under the same key and wait on it
    forever (it hung 2 times in 5 in our kill-and-restart test; 0 in 10 with the prefix)."""
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent
    base = torch_dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                               is_master=rank == 0 and not agent_hosts_it)
    return torch_dist.PrefixStore(f"wikigpt/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", base)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_dtype(cfg: TrainConfig, device_type: str) -> torch.dtype:
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32  # CPU autocast to bf16 is slower than fp32 on most CPUs


# ----------------------------------------------------------------------------------------
# Data: random windows of the token stream, without replacement, disjoint per process

class PretrainBatches:
    """Cuts the train shards into non-overlapping windows of block_size + 1 tokens and visits
    them in a seeded random order, each exactly once per epoch. Process r of W takes windows
    r, r+W, r+2W... of that order, so processes never read the same data. The position in
    the order is the whole state: saving it makes resume continue with the very next batch."""

    def __init__(self, shards, block_size, batch_size, seed, rank=0, world=1, device="cpu"):
        self.shards, self.T, self.B = shards, block_size, batch_size
        self.seed, self.rank, self.world, self.device = seed, rank, world, device
        per_shard = [max(len(s) - 1, 0) // block_size for s in shards]
        self.first = np.cumsum([0] + per_shard)  # first window index of each shard
        self.n_windows = int(self.first[-1])
        if self.n_windows < batch_size * world:
            raise UsageError(f"the train split holds {sum(len(s) for s in shards):,} tokens: too few "
                             f"for {batch_size * world} windows of block_size {block_size}. Lower "
                             "block_size or batch_size, or prepare more data.")
        self.epoch, self.cursor = 0, 0
        self._order = None

    def state_dict(self):
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state):
        self.epoch, self.cursor, self._order = state["epoch"], state["cursor"], None

    def order(self):
        if self._order is None:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_windows)
        return self._order

    def window(self, i: int) -> np.ndarray:
        shard = int(np.searchsorted(self.first, i, side="right")) - 1
        start = (i - self.first[shard]) * self.T
        return self.shards[shard][start:start + self.T + 1]

    def next_batch(self):
        rows = []
        for _ in range(self.B):
            if self.cursor + self.world > self.n_windows:  # epoch done: a new order
                self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
            rows.append(self.window(int(self.order()[self.cursor + self.rank])))
            self.cursor += self.world
        batch = torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, T+1)
        return to_device(batch[:, :-1], batch[:, 1:], self.device)


def batch_plan(cfg: TrainConfig, block_size: int, world: int) -> tuple[int, int]:
    """(rows per micro-step per process, micro-steps per optimizer step) adding up to
    total_batch_tokens over `world` processes, so a config means the same optimisation on 1
    process or N: rows per process are batch_size, or fewer when a step holds fewer."""
    total = cfg.total_batch_tokens or cfg.batch_size * block_size * cfg.grad_accum
    rows, rest = divmod(total, block_size)
    unit = block_size * world
    if rest or rows % world:
        below, above = total // unit * unit, (total // unit + 1) * unit
        raise UsageError(f"{total:,} tokens per optimizer step cannot be split into whole windows of "
                         f"{block_size} tokens over {world} process(es): it must be a multiple of {unit:,}. "
                         f"Set total_batch_tokens to {f'{below:,} or ' if below else ''}{above:,}.")
    per_process = rows // world
    micro = max(d for d in range(1, min(cfg.batch_size, per_process) + 1) if per_process % d == 0)
    return micro, per_process // micro


def to_device(x, y, device):
    if device.startswith("cuda"):  # pinned memory lets the copy overlap with GPU work
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def val_windows(shards, block_size, n_tokens):
    """The fixed val subset: the first n_tokens of the val split, as (x, y) windows."""
    parts, have = [], 0
    for shard in shards:  # read only what is needed, not the whole val split
        parts.append(np.asarray(shard[:n_tokens + 1 - have]))
        have += len(parts[-1])
        if have > n_tokens:
            break
    stream = np.concatenate(parts).astype(np.int64)
    n = (len(stream) - 1) // block_size
    if n == 0:
        raise UsageError(f"the val split ({len(stream)} tokens) is shorter than block_size "
                         f"{block_size}. Lower block_size or use a larger val_fraction.")
    x = torch.from_numpy(stream[:n * block_size].reshape(n, block_size))
    y = torch.from_numpy(stream[1:n * block_size + 1].reshape(n, block_size))
    return x, y


# ----------------------------------------------------------------------------------------
# Random state, saved in checkpoints so that a resumed run continues exactly

def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------
# Evaluation

def token_bytes_table(tok: Tokenizer, padded_vocab: int, device) -> torch.Tensor:
    """(padded_vocab,) UTF-8 bytes each id stands for (0 for specials and padding): bits per byte."""
    return torch.tensor(tok.token_bytes() + [0] * (padded_vocab - tok.n_vocab), dtype=torch.float64, device=device)


@torch.no_grad()
def evaluate(model: GPT, x_all, y_all, token_bytes, batch_size, dist: Dist, autocast) -> dict:
    """Mean loss over the counted targets (y != -1) and bits per byte: the summed loss in
    bits divided by the UTF-8 bytes those targets stand for, comparable across tokenizers."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=dist.device)  # loss sum, tokens, bytes
    stride = dist.world * batch_size
    for start in range(0, len(x_all), stride):  # the same number of forwards in every process
        i = start + dist.rank * batch_size  # (FSDP gathers weights inside each: all must take part)
        if i >= len(x_all):  # this process has no rows left: a counted-nothing batch
            x, y = to_device(x_all[:1], torch.full_like(y_all[:1], -1), dist.device)
        else:
            x, y = to_device(x_all[i:i + batch_size], y_all[i:i + batch_size], dist.device)
        with autocast:
            losses = model(x, y, reduction="none")  # (B, T), 0 where y == -1
        counted = y != -1
        totals[0] += losses.double().sum()
        totals[1] += counted.sum()
        totals[2] += token_bytes[y.clamp(min=0)][counted].sum()
    if dist.world > 1:
        torch_dist.all_reduce(totals)
    model.train()
    loss_sum, n_tokens, n_bytes = totals.tolist()
    return {"loss": loss_sum / max(n_tokens, 1), "bpb": loss_sum / math.log(2) / max(n_bytes, 1)}


# ----------------------------------------------------------------------------------------
# The training loop, shared by pretraining and chat SFT

def try_compile(model: GPT, x, y, autocast):
    """torch.compile the model and run one forward/backward to trigger compilation; if that
    fails (no C++ compiler or Triton, Windows...), say so in one line and stay eager."""
    compiled = torch.compile(model)
    rng = rng_state()  # the trial must not shift dropout's random stream (exact resume)
    try:
        with autocast:
            compiled(x, y).backward()
    except Exception as e:
        print(f"warning: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:150]}); "
              "training in eager mode instead.", file=sys.stderr)
        compiled = model
    set_rng_state(rng)
    model.zero_grad(set_to_none=True)
    return compiled


def gradient_sync(wrapper, sync: bool, distributed: bool):
    """Average gradients over processes only on an optimizer step's last micro-step. wrapper:
    the DDP module, or the FSDP-sharded model (not a compiled wrapper around it)."""
    if not distributed or sync:
        if hasattr(wrapper, "set_requires_gradient_sync"):  # FSDP: on again after skipped ones
            wrapper.set_requires_gradient_sync(True)
        return nullcontext()
    if hasattr(wrapper, "no_sync"):  # DDP
        return wrapper.no_sync()
    wrapper.set_requires_gradient_sync(False)  # FSDP: gradients stay unsharded until the last
    return nullcontext()


def out_of_time(t_start: float, max_time: float, dist: Dist) -> bool:
    """Has the time budget run out? Process 0's clock decides for all, so that every
    process stops at the same step (one stopping alone would hang the others)."""
    flag = torch.tensor([float(time.time() - t_start > max_time)], device=dist.device)
    if dist.world > 1:
        torch_dist.broadcast(flag, src=0)
    return bool(flag.item())


def last_path(cfg: TrainConfig) -> Path:
    """The resumable checkpoint: one file, or with shard=fsdp a folder of shards (DCP)."""
    return Path(cfg.out_dir) / ("last.dcp" if cfg.shard == "fsdp" else "last.pt")


def resolve_resume(cfg: TrainConfig):
    """resume=auto -> true when the last checkpoint exists (a restarted worker), else false.
    Called before the process group forms, so no process can see one written by this run."""
    if cfg.resume == "auto":
        cfg.resume = "true" if last_path(cfg).exists() else "false"


def resuming(cfg: TrainConfig) -> bool:
    assert cfg.resume != "auto", "resolve_resume(cfg) first"
    return cfg.resume == "true"


def starting_checkpoint(cfg: TrainConfig) -> dict | None:
    """The checkpoint a run starts from: the last one to resume, else init_from, else none. A
    sharded one gives its training state here; its tensors load once the model is sharded."""
    if resuming(cfg) and cfg.shard == "fsdp":
        import fsdp

        return fsdp.load_train_state(last_path(cfg))
    if resuming(cfg):
        return load_checkpoint(last_path(cfg))
    return load_checkpoint(cfg.init_from) if cfg.init_from else None


def train(cfg: TrainConfig, dist: Dist, tok: Tokenizer, batches, val_xy, kind: str,
          start: dict | None = None) -> dict:
    """Train until max_steps / stop_after / max_time / patience. `batches` has next_batch(),
    state_dict() and load_state_dict(); val_xy is the fixed (x, y) val set; `start` is the
    checkpoint from starting_checkpoint(cfg). Returns a summary of the run."""
    out_dir = Path(cfg.out_dir)
    last_ckpt, best_path = last_path(cfg), out_dir / "best.pt"
    sharded = cfg.shard == "fsdp"
    resume = start if resuming(cfg) else None
    if resume and resume.get("kind") != kind:
        raise UsageError(f"{last_ckpt} is a {resume.get('kind')} checkpoint; cannot resume it as {kind}.")

    torch.manual_seed(cfg.seed)  # same initial weights in every process
    lora = start.get("lora") if start is not None else None  # a LoRA run being resumed
    if lora and not resume:
        raise UsageError(f"{cfg.init_from} holds LoRA adapters: merge them into a plain checkpoint first "
                         f"(python lora.py merge {cfg.init_from} merged.pt) and start from that.")
    if resume and sharded:  # the weights come later, into the sharded model
        model = GPT(GPTConfig(**start["model_config"]))
    elif start is not None:
        model, _ = model_from_checkpoint(start, path=last_ckpt if resume else cfg.init_from)
        if cfg.lora_rank and not lora:
            rows = sorted(tok.special.values()) if cfg.lora_special_rows else []
            apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets, rows)
            lora = {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                    "targets": cfg.lora_targets, "token_rows": rows, "base": base_reference(cfg.init_from)}
    else:
        model = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=cfg.block_size, n_layer=cfg.n_layer,
                              n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout,
                              arch=cfg.arch, mlp=PRESET_MLP[cfg.arch] if cfg.mlp == "auto" else cfg.mlp))
    mcfg = model.cfg
    if mcfg.vocab_size < tok.n_vocab:
        raise UsageError(f"the model has {mcfg.vocab_size} token ids but the tokenizer {tok.n_vocab}.")
    model.to(dist.device)
    dtype = pick_dtype(cfg, dist.device_type)
    if sharded:
        import fsdp

        fsdp.shard_model(model, dist.device_type, dist.world, dtype)
    optimizers = build_optimizers(model, cfg, dist.device_type)
    step, best_val, bad_evals = 0, float("inf"), 0
    if resume is not None:
        if sharded:  # written by any number of processes: DCP reshards on load
            fsdp.load(last_ckpt, model, optimizers)
        else:
            for o, state in zip(optimizers, resume["optimizer"]):
                o.load_state_dict(state)
        step, best_val, bad_evals = resume["step"], resume["best_val"], resume["bad_evals"]
        batches.load_state_dict(resume["data"])
        set_rng_state(resume["rng"])

    data_state = batches.state_dict()  # the state from which the batch in hand is read
    x, y = batches.next_batch()
    autocast = (torch.autocast(dist.device_type, dtype=dtype) if dtype != torch.float32 else nullcontext())
    scaler = torch.amp.GradScaler(dist.device_type, enabled=dtype == torch.float16)
    token_bytes = token_bytes_table(tok, mcfg.padded_vocab, dist.device)
    runner = try_compile(model, x, y, autocast) if cfg.compile else model  # runner: what we call
    if dist.world > 1 and not sharded:
        runner = torch.nn.parallel.DistributedDataParallel(
            runner, device_ids=[dist.local_rank] if dist.device_type == "cuda" else None)
    micro, accum = batch_plan(cfg, mcfg.block_size, dist.world)
    assert batches.B == micro, "build the batches with batch_plan's rows per process"
    tokens_per_step = micro * mcfg.block_size * accum * dist.world
    flops_peak, peak_note = peak_flops(dist.device, dtype)  # one process's
    flops_peak *= dist.world  # tokens/s counts every process's tokens, so the peak counts them all
    peak_note = f"{dist.world} x {peak_note}" if dist.world > 1 else peak_note
    flops_per_token = model.flops_per_token()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if lora:  # frozen weights get no weight gradient: 4 of the 6 FLOPs per weight and token
        flops_per_token -= 2 * (model.n_params(for_flops=True) - trainable)
    wandb_run = None
    if cfg.wandb_project and dist.master:
        import wandb
        wandb_run = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run or None, config=asdict(cfg))

    def checkpoint(path, resumable: bool):
        """last.pt can resume (optimizer, data position, RNG); best.pt holds what tools load:
        the weights (or adapters) and their description, a third of last.pt's size with AdamW.
        Sharded: every process calls this; last.dcp is written by all, best.pt by process 0."""
        state = {"version": CHECKPOINT_VERSION, "kind": kind, "step": step, **({"lora": lora} if lora else {}),
                 "model_config": asdict(mcfg), "train_config": asdict(cfg), "tokenizer": tok.spec, "val": last_val}
        if resumable:
            state.update({"data": data_state, "rng": rng_state(), "best_val": best_val, "bad_evals": bad_evals})
        if sharded and resumable:
            if step > 0:  # at step 0 there is nothing to resume, and DCP would give the
                fsdp.save(path, model, optimizers, state, dist.master)  # optimizers a fake step
            return
        weights = fsdp.full_state(model) if sharded else adapter_state(model) if lora else model.state_dict()
        if resumable:
            state["optimizer"] = [o.state_dict() for o in optimizers]
        if dist.master:
            save_checkpoint(path, {**state, "model": weights})

    def log(msg):
        if dist.master:
            print(msg, flush=True)

    metrics = None  # OUT_DIR/metrics.jsonl, written by process 0
    if dist.master:
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics = MetricsLog(out_dir, kind, resume_step=step if resume else None)
        log(f"{kind} | {model.n_params():,} parameters | {mcfg.arch} {mcfg.n_layer}x{mcfg.n_embd} "
            f"ctx {mcfg.block_size} vocab {tok.n_vocab} | {dist.world} process(es) on {dist.device} "
            f"{str(dtype).replace('torch.', '')} | {tokens_per_step:,} tokens/step = {dist.world} process(es) "
            f"x {accum} micro-step(s) x {micro} rows x {mcfg.block_size}")
        log(f"MFU is against {flops_peak / 1e12:.2f} TFLOP/s: {peak_note}")
        if lora:
            log(f"LoRA rank {lora['rank']}, alpha {lora['alpha']:g} on {lora['targets']}: {trainable:,} trainable "
                f"parameters ({100 * trainable / model.n_params():.2f}%), base {lora['base']['path']} frozen")
        if resume:
            log(f"resuming {last_ckpt} at step {step}")

    stop_at = min(cfg.max_steps, cfg.stop_after or cfg.max_steps)
    t_start, t_eval, last_val, first_val, stop_reason = time.time(), 0.0, None, None, "max_steps"
    t_log, tokens_since_log = time.time(), 0
    t_train, tokens_trained = 0.0, 0  # steady-state throughput: after the first log interval
    first_step = step
    while True:
        # ---- evaluate and checkpoint (a resumed run's first step was evaluated before)
        done = step >= stop_at
        if not done and cfg.max_time and out_of_time(t_start, cfg.max_time, dist):
            done, stop_reason = True, f"max_time {cfg.max_time:.0f}s reached"
        if (step % cfg.eval_interval == 0 and not (resume and step == first_step)) or done:
            t0 = time.time()
            last_val = evaluate(model, *val_xy, token_bytes, cfg.batch_size, dist, autocast)
            first_val = first_val or last_val
            t_eval += time.time() - t0
            t_log += time.time() - t0  # tokens/s counts training time only
            improved = last_val["loss"] < best_val
            if improved:
                best_val, bad_evals = last_val["loss"], 0
            elif step > 0:
                bad_evals += 1
            elapsed = time.time() - t_start
            share = f" | evals took {100 * t_eval / elapsed:.1f}% of the run" if step > first_step else ""
            log(f"step {step}: val loss {last_val['loss']:.4f}, val bpb {last_val['bpb']:.4f}"
                f"{' (best)' if improved else ''}{share}")
            if wandb_run:
                wandb_run.log({"val/loss": last_val["loss"], "val/bpb": last_val["bpb"]}, step=step)
            if dist.master:
                metrics.log("eval", step, elapsed, tokens=step * tokens_per_step,
                            val_loss=last_val["loss"], val_bpb=last_val["bpb"])
                plot_runs([(out_dir.name, metrics.rows())], out_dir / PLOT)
            if dist.master or sharded:
                checkpoint(last_ckpt, resumable=True)
                if improved:
                    checkpoint(best_path, resumable=False)
            if cfg.patience and bad_evals >= cfg.patience:
                done, stop_reason = True, f"early stop: no val improvement in {cfg.patience} evals"
        if done:
            break

        # ---- one optimizer step: accum micro-steps, gradients synced on the last one only
        lr_mult = lr_factor(step, cfg)
        for o in optimizers:
            for g in o.param_groups:
                g["lr"] = g["base_lr"] * lr_mult
        loss_sum = 0.0
        for micro in range(accum):
            sync = micro == accum - 1
            with gradient_sync(model if sharded else runner, sync, dist.world > 1):
                with autocast:
                    loss = runner(x, y) / accum
                data_state = batches.state_dict()
                x, y = batches.next_batch()  # fetched while the GPU still works on this step
                scaler.scale(loss).backward()
            loss_sum += loss.item()
        if not math.isfinite(loss_sum):
            raise UsageError(f"loss became {loss_sum} at step {step}: training diverged. The last "
                             f"good checkpoint is {last_ckpt} (step {step - step % cfg.eval_interval}). "
                             "Lower lr, raise warmup_steps, or use dtype=bfloat16 instead of float16.")
        if cfg.grad_clip:
            for o in optimizers:
                scaler.unscale_(o)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for o in optimizers:
            scaler.step(o)
        scaler.update()
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        step += 1
        tokens_since_log += tokens_per_step

        # ---- log
        if step % cfg.log_interval == 0 or step == stop_at:
            if dist.world > 1:  # the whole batch's loss, not only process 0's share of it
                total = torch.tensor([loss_sum], dtype=torch.float64, device=dist.device)
                torch_dist.all_reduce(total)
                loss_sum = total.item() / dist.world
            synchronize(dist.device)
            dt = time.time() - t_log
            tok_s = tokens_since_log / max(dt, 1e-9)
            flops_peak = max(flops_peak, tok_s * flops_per_token)  # a peak below what we just did was mismeasured
            mfu = tok_s * flops_per_token / flops_peak
            eta = (stop_at - step) * dt / max(1, tokens_since_log // tokens_per_step)
            if step - first_step > cfg.log_interval:  # the first interval holds compile + warmup
                t_train, tokens_trained = t_train + dt, tokens_trained + tokens_since_log
            log(f"step {step}/{stop_at} | loss {loss_sum:.4f} | lr {cfg.lr * lr_mult:.2e} | "
                f"{tok_s:,.0f} tok/s | MFU {100 * mfu:.1f}% | ETA {fmt_time(eta)}")
            if wandb_run:
                wandb_run.log({"train/loss": loss_sum, "lr": cfg.lr * lr_mult, "tok_per_s": tok_s,
                               "mfu": mfu}, step=step)
            if metrics:
                metrics.log("train", step, time.time() - t_start, tokens=step * tokens_per_step, loss=loss_sum,
                            lr=cfg.lr * lr_mult, tok_per_s=tok_s, mfu=mfu)
            t_log, tokens_since_log = time.time(), 0

    if dist.world > 1 and not sharded:  # DDP keeps replicas identical; check it rather than trust it
        fingerprint = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(dist.device)
        gathered = [torch.zeros_like(fingerprint) for _ in range(dist.world)]
        torch_dist.all_gather(gathered, fingerprint)
        same = all(torch.equal(g, gathered[0]) for g in gathered)
        log(f"weights identical on all {dist.world} processes: {'yes' if same else 'NO'}")
    peaks = [torch.tensor([peak_memory_mb(dist.device)], device=dist.device) for _ in range(dist.world)]
    if dist.world > 1:
        torch_dist.all_gather(peaks, peaks[dist.rank].clone())
    weights_mb, state_mb = held_mb(model, optimizers)
    log(f"process 0 holds {weights_mb:,.1f} MB of weights and {state_mb:,.1f} MB of optimizer state "
        f"({'1/' + str(dist.world) + ' of each: sharded' if sharded and dist.world > 1 else 'all of it'}); "
        f"peak memory per process: {' / '.join(f'{p.item():,.0f}' for p in peaks)} MB "
        f"({'GPU allocated' if dist.device_type == 'cuda' else 'RSS'})")
    elapsed = time.time() - t_start
    log(f"done ({stop_reason}) at step {step} in {fmt_time(elapsed)}: val loss {last_val['loss']:.4f}, "
        f"val bpb {last_val['bpb']:.4f}, best val loss {best_val:.4f}. Checkpoints: {last_ckpt}, {best_path}; "
        f"metrics: {out_dir / METRICS}, loss curves: {out_dir / PLOT}")
    if wandb_run:
        wandb_run.finish()
    return {"step": step, "val": last_val, "val_at_start": first_val, "best_val": best_val, "seconds": elapsed,
            "eval_share": t_eval / max(elapsed, 1e-9), "stop_reason": stop_reason,
            "tok_per_s": tokens_trained / t_train if t_train else float("nan"),
            "flops_per_token": flops_per_token}


def main(argv):
    cfg = load_config(TrainConfig, argv)
    resolve_resume(cfg)
    dist = setup_dist(cfg)
    if dist.master:
        print("config:", json.dumps(asdict(cfg)))
    ds = load_dataset(cfg.data)
    tok = ds.tokenizer
    start = starting_checkpoint(cfg)
    block_size = start["model_config"]["block_size"] if start else cfg.block_size
    micro, _ = batch_plan(cfg, block_size, dist.world)
    batches = PretrainBatches(ds.train, block_size, micro, cfg.seed, dist.rank, dist.world, dist.device)
    val_xy = val_windows(ds.val, block_size, cfg.eval_tokens)
    train(cfg, dist, tok, batches, val_xy, "pretrain", start)


if __name__ == "__main__":
    run_main(main)
