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

Loading a folder never runs code from it (as checkpoint.py promises for files): DCP's reader
unpickles .metadata and loads non-tensor items with weights_only=False; ours (SafeReader)
allows only DCP's own metadata classes and loads every item with weights_only=True. A save
writes last.dcp.tmp, moves last.dcp aside to last.dcp.old, renames the new folder in and
deletes the old one; a crash between the renames leaves a folder `resumable` finds.
"""
import io
import pickle
import re
import shutil
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch
import torch.distributed as torch_dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from wikigpt.checkpoint import load_checkpoint, upgrade
from wikigpt.cli import UsageError
from wikigpt.run.durable import fsync_tree, replace_durably, replacing
from model import GPT

TRAIN_STATE = "train_state.pt"  # in the DCP folder: step, data position, configs (process 0)


def mixed_precision(device_type: str, dtype: torch.dtype) -> MixedPrecisionPolicy:
    """The blocks' policy: on GPU with a low-precision dtype the gathered weights compute in it
    and gradients reduce in fp32. Block inputs are left as they come (cast_forward_inputs=False):
    the residual stream stays float32 as under DDP, where autocast casts each matmul's inputs,
    not the stream; FSDP's default casts every block's input, so the residual sums would round
    to bfloat16. (The root group is float32: shard_model.)"""
    if device_type == "cuda" and dtype != torch.float32:
        return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    return MixedPrecisionPolicy()


def shard_model(model: GPT, device_type: str, world: int, dtype: torch.dtype) -> GPT:
    """Shard every block, then the rest (embeddings, final norm, head) as the root group. The
    root group keeps float32 weights, as under DDP: gathered in bf16, wte(idx) would be bf16 and
    so would every residual sum after it (the blocks' cast_forward_inputs=False keeps nothing
    fp32 that arrives bf16). The head's matmul still runs in the compute dtype: the fused loss
    casts its weight to autocast's dtype once. The price: the root group's all-gather moves
    fp32, twice the bytes (embeddings + head: 0.3 GB for gpt2_124m's modern shape)."""
    mesh = init_device_mesh(device_type, (world,))
    policy = mixed_precision(device_type, dtype)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=MixedPrecisionPolicy())  # float32 throughout
    # the training step and evaluation call hidden_states, not forward (wikigpt/loss.py): it
    # must gather the root group's weights as forward does
    register_fsdp_forward_method(model, "hidden_states")
    return model


def full_state(model: GPT) -> dict:
    """The whole model's weights as plain tensors on process 0's CPU ({} elsewhere): every
    process must call it (it gathers)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# ----------------------------------------------------------------------------------------
# Saving: a folder that appears whole, and where a save cut short left it

def aside(folder: Path) -> tuple[Path, Path]:
    """(the new folder being written, the old one moved aside while the new one goes in)."""
    return folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")


def complete(folder: Path) -> bool:
    """DCP writes .metadata after every process's shards, and save() train_state.pt after that."""
    return (folder / ".metadata").is_file() and (folder / TRAIN_STATE).is_file()


def resumable(folder: Path) -> Path | None:
    """The checkpoint folder a restarted run continues from: `folder` (last.dcp), or, where a
    save was cut short between its two renames, the newest complete one it left (the new
    last.dcp.tmp, else last.dcp.old); None when there is none."""
    tmp, old = aside(folder)
    if folder.is_dir():
        return folder
    if complete(tmp):
        return tmp
    return old if old.is_dir() else None


def refuse_other_kind(out_dir: Path, sharded: bool):
    """A resume beside only the other kind's checkpoint (last.pt of an unsharded run, last.dcp of
    a sharded one): resume=auto would start that run over from step 0, over its files, and
    resume=true said the checkpoint of its own kind was not found. Refused, saying which it is."""
    folder, single = resumable(out_dir / "last.dcp"), out_dir / "last.pt"
    other = (single if sharded and folder is None and single.exists() else
             folder if not sharded and folder is not None and not single.exists() else None)
    if other is not None:
        raise UsageError(f"{other} is the last checkpoint of a run {'without' if sharded else 'with'} "
                         f"--shard=fsdp: resume it {'without' if sharded else 'with'} --shard=fsdp, or choose "
                         "another out_dir (a resume never starts a run over beside its checkpoint).")


def lost_before_first_save(out_dir: Path) -> bool:
    """A run killed in its first save (a sharded one: any time before its second eval, as last.dcp
    is not saved at step 0) leaves best.pt of step 0 alone. Its weights are where the run starts,
    rewritten by the same step 0, so a new run (resume=auto, or a plain re-run) starts over it."""
    best = out_dir / "best.pt"
    if resumable(out_dir / "last.dcp") is not None or (out_dir / "last.pt").exists() or not best.is_file():
        return False
    try:
        return load_checkpoint(best).get("step") == 0
    except UsageError:  # not a checkpoint we can read: not ours to replace
        return False


def settle(folder: Path):
    """Before a save (process 0): the folder `resumable` chose goes back to its name, and what
    a cut-short save left beside it (an unfinished .tmp, a stale .old) is deleted."""
    tmp, old = aside(folder)
    found = resumable(folder)
    if found is not None and found != folder:
        replace_durably(found, folder)
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)


def swap_in(tmp: Path, folder: Path):
    """Rename a finished save in place of the last one (process 0). A directory cannot be
    renamed over a full one, so the old one moves aside first; a crash between any two steps
    leaves a folder that `resumable` finds: last.dcp, or the complete .tmp, or .old."""
    old = aside(folder)[1]
    fsync_tree(tmp)  # every process's shards and train_state.pt on disk before any rename
    if folder.exists():
        replace_durably(folder, old)
    replace_durably(tmp, folder)
    if old.exists():
        shutil.rmtree(old)


def save(folder: Path, model: GPT, optimizers: list, train_state: dict, master: bool):
    """A resumable checkpoint folder: sharded weights + optimizer state (DCP), and the rest of
    the training state from process 0. Written under a temporary name, then swapped in."""
    tmp = aside(folder)[0]
    if master:
        settle(folder)  # a run resumed from .tmp or .old has read it by now (restore() is before any save)
    torch_dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizers)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp)
    if master:
        with replacing(tmp / TRAIN_STATE) as path:  # written last: its presence marks the folder complete
            torch.save(train_state, path)
    torch_dist.barrier()
    if master:
        swap_in(tmp, folder)
    torch_dist.barrier()


# ----------------------------------------------------------------------------------------
# Loading: DCP's reader, minus the two places it would run code from the folder

_DCP = "torch.distributed.checkpoint"
# Every global a .metadata of this code's saves names (listed from real folders, torch 2.13):
# DCP's metadata classes and the few torch and pathlib types inside them. None runs code.
METADATA_GLOBALS = {(f"{_DCP}.metadata", name) for name in (
    "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
    "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")} | {
    (f"{_DCP}.filesystem", "_StorageInfo"), ("torch", "Size"), ("torch.serialization", "_get_layout")}
# the path the folder was saved under (informative only): read as a pure path, which any OS can make
SAVED_PATHS = {"PosixPath": PurePosixPath, "PurePosixPath": PurePosixPath, "WindowsPath": PureWindowsPath,
               "PureWindowsPath": PureWindowsPath}


class _Foreign(Exception):
    """A pickle named a global that is not on the list."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "pathlib" and name in SAVED_PATHS:
            return SAVED_PATHS[name]
        if (module, name) in METADATA_GLOBALS:
            return super().find_class(module, name)
        raise _Foreign(f"{module}.{name}")


# what torch raises for a shard file cut short or garbled: its zip reader ("PytorchStreamReader failed
# reading zip archive"), its unpickler (EOFError, "invalid load key"), the file gone (OSError)
CUT_SHORT = (RuntimeError, EOFError, OSError, pickle.UnpicklingError)


def unreadable(folder, name: str, e: Exception) -> UsageError:
    """A file of the folder that cannot be read: cut short or overwritten (a copy that failed, a
    full disk), or not of a sharded checkpoint. The folder is left as it is."""
    return UsageError(f"{folder}: cannot read its {name} ({type(e).__name__}): the folder is truncated, damaged, "
                      "or not a sharded checkpoint (nothing in it was changed). Copy it again from where the run "
                      "wrote it, or start from the run's best.pt, a whole checkpoint of its own.")


def read_metadata_file(path: Path, folder) -> Metadata:
    """A .metadata file, unpickled with only DCP's own classes allowed."""
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except _Foreign as e:
        raise UsageError(f"{folder} is not a checkpoint this code wrote: its metadata names {e}; refusing to load "
                         "it. Load only sharded checkpoints from sources you trust.")
    except FileNotFoundError:
        raise UsageError(f"{folder} is not a complete sharded checkpoint (no {path.name}). Start without --resume, "
                         "or point at the last.dcp folder of the run that wrote it.")
    except Exception as e:  # truncated, or not a pickle at all
        raise unreadable(folder, path.name, e)
    if not isinstance(metadata, Metadata):
        raise UsageError(f"{folder} is not a checkpoint this code wrote: its metadata is a "
                         f"{type(metadata).__name__}; refusing to load it.")
    return metadata


class _PlainItems:
    """The load planner as the reader calls it, except that a non-tensor item (an optimizer's
    lr, betas, param names...) is read with weights_only=True; what the planner then gets is
    those plain values, pickled again by us."""

    def __init__(self, planner, folder):
        self._planner, self._folder = planner, folder

    def __getattr__(self, name):
        return getattr(self._planner, name)

    def load_bytes(self, read_item, value: io.BytesIO):
        try:
            plain = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            named = re.search(r"GLOBAL (\S+)", str(e))
            raise UsageError(f"{self._folder}: its item {read_item.dest_index.fqn!r} is not plain data "
                             f"({'it names ' + named[1] if named else 'weights_only refuses it'}); refusing to "
                             "load it. Load only sharded checkpoints from sources you trust.")
        repickled = io.BytesIO()
        torch.save(plain, repickled)
        repickled.seek(0)
        self._planner.load_bytes(read_item, repickled)


class SafeReader(FileSystemReader):
    """torch's FileSystemReader, which unpickles .metadata and loads non-tensor items with
    weights_only=False (filesystem.py read_metadata; default_planner.py load_bytes): here the
    metadata may name only DCP's classes and items load as plain data. Tensors are read by
    torch as before, with weights_only=True."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        metadata = read_metadata_file(Path(self._get_metadata_path(kwargs.get("rank"))), self.path)
        if getattr(metadata, "storage_meta", None) is None:  # as torch's reader does
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def read_data(self, plan, planner):
        return super().read_data(plan, _PlainItems(planner, self.path))


def load_shards(state: dict, folder, no_dist: bool = False):
    """Fill `state` (tensors and plain values) from a .dcp folder, whatever the number of
    processes that wrote it; no_dist: one process without a process group."""
    reader = SafeReader(folder)
    reader.read_metadata()  # a foreign or broken folder is refused here, before DCP starts
    try:
        with warnings.catch_warnings():
            if no_dist:  # "no process group: loading in one process" is the intent
                warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, storage_reader=reader, no_dist=no_dist)
    except CheckpointException as e:  # DCP wraps what a process raised: ours says what to do
        errors = [error for error, _ in e.failures.values()]
        ours = [error for error in errors if isinstance(error, UsageError)]
        if ours:
            raise ours[0] from None
        cut = [error for error in errors if isinstance(error, CUT_SHORT)]
        if cut:
            raise unreadable(folder, "shard files (*.distcp)", cut[0]) from None
        raise


def load_train_state(folder: Path) -> dict:
    """What a DCP checkpoint folder holds besides tensors (step, configs, data position...);
    its metadata is checked here too, so a foreign folder is refused before any work."""
    path = Path(folder) / TRAIN_STATE
    if not path.is_file():
        raise UsageError(f"{folder} is not a complete sharded checkpoint (no {TRAIN_STATE}). Start without "
                         "--resume, or point out_dir at the run that wrote it.")
    SafeReader(folder).read_metadata()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # cut short: torch's message is about its zip reader, not about the file
        raise unreadable(folder, TRAIN_STATE, e) from None
    return upgrade(state)


def load(folder: Path, model: GPT, optimizers: list):
    """Load sharded weights and optimizer state into an already sharded model and its
    optimizers, whatever the number of processes that wrote them."""
    model_sd, optim_sd = get_state_dict(model, optimizers)
    state = {"model": model_sd, "optimizer": optim_sd}
    load_shards(state, folder)
    set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
