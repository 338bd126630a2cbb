"""
Sharded training (train.py --shard=fsdp): with FSDP2 each of N processes holds 1/N of the
weights, gradients and optimizer state, and gathers a block's full weights only while it runs
that block. For models whose weights + gradients + AdamW state (16 bytes per parameter in
fp32) do not fit one GPU; below that, DDP (the default) is simpler and as fast.

Checkpoints are folders written with torch.distributed.checkpoint (DCP): every process writes its
own shards in parallel, and a run resumes from them on any number of processes (2 -> 1 -> 2).
best.pt stays one ordinary file that every tool loads; `convert` makes one of last.dcp too:

    torchrun --nproc_per_node=8 train.py config/gpt2_350m.toml --shard=fsdp
    python convert.py dcp out/gpt2_350m/last.dcp out/gpt2_350m/last_full.pt
"""
import shutil
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from wikigpt.checkpoint import upgrade
from wikigpt.cli import UsageError
from model import GPT

TRAIN_STATE = "train_state.pt"  # in the DCP folder: step, data position, RNG, configs (process 0)


def mixed_precision(device_type: str, dtype: torch.dtype) -> MixedPrecisionPolicy:
    """On GPU with a low-precision dtype the gathered weights compute in it and gradients reduce
    in fp32. Block inputs are left as they come (cast_forward_inputs=False): the residual stream
    stays float32 as under DDP, where autocast casts each matmul's inputs, not the stream;
    FSDP's default casts every block's input, so the residual sums would round to bfloat16."""
    if device_type == "cuda" and dtype != torch.float32:
        return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    return MixedPrecisionPolicy()


def shard_model(model: GPT, device_type: str, world: int, dtype: torch.dtype) -> GPT:
    """Shard every block, then the rest (embeddings, final norm, head) as the root group."""
    mesh = init_device_mesh(device_type, (world,))
    policy = mixed_precision(device_type, dtype)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def full_state(model: GPT) -> dict:
    """The whole model's weights as plain tensors on process 0's CPU ({} elsewhere): every
    process must call it (it gathers)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save(folder: Path, model: GPT, optimizers: list, train_state: dict, master: bool):
    """A resumable checkpoint folder: sharded weights + optimizer state (DCP), and the rest of
    the training state from process 0. Written under a temporary name, then renamed."""
    tmp = folder.with_name(folder.name + ".tmp")
    model_sd, optim_sd = get_state_dict(model, optimizers)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp)
    if master:
        torch.save(train_state, tmp / TRAIN_STATE)
    torch_dist.barrier()
    if master:
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        if old.exists():
            shutil.rmtree(old)
    torch_dist.barrier()


def load_train_state(folder: Path) -> dict:
    """What a DCP checkpoint folder holds besides tensors (step, configs, data position...)."""
    path = Path(folder) / TRAIN_STATE
    if not path.is_file():
        raise UsageError(f"{folder} is not a complete sharded checkpoint (no {TRAIN_STATE}). Start without "
                         "--resume, or point out_dir at the run that wrote it.")
    return upgrade(torch.load(path, map_location="cpu", weights_only=True))


def load(folder: Path, model: GPT, optimizers: list):
    """Load sharded weights and optimizer state into an already sharded model and its
    optimizers, whatever the number of processes that wrote them."""
    model_sd, optim_sd = get_state_dict(model, optimizers)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=folder)
    set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
