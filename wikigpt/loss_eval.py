"""Loss on a fixed set of windows, and bits per byte: the metric that compares models across
tokenizers. train.py evaluates with it as it trains; eval.py and bench/ after."""
import math

import torch
import torch.distributed as torch_dist

from model import GPT
from wikigpt.batches import to_device
from wikigpt.loss import token_losses
from wikigpt.run.dist import Dist
from wikigpt.run.throughput import sum_dtype
from wikigpt.tokenizer import Tokenizer


def token_bytes_table(tok: Tokenizer, padded_vocab: int, device) -> torch.Tensor:
    """(padded_vocab,) UTF-8 bytes each id stands for (0 for specials and padding): bits per byte."""
    return torch.tensor(tok.token_bytes() + [0] * (padded_vocab - tok.n_vocab), dtype=sum_dtype(device), device=device)


@torch.no_grad()
def evaluate(model: GPT, x_all, y_all, token_bytes, batch_size, dist: Dist, autocast) -> dict:
    """Mean loss over the counted targets (y != -1) and bits per byte: the summed loss in
    bits divided by the UTF-8 bytes those targets stand for, comparable across tokenizers."""
    model.eval()
    totals = torch.zeros(3, dtype=sum_dtype(dist.device), device=dist.device)  # loss sum, tokens, bytes
    stride = dist.world * batch_size
    for start in range(0, len(x_all), stride):  # the same number of forwards in every process
        i = start + dist.rank * batch_size  # (FSDP gathers weights inside each: all must take part)
        if i >= len(x_all):  # this process has no rows left: a counted-nothing batch
            x, y = to_device(x_all[:1], torch.full_like(y_all[:1], -1), dist.device)
        else:
            x, y = to_device(x_all[i:i + batch_size], y_all[i:i + batch_size], dist.device)
        with autocast:
            losses = token_losses(model.hidden_states(x), model.lm_head.weight, y)  # (B, T), 0 where y == -1
        counted = y != -1
        totals[0] += losses.to(totals.dtype).sum()
        totals[1] += counted.sum()
        totals[2] += (token_bytes[y.clamp(min=0)] * counted).sum()  # a mask multiply: no nonzero(), no sync
    if dist.world > 1:
        torch_dist.all_reduce(totals)
    model.train()
    loss_sum, n_tokens, n_bytes = totals.tolist()
    return {"loss": loss_sum / max(n_tokens, 1), "bpb": loss_sum / math.log(2) / max(n_bytes, 1)}
