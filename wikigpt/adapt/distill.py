"""
Knowledge distillation: a student learns from a teacher's predicted distributions as well as
from the data, through train.py's one training loop (pretraining and chat SFT alike):

    python prune.py --ckpt out/chat/best.pt --out out/small.pt --keep_layers 2
    python chat_sft.py config/sft_demo.toml --init_from=out/small.pt --teacher=out/chat/best.pt
    python train.py config/demo_cpu.toml --init_from=out/small.pt --teacher=out/demo/best.pt

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy

over the counted targets only (y != -1: in chat SFT, the assistant's tokens), where _T is the
softmax at temperature T. T^2 keeps the soft term's gradient the size of the hard one's as T
grows (Hinton et al., 2015). The teacher stays in eval mode without gradients; its logits come
from the same x in the same step. alpha = 0 is ordinary training: the teacher is checked, not run.

This module owns the teacher's checks (what may teach what) and the loss module; the loss
itself, fused and chunked, is wikigpt/loss.py's. train.py calls student_loss() once, at the
line where it picks what it calls each step.
"""
from pathlib import Path

import torch
import torch.nn as nn

from model import GPT, GPTConfig
from wikigpt.checkpoint import load_checkpoint, model_from_checkpoint, refuse_unrunnable
from wikigpt.cli import UsageError
from wikigpt.loss import NextTokenLoss, distill_cross_entropy
from wikigpt.tokenizer import Tokenizer


# ----------------------------------------------------------------------------------------
# Which checkpoints can teach, and which students can learn

def check_files(cfg):
    """Called by TrainConfig.validate, before anything is read or written: the teacher and
    the student's starting checkpoint are runnable and fit together."""
    teacher = load_checkpoint(cfg.teacher)
    refuse_unrunnable(teacher, cfg.teacher, "teacher")
    if cfg.CHAT and teacher.get("kind") == "pretrain":  # its soft targets would teach no chat turn
        raise UsageError(f"teacher {cfg.teacher} is a base (pretrained) model, never taught the chat turns: a chat "
                         "run distils from a chat model (the one it was pruned from, say), not a base one.")
    if cfg.init_from and Path(cfg.init_from).is_file() and cfg.resume != "true":
        student = load_checkpoint(cfg.init_from)
        refuse_unrunnable(student, cfg.init_from, "student (init_from)")
        check_pair(teacher, cfg.teacher, student["tokenizer"], GPTConfig(**student["model_config"]),
                   f"the student {cfg.init_from}")


def check_pair(teacher: dict, path, spec: dict, student: GPTConfig, who: str):
    """Can this teacher checkpoint teach a student of this tokenizer and shape?"""
    t = GPTConfig(**teacher["model_config"])
    if teacher["tokenizer"] != spec:
        theirs, ours = Tokenizer(teacher["tokenizer"]).name, Tokenizer(spec).name
        same_name = " (two of that name, trained on other text)" if theirs == ours else ""
        raise UsageError(f"teacher {path} uses the tokenizer {theirs}, {who} {ours}{same_name}: distillation "
                         "compares their predictions id by id, so both must use the same one. Distil from a "
                         "teacher trained on this dataset.")
    if t.padded_vocab != student.padded_vocab:
        raise UsageError(f"teacher {path} has {t.vocab_size} token ids, {who} {student.vocab_size}: "
                         "they must predict over the same ids.")
    if t.block_size < student.block_size:
        raise UsageError(f"teacher {path} reads {t.block_size} tokens at most, {who} {student.block_size}: "
                         "use a teacher with at least the student's context.")


def load_teacher(path, tok: Tokenizer, student: GPT, device) -> GPT:
    """The teacher, checked against the student (again: a new or resumed student is known
    only here): frozen, in eval mode, on the device."""
    ckpt = load_checkpoint(path)
    refuse_unrunnable(ckpt, path, "teacher")
    check_pair(ckpt, path, tok.spec, student.cfg, "this run's student")
    teacher, _ = model_from_checkpoint(ckpt, device, path)
    return teacher.eval().requires_grad_(False)


def student_loss(student: GPT, cfg, tok: Tokenizer, device) -> nn.Module:
    """What the training loop calls instead of NextTokenLoss(student) when cfg.teacher is set."""
    teacher = load_teacher(cfg.teacher, tok, student, device)
    if cfg.distill_alpha == 0:
        return NextTokenLoss(student)  # ordinary training, bit for bit (tests/test_prune.py)
    return DistillLoss(student, teacher, cfg.distill_alpha, cfg.distill_temperature)


class DistillLoss(nn.Module):
    """(x, y) -> the distillation loss of the student. The student is the only submodule, so
    the optimizer, DDP, state_dict and .train()/.eval() see the student alone; the teacher is
    a plain attribute that stays frozen in eval mode."""

    def __init__(self, student: GPT, teacher: GPT, alpha: float, temperature: float):
        super().__init__()
        self.student = student
        object.__setattr__(self, "teacher", teacher)  # not registered: not trained, not synced
        self.alpha, self.temperature = alpha, temperature

    def forward(self, x, y):
        h = self.student.hidden_states(x)  # (B, T, C)
        with torch.no_grad():
            ht = self.teacher.hidden_states(x)  # (B, T, C_teacher)
        return distill_cross_entropy(h.view(-1, h.size(-1)), self.student.lm_head.weight,
                                     ht.view(-1, ht.size(-1)), self.teacher.lm_head.weight,
                                     y.reshape(-1), self.alpha, self.temperature)
