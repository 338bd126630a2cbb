"""
Pretraining batches: the token shards cut into windows, visited in a seeded order without
replacement and disjoint per process; the fixed val windows.
"""
import numpy as np
import torch

from wikigpt.cli import UsageError
from wikigpt.config import TrainConfig


class SeededOrder:
    """What every training stream shares: n items visited in a seeded random order, a new one
    each epoch; process `rank` of `world` takes its share of each batch. The position in the
    order is the whole state: saving it makes resume continue with the very next batch."""

    def __init__(self, n: int, block_size, batch_size, seed, rank=0, world=1, device="cpu"):
        self.n_windows, self.T, self.B = n, block_size, batch_size
        self.seed, self.rank, self.world, self.device = seed, rank, world, device
        self.epoch, self.cursor, self._order = 0, 0, None

    def state_dict(self):
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state):
        self.epoch, self.cursor, self._order = state["epoch"], state["cursor"], None

    def order(self):
        if self._order is None:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_windows)
        return self._order


class PretrainBatches(SeededOrder):
    """Cuts the train shards into non-overlapping windows of block_size + 1 tokens and visits
    them in a seeded random order, each exactly once per epoch. Process r of W takes windows
    r, r+W, r+2W... of that order, so processes never read the same data."""

    def __init__(self, shards, block_size, batch_size, seed, rank=0, world=1, device="cpu"):
        per_shard = [max(len(s) - 1, 0) // block_size for s in shards]
        self.shards, self.first = shards, np.cumsum([0] + per_shard)  # first window index of each shard
        super().__init__(int(self.first[-1]), block_size, batch_size, seed, rank, world, device)
        if self.n_windows < batch_size * world:  # a window is block_size + 1 tokens of one shard
            raise UsageError(f"the train split holds {self.n_windows:,} windows of block_size {block_size}, "
                             f"too few for {batch_size * world}: " + ("every shard is shorter than a window, which never "
                             "crosses shards. Lower block_size, or prepare more data or larger shards (--shard_tokens)."
                             if self.n_windows == 0 else "lower block_size or batch_size, or prepare more data."))

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
        batch = torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, T+1), one contiguous block
        batch = on_device(batch, self.device)
        return batch[:, :-1], batch[:, 1:]  # x, y: views of the block, sliced on the device


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


def on_device(t: torch.Tensor, device: str) -> torch.Tensor:
    """A contiguous CPU tensor on the device. To a GPU through pinned memory, asynchronously: the
    copy overlaps with the GPU's work on the step before (a pageable tensor would be copied
    through a staging buffer, synchronously; so would a non-contiguous slice)."""
    if device.startswith("cuda"):
        return t.contiguous().pin_memory().to(device, non_blocking=True)
    return t.to(device)


def to_device(x, y, device):
    return on_device(x, device), on_device(y, device)


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
    if n == 0:  # the stream is the n_tokens + 1 asked for, unless the val split is shorter
        raise UsageError(f"eval_tokens ({n_tokens}) must be at least block_size ({block_size})."
                         if len(stream) > n_tokens else f"the val split ({len(stream)} tokens) is shorter than "
                         f"block_size {block_size}. Lower block_size or use a larger val_fraction.")
    x = torch.from_numpy(stream[:n * block_size].reshape(n, block_size))
    y = torch.from_numpy(stream[1:n * block_size + 1].reshape(n, block_size))
    return x, y
