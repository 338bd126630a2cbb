"""
Processes and devices: one process, or many under torchrun (NCCL between GPUs, gloo between
CPU processes), and the collective helpers the training loop calls.
"""
import inspect
import os
import socket
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from wikigpt.cli import UsageError
from wikigpt.run.device import enable_tf32, gpu_dtype, pick_device
from wikigpt.config import TrainConfig


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
    # under torchrun each process takes its LOCAL_RANK's GPU: of --device only its type counts
    want = pick_device(cfg.device.split(":")[0] if "RANK" in os.environ else cfg.device)
    if want.startswith("cuda"):
        enable_tf32()  # the fp32 parts (and dtype=float32 runs) on tensor cores
    if "RANK" not in os.environ and cfg.shard == "fsdp":  # FSDP needs a process group, even of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    if "RANK" not in os.environ:
        return Dist(device=want)
    if missing := [k for k in ("WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]:
        raise UsageError(f"RANK is set but not {', '.join(missing)}: start several processes with torchrun "
                         "(docs/training.md), one without RANK in the environment")
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
    if device_type == "cuda":  # bfloat16 where the GPU runs it natively, float16 + GradScaler before
        return getattr(torch, gpu_dtype())
    return torch.float32  # CPU autocast to bf16 is slower than fp32 on most CPUs


# No buffer broadcast before every forward: torch 2.13 names it forward_sync_buffers (the old
# broadcast_buffers warns there); the oldest torch we support (2.6) knows only broadcast_buffers.
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


def data_parallel(module: torch.nn.Module, dist: Dist) -> torch.nn.parallel.DistributedDataParallel:
    """DDP as train.py wraps the model, without two of its defaults' costs: no broadcast of
    process 0's buffers before every forward (ours, the rotary tables and LoRA's row ids, are
    computed alike by every process and never trained); gradients as views into the all-reduce
    buckets, not a copy beside them (4 bytes per parameter: 0.65 GB for gpt2_124m's 162M)."""
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[dist.local_rank] if dist.device_type == "cuda" else None,
        gradient_as_bucket_view=True, **_NO_BUFFER_SYNC)


def gradient_sync(wrapper, sync: bool, distributed: bool):
    """Average gradients over processes only on an optimizer step's last micro-step. wrapper:
    the DDP module (or the compiled module around it), or the FSDP-sharded model."""
    wrapper = getattr(wrapper, "_orig_mod", wrapper)  # torch.compile's wrapper: the module it compiled
    if not distributed or sync:
        if hasattr(wrapper, "set_requires_gradient_sync"):  # FSDP: on again after skipped ones
            wrapper.set_requires_gradient_sync(True)
        return nullcontext()
    if hasattr(wrapper, "no_sync"):  # DDP
        return wrapper.no_sync()
    wrapper.set_requires_gradient_sync(False)  # FSDP: gradients stay unsharded until the last
    return nullcontext()


def out_of_time(t_start: float, max_time: float, dist: Dist, step: int, every: int) -> bool:
    """Has the time budget run out? One process reads its clock at every step. Several stop at
    the same step (one stopping alone would hang the others): process 0's clock decides, which
    takes a broadcast (a host sync), so they look only every `every` steps."""
    over = time.time() - t_start > max_time
    if dist.world == 1:
        return over
    if step % every:
        return False
    flag = torch.tensor([float(over)], device=dist.device)
    torch_dist.broadcast(flag, src=0)
    return bool(flag.item())
