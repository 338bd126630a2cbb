"""
The settings of a training run, with their defaults: TrainConfig, read from TOML files and
--key=value (cli.py); `python train.py -h` prints the table. One place for every default of a
run; chat fine-tuning's SFTConfig (wikigpt/chat/sft_config.py) extends it.
"""
from dataclasses import dataclass

from wikigpt.cli import UsageError, opt
from wikigpt.adapt.lora import DEFAULT_TARGETS


@dataclass
class TrainConfig:
    CHAT = False  # not a field: SFTConfig's is True
    # data and output
    data: str = opt("data/wiki", "dataset folder written by prepare_wiki.py")
    out_dir: str = opt("out/wiki", "where last.pt and best.pt are written")
    init_from: str = opt("", "start from this checkpoint's weights (fine-tuning)")
    resume: str = opt("false", "true: continue out_dir/last.pt exactly where it stopped; auto: continue it "
                                "if it exists, else start (for torchrun --max_restarts); false")
    overwrite: bool = opt(False, "start a new run in an out_dir that holds one, replacing its checkpoints")
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
    # Muon and the modern preset together learn fastest in a fixed time (bench/bench.py --only
    # presets; the figures are in docs/measured.md)
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
    # distillation (distill.py): also learn the predictions of a bigger model (docs/prune.md)
    teacher: str = opt("", "teacher checkpoint to distil from, same tokenizer (empty: off)")
    # 0.9: what healed a pruned demo model best (docs/prune.md)
    distill_alpha: float = opt(0.9, "loss = alpha * T^2 * KL(teacher || student) + (1 - alpha) * cross-entropy")
    distill_temperature: float = opt(2.0, "T: both distributions are softened by it in the KL term")
    # system
    shard: str = opt("none", "none (DDP: every process holds the whole model) | fsdp (FSDP2: each holds "
                             "1/N of weights, gradients and optimizer state; checkpoints in out_dir/last.dcp)")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: str = opt("auto", "auto (bf16 or fp16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
    # on by default: faster even on a 2-core CPU, more with a large vocab (docs/measured.md)
    compile: bool = opt(True, "torch.compile the model (falls back to eager if it cannot)")
    activation_checkpointing: bool = opt(False, "recompute each block's activations in backward instead of "
                                                "keeping them (~1/3 more compute, far less memory: 350M/1.5B)")
    sync_check: bool = opt(False, "on CUDA: count the host syncs of the third optimizer step and print them "
                                  "(bench/gpu_check.sh; 0 is the aim)")
    seed: int = opt(1337, "seed for weights, data order and dropout")
    wandb_project: str = opt("", "log to this Weights & Biases project (empty: off)")
    wandb_run: str = opt("", "W&B run name")

    def validate(self):
        def need(ok, msg):
            if not ok:
                raise UsageError(f"config: {msg}")
        for names, test, rule in (  # nan fails every comparison: each test refuses it
                ("n_layer n_head n_embd block_size batch_size grad_accum max_steps eval_interval eval_tokens "
                 "log_interval", lambda v: v >= 1, ">= 1"),
                ("seed total_batch_tokens warmup_steps stop_after patience max_time grad_clip weight_decay "
                 "lora_rank", lambda v: 0 <= v < float("inf"), ">= 0 and finite"),
                ("lr muon_lr distill_temperature", lambda v: 0 < v < float("inf"), "> 0 and finite"),
                ("dropout lora_dropout beta1 beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
                ("min_lr_frac distill_alpha", lambda v: 0 <= v <= 1, "in [0, 1]"),
                ("decay_frac", lambda v: 0 < v <= 1, "in (0, 1] (the share of steps that wsd decays over)")):
            for name in names.split():
                need(test(getattr(self, name)), f"{name} must be {rule}, got {getattr(self, name)}")
        for name, choices in (("arch", "gpt2 modern"), ("mlp", "auto gelu relu2 swiglu"), ("optimizer", "adamw muon"),
                              ("schedule", "cosine wsd constant"), ("dtype", "auto float32 bfloat16 float16"),
                              ("resume", "false true auto"), ("shard", "none fsdp")):
            value, (*some, last) = getattr(self, name), choices.split()
            need(value in (*some, last), f"{name} must be {', '.join(some)} or {last}, got {value!r}")
        need(not (self.resume == "true" and self.overwrite), "resume=true continues the run in out_dir and "
             "overwrite=true starts a new one in its place: give one of them")
        need(self.seed < 2**32, f"seed must be below 2**32, got {self.seed}")
        need(self.n_embd % self.n_head == 0, f"n_embd ({self.n_embd}) must divide by n_head ({self.n_head})")
        need(self.arch != "modern" or self.n_embd // self.n_head % 2 == 0, "n_embd / n_head must be even with arch=modern "
             f"(rotary turns pairs), got {self.n_embd // self.n_head} (e.g. --n_embd={self.n_embd + self.n_head})")
        need(not (self.lora_rank and self.shard == "fsdp"), "LoRA trains a few parameters on a frozen "
             "model, which DDP already fits: use shard=none with lora_rank")
        need(not self.lora_rank or self.init_from or self.resume != "false",
             "lora_rank needs a model to adapt: set init_from (e.g. --init_from=out/demo/best.pt)")
        if self.teacher:
            need(self.shard == "none", "distillation reads the student's output head directly, which FSDP "
                 "shards: use shard=none (DDP) with a teacher")
            from wikigpt.adapt.distill import check_files
            check_files(self)  # a bad teacher fails here, before anything is written
