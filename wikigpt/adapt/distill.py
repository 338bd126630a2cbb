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

This module owns the teacher's checks (what may teach what) and the loss; train.py calls
student_loss() once, at the line where it picks what it calls each step.
"""
from pathlib import Path

import torch
import torch.nn as nn

from model import GPT, GPTConfig
from wikigpt.checkpoint import load_checkpoint, model_from_checkpoint
from wikigpt.cli import UsageError
from wikigpt.tokenizer import Tokenizer


# ----------------------------------------------------------------------------------------
# Which checkpoints can teach, and which students can learn

def refuse_unrunnable(ckpt: dict, path, role: str):
    """A teacher or student must be a plain float model: say how to get one."""
    if ckpt.get("kind") not in ("pretrain", "sft"):
        raise UsageError(f"{role} {path}: a {ckpt.get('kind')!r} checkpoint holds no model.")
    if "lora" in ckpt:
        raise UsageError(f"{role} {path} holds LoRA adapters, not a whole model: merge them first "
                         f"(python convert.py lora {path} merged.pt) and use merged.pt.")
    if ckpt.get("quant") == "int8":
        raise UsageError(f"{role} {path} holds int8 weights, which neither train nor give exact "
                         "logits: use the float checkpoint it was quantised from.")


def check_files(cfg):
    """Called by TrainConfig.validate, before anything is read or written: the teacher and
    the student's starting checkpoint are runnable and fit together."""
    teacher = load_checkpoint(cfg.teacher)
    refuse_unrunnable(teacher, cfg.teacher, "teacher")
    if cfg.init_from and Path(cfg.init_from).is_file() and cfg.resume != "true":
        student = load_checkpoint(cfg.init_from)
        refuse_unrunnable(student, cfg.init_from, "student (init_from)")
        check_pair(teacher, cfg.teacher, student["tokenizer"], GPTConfig(**student["model_config"]),
                   f"the student {cfg.init_from}")


def check_pair(teacher: dict, path, spec: dict, student: GPTConfig, who: str):
    """Can this teacher checkpoint teach a student of this tokenizer and shape?"""
    t = GPTConfig(**teacher["model_config"])
    if teacher["tokenizer"] != spec:
        raise UsageError(f"teacher {path} uses the tokenizer {Tokenizer(teacher['tokenizer']).name}, "
                         f"{who} {Tokenizer(spec).name}: distillation compares their predictions id by "
                         "id, so both must use the same one. Distil from a teacher trained on this dataset.")
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
    """What the training loop calls instead of the student when cfg.teacher is set."""
    teacher = load_teacher(cfg.teacher, tok, student, device)
    if cfg.distill_alpha == 0:
        return student  # ordinary training, bit for bit (tests/test_prune.py)
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


# ----------------------------------------------------------------------------------------
# The loss, fused and chunked like model.linear_cross_entropy: both heads' logits exist one
# chunk of rows at a time. With GPT-2's vocabulary (50,304 padded) and 1,024 rows a chunk,
# the ~5 fp32 (rows, V) buffers below take 1 GB whatever B*T is; unchunked, B*T = 16 x 1024
# would take 5 x 3.3 GB.

class _DistillCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, t_x, t_weight, targets, alpha, temperature, chunk_rows):
        # x: (N, C) student, weight: (V, C); t_x: (N, C_t) teacher, t_weight: (V, C_t); targets: (N,)
        # Each matmul's dtype is set here, as in model.linear_cross_entropy: both heads are cast
        # to the compute dtype once, not by autocast in every chunk
        cd = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        x_c, w, t_x, tw, T = x.to(cd), weight.to(cd), t_x.to(cd), t_weight.to(cd), temperature
        n_counted = (targets != -1).sum().clamp(min=1)
        loss = torch.zeros((), device=x.device, dtype=torch.float32)
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros_like(weight, dtype=torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            for i in range(0, x.size(0), chunk_rows):
                xs, ts = x_c[i:i + chunk_rows], targets[i:i + chunk_rows]  # (n, C), (n,)
                counted = (ts != -1).float()[:, None]  # (n, 1): 0 on ignored rows
                safe_t = ts.clamp(min=0)[:, None]
                logits = (xs @ w.t()).float()  # (n, V)
                log_q = torch.log_softmax(logits / T, dim=-1)  # (n, V) student at temperature T
                logp = torch.log_softmax(logits, dim=-1)  # (n, V) student, for the cross-entropy
                del logits
                log_pt = torch.log_softmax((t_x[i:i + chunk_rows] @ tw.t()).float() / T, dim=-1)  # (n, V) teacher
                p_t = log_pt.exp()
                kl = log_pt.sub_(log_q).mul_(p_t).sum(-1, keepdim=True)  # (n, 1) KL(teacher || student)
                # the same operations as the fused cross-entropy, so alpha = 0 gives its exact bits
                loss = loss + (1 - alpha) * -(logp.gather(1, safe_t) * counted).sum() + alpha * T * T * (kl * counted).sum()
                # d loss / d logits = (1 - alpha) (softmax - onehot) + alpha T (q_T - p_T), times
                # counted / n_counted, applied in fp32 after the matmuls (model.py says why)
                dlogits = logp.exp_().scatter_add_(1, safe_t, torch.full_like(counted, -1.0))
                dlogits.mul_(1 - alpha).add_(log_q.exp_().sub_(p_t), alpha=alpha * T)
                dlogits = dlogits.to(cd)  # (n, V)
                grad_x[i:i + chunk_rows] = ((dlogits @ w).float() * (counted / n_counted)).to(x.dtype)  # (n, C)
                grad_w += (dlogits.t() @ (xs * counted.to(cd))).float()  # (V, C), summed in fp32
        loss /= n_counted
        grad_w /= n_counted
        ctx.save_for_backward(grad_x, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss.to(grad_x.dtype), grad_w * grad_loss, None, None, None, None, None, None


def distill_cross_entropy(x, weight, t_x, t_weight, targets, alpha: float, temperature: float,
                          chunk_rows=1024):
    """alpha * T^2 * KL(softmax(t_x @ t_weight.T / T) || softmax(x @ weight.T / T)) + (1 - alpha)
    * cross-entropy of x @ weight.T, each the mean over the targets != -1. Gradients reach x
    and weight only."""
    return _DistillCrossEntropy.apply(x, weight, t_x.detach(), t_weight.detach(), targets,
                                      float(alpha), float(temperature), chunk_rows)
