"""
Losses over the output layer that never hold all the logits at once: the fused cross-entropy
the training step uses (NextTokenLoss), the per-token losses evaluation sums, and the
distillation loss (wikigpt/adapt/distill.py). The two fused ones share one chunk loop.
model.py's own forward keeps the plain F.cross_entropy: this file is what training adds to it.

The plain way, logits = x @ W.T then F.cross_entropy, materialises a (B*T, V) fp32 logits
tensor, a softmax of the same size and its gradient: with the GPT-2 vocab and B*T = 2048 that
is 3 x 412 MB of memory traffic per step, reallocated every step. Here we walk over the rows in
chunks and compute the loss *and* both gradients chunk by chunk in the forward pass, so only
one chunk's logits ever exist. Same FLOPs, a fraction of the memory.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class NextTokenLoss(nn.Module):
    """(x, y) -> the model's mean cross-entropy over y != -1, through the fused loss: what the
    training step calls. The model is the only submodule, so the optimizer, DDP, state_dict and
    .train()/.eval() see the model alone."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, y):
        h = self.model.hidden_states(x)  # (B, T, C)
        return linear_cross_entropy(h.view(-1, h.size(-1)), self.model.lm_head.weight, y.reshape(-1))


def token_losses(x, weight, targets, chunk_rows=1024):
    """Per-token cross-entropy of (x @ weight.T) against targets, x: (B, T, C), targets: (B, T);
    0 where targets == -1. No gradients (evaluation): 1024 rows of logits at a time."""
    flat, t = x.view(-1, x.size(-1)), targets.reshape(-1)
    losses = [F.cross_entropy(F.linear(flat[i:i + chunk_rows], weight).float(), t[i:i + chunk_rows],
                              ignore_index=-1, reduction="none") for i in range(0, len(t), chunk_rows)]
    return torch.cat(losses).view(targets.shape)  # (B, T)


def linear_cross_entropy(x, weight, targets, chunk_rows=1024):
    """mean cross-entropy of (x @ weight.T) against targets, ignoring targets == -1."""
    if not torch.is_grad_enabled() or not (x.requires_grad or weight.requires_grad):
        logits = (x @ weight.to(x.dtype).t()).float()
        return F.cross_entropy(logits, targets, ignore_index=-1)
    return _LinearCrossEntropy.apply(x, weight, targets, chunk_rows)


def distill_cross_entropy(x, weight, t_x, t_weight, targets, alpha: float, temperature: float,
                          chunk_rows=1024):
    """alpha * T^2 * KL(softmax(t_x @ t_weight.T / T) || softmax(x @ weight.T / T)) + (1 - alpha)
    * cross-entropy of x @ weight.T, each the mean over the targets != -1. Gradients reach x
    and weight only."""
    return _DistillCrossEntropy.apply(x, weight, t_x.detach(), t_weight.detach(), targets,
                                      float(alpha), float(temperature), chunk_rows)


# ----------------------------------------------------------------------------------------
# The chunk loop, written once

def compute_dtype(x) -> torch.dtype:
    """The dtype the head's matmuls run in: autocast's when it is on, else x's."""
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


def fused_head(x, weight, targets, chunk_rows, chunk_loss):
    """Loss and both gradients of a loss on x @ weight.T, chunk by chunk. x: (N, C), weight:
    (V, C), targets: (N,) with -1 = ignore. chunk_loss(loss, logits, safe_t, counted, rows) adds
    the chunk's summed loss to `loss` and gives d(summed loss)/d logits: logits (n, V) fp32,
    safe_t (n, 1) targets with -1 as 0, counted (n, 1) 0 on ignored rows, rows the chunk's slice.
    Returns (mean loss, grad_x, grad_w)."""
    # The precision of each matmul is set here, not left to autocast: under autocast every
    # chunk's x @ W.T would cast all of W again (x arrives in fp32 from the final norm).
    cd = compute_dtype(x)
    x_c, w = x.to(cd), weight.to(cd)  # W cast once, to the compute dtype (bf16/fp16 or fp32)
    n_counted = (targets != -1).sum().clamp(min=1)
    loss = torch.zeros((), device=x.device, dtype=torch.float32)
    grad_x = torch.empty_like(x)
    grad_w = torch.zeros_like(weight, dtype=torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        for i in range(0, x.size(0), chunk_rows):
            rows = slice(i, i + chunk_rows)
            xs, ts = x_c[rows], targets[rows]  # (n, C), (n,)
            counted = (ts != -1).float()[:, None]  # (n, 1): 0 on ignored rows
            loss, dlogits = chunk_loss(loss, (xs @ w.t()).float(), ts.clamp(min=0)[:, None], counted, rows)
            # The row mask and 1/n_counted are applied on the small (n, C) side. Both matmuls run
            # in cd, and 1/n_counted after them in fp32: in fp16, 1/n_counted (~1e-5 for 65k
            # tokens) times a gradient falls below fp16's smallest normal (6e-5) before
            # GradScaler's factor (applied in backward) could lift it
            dlogits = dlogits.to(cd)  # (n, V)
            grad_x[rows] = ((dlogits @ w).float() * (counted / n_counted)).to(x.dtype)  # (n, C)
            grad_w += (dlogits.t() @ (xs * counted.to(cd))).float()  # (V, C): in cd, summed in fp32
    return loss / n_counted, grad_x, grad_w / n_counted


class _FusedHead(torch.autograd.Function):
    """Backward of a loss whose forward computed both gradients already: scale them."""

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss.to(grad_x.dtype), grad_w * grad_loss, *[None] * ctx.n_other


class _LinearCrossEntropy(_FusedHead):
    @staticmethod
    def forward(ctx, x, weight, targets, chunk_rows):
        def chunk_loss(loss, logits, safe_t, counted, rows):
            logp = torch.log_softmax(logits, dim=-1)  # (n, V): matmul in cd, softmax in fp32
            loss = loss - (logp.gather(1, safe_t) * counted).sum()
            # d loss / d logits = softmax - onehot, built in place in logp's memory
            return loss, logp.exp_().scatter_add_(1, safe_t, torch.full_like(counted, -1.0))

        loss, grad_x, grad_w = fused_head(x, weight, targets, chunk_rows, chunk_loss)
        ctx.save_for_backward(grad_x, grad_w)
        ctx.n_other = 2
        return loss


# With GPT-2's vocabulary (50,304 padded) and 1,024 rows a chunk, the ~5 fp32 (rows, V) buffers
# of the distillation loss take 1 GB whatever B*T is; unchunked, B*T = 16 x 1024 would take
# 5 x 3.3 GB.

class _DistillCrossEntropy(_FusedHead):
    @staticmethod
    def forward(ctx, x, weight, t_x, t_weight, targets, alpha, temperature, chunk_rows):
        # x: (N, C) student, weight: (V, C); t_x: (N, C_t) teacher, t_weight: (V, C_t); targets: (N,)
        # The teacher's head is cast to the compute dtype once too, not by autocast in every chunk
        cd, T = compute_dtype(x), temperature
        t_x, tw = t_x.to(cd), t_weight.to(cd)

        def chunk_loss(loss, logits, safe_t, counted, rows):
            log_q = torch.log_softmax(logits / T, dim=-1)  # (n, V) student at temperature T
            logp = torch.log_softmax(logits, dim=-1)  # (n, V) student, for the cross-entropy
            del logits
            log_pt = torch.log_softmax((t_x[rows] @ tw.t()).float() / T, dim=-1)  # (n, V) teacher
            p_t = log_pt.exp()
            kl = log_pt.sub_(log_q).mul_(p_t).sum(-1, keepdim=True)  # (n, 1) KL(teacher || student)
            # the same operations as the fused cross-entropy, so alpha = 0 gives its exact bits
            loss = loss + (1 - alpha) * -(logp.gather(1, safe_t) * counted).sum() + alpha * T * T * (kl * counted).sum()
            # d loss / d logits = (1 - alpha) (softmax - onehot) + alpha T (q_T - p_T)
            dlogits = logp.exp_().scatter_add_(1, safe_t, torch.full_like(counted, -1.0))
            return loss, dlogits.mul_(1 - alpha).add_(log_q.exp_().sub_(p_t), alpha=alpha * T)

        loss, grad_x, grad_w = fused_head(x, weight, targets, chunk_rows, chunk_loss)
        ctx.save_for_backward(grad_x, grad_w)
        ctx.n_other = 6
        return loss
