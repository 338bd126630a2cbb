"""
Checkpoint files: the schema, writing them (in the background while training goes on), reading
them (old configs upgraded in one place) and the model one holds. Inference tools get a ready
model (device, dtype, eval mode) from wikigpt/decoding/load.py's load_model.

A checkpoint is a dict saved with torch.save and read back with weights_only=True (plain
tensors and Python values: loading a file never runs code from it):
    version         CHECKPOINT_VERSION
    kind            "pretrain" | "sft"
    model           the model's state_dict (clean names, never a compiled wrapper's)
    model_config    GPTConfig as a dict
    tokenizer       the tokenizer spec (tokenizer.py), so a checkpoint is self-contained
    train_config, step, val: how it was trained and how good it was
    optimizer, data, best_val, bad_evals: exact resume (last.pt only; dropout is seeded by step)
    lora | quant | merged_from: adapters only, int8 weights, or what convert.py merged
"""
import threading
import zipfile
from pathlib import Path

import torch

from wikigpt.cli import UsageError
from wikigpt.run.durable import failed_checksum, replacing, writer_error
from model import GPT, GPTConfig
from wikigpt.tokenizer import Tokenizer

CHECKPOINT_VERSION = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_checkpoint(kind: str, model_state: dict, model_config: dict, tokenizer: dict, *,
                     train_config: dict | None = None, step: int | None = None, val: dict | None = None,
                     **extra) -> dict:
    """The one place a checkpoint dict is put together (schema above). `extra`: the resume state (optimizer, data,
    best_val, bad_evals) or what the file was made from (lora, quant, merged_from)."""
    return {"version": CHECKPOINT_VERSION, "kind": kind, "step": step, "model": model_state,
            "model_config": model_config, "train_config": train_config or {}, "tokenizer": tokenizer,
            "val": val, **extra}


def save_checkpoint(path: Path, state: dict):
    """torch.save to a temporary file, fsync it, rename it over `path`, fsync the folder: after
    a crash or a power cut, `path` is the old checkpoint or the new one, whole (durable.py)."""
    with replacing(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:
            raise writer_error(e, path) from e


def cpu_copy(obj, copied: dict, spare: dict):
    """obj with every tensor copied to the CPU and its dicts, lists and tuples rebuilt, so that
    nothing in it changes when training goes on. Memory is copied a storage at a time, so that
    tensors sharing one (tied weights) share it in the copy too and torch.save stores it once:
    `copied` maps each source storage to its copy. From a GPU the copies are asynchronous, into
    pinned memory: synchronize before reading them. spare: buffers to reuse (copy_buffer)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in copied:
            copied[key] = copy_buffer(t.untyped_storage(), t.device, spare)
        return torch.empty(0, dtype=t.dtype).set_(copied[key].untyped_storage(), t.storage_offset(), t.size(),
                                                  t.stride())
    if isinstance(obj, dict):
        return type(obj)((key, cpu_copy(value, copied, spare)) for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(value, copied, spare) for value in obj)
    return obj


def copy_buffer(storage, device: torch.device, spare: dict) -> torch.Tensor:
    """A CPU copy of a storage, as a byte tensor, in a buffer of the same size from `spare` (an
    earlier save's) when there is one: fresh memory costs a page fault per 4 KB (1.9 GB copied in
    0.8 s into new memory, 0.17 s into reused, on one thread of the 2-core test machine)."""
    pinned = device.type == "cuda"
    same_size = spare.get((storage.nbytes(), pinned))
    buffer = same_size.pop() if same_size else torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=pinned)
    buffer.copy_(torch.empty(0, dtype=torch.uint8, device=device).set_(storage), non_blocking=pinned)
    return buffer


class BackgroundSaver:
    """Checkpoint files written by a thread while training goes on. save() copies the states to the CPU first,
    synchronously (the next step changes the weights in place), then a thread writes them with save_checkpoint: a
    crash mid-write leaves the previous file, whole. One write at a time: save() first waits for the previous one,
    and so does the end of the `with` block. A write that failed is raised by the next save() or wait(). Between
    saves the last copy's buffers are kept for the next one (on process 0: about last.pt's size)."""

    def __init__(self):
        self._thread, self._failed, self._buffers = None, None, []

    def __enter__(self):
        return self

    def __exit__(self, error_type, *_):
        if error_type is None:
            self.wait()
        elif self._thread is not None:  # the run failed: let its last write finish, raise the run's error
            self._thread.join()

    def save(self, files: list[tuple[Path, dict]]):
        """Write each (path, state) in order, in the background."""
        self.wait()
        spare, copied = {}, {}
        for buffer in self._buffers:  # written: free to hold the next copy
            spare.setdefault((buffer.numel(), buffer.is_pinned()), []).append(buffer)
        copies = [(Path(path), cpu_copy(state, copied, spare)) for path, state in files]
        self._buffers = list(copied.values())
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the asynchronous copies from the GPU have landed
        self._thread = threading.Thread(target=self._write, args=(copies,), name="checkpoint-writer")
        self._thread.start()

    def _write(self, files: list[tuple[Path, dict]]):
        for path, state in files:
            try:
                save_checkpoint(path, state)
            except Exception as e:  # the loop raises it (wait)
                self._failed = (path, e)
                return

    def wait(self):
        """Until the write in flight is done; raise what it failed with."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._failed is not None:
            (path, error), self._failed = self._failed, None
            if isinstance(error, OSError):  # a full disk, a folder gone or read-only
                raise UsageError(f"could not write {path}: {error}. The file there, if any, is the previous "
                                 "save's, whole: make room or fix the folder, then continue with --resume=true.")
            raise error


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if path.is_dir() and path.suffix == ".dcp":
        raise UsageError(f"{path} is a sharded checkpoint (--shard=fsdp): make one file of it with "
                         f"`python convert.py dcp {path} {path.parent / 'gathered.pt'}`.")
    if path.is_dir():
        inside = ", ".join(sorted(p.name for p in path.glob("*.pt"))) or "no .pt file"
        raise UsageError(f"{path} is a folder ({inside}): pass a checkpoint file, e.g. {path / 'best.pt'}.")
    if not path.is_file():
        raise UsageError(f"checkpoint {path} not found. Train one first (python train.py ...) or check the path.")
    unreadable = f"{path}: cannot read the checkpoint, it is truncated or not a wikigpt checkpoint"
    try:
        archive = zipfile.is_zipfile(path)  # torch.save writes a zip archive
    except zipfile.BadZipFile:  # (a flipped bit in its zip64 end record)
        archive = False
    if not archive:
        raise UsageError(f"{unreadable} (not a torch.save archive).")
    if (bad := failed_checksum(path)) is not None:
        raise UsageError(f"{path}: the checkpoint is damaged: its entry {bad} fails the checksum or the header written "
                         "with it (a bit flipped on the disk or in a copy). Copy it again, or use another checkpoint.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch's message is about torch.load's options, not about the file
        raise UsageError(f"{unreadable} ({type(e).__name__}).")
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        version = ckpt.get("version") if isinstance(ckpt, dict) else None
        raise UsageError(f"{path}: checkpoint version {version}, this code reads version "
                         f"{CHECKPOINT_VERSION}. Use the wikigpt version that wrote it.")
    return upgrade(ckpt)


def upgrade(ckpt: dict) -> dict:
    """Older checkpoints of this version, read as they were trained (the one place for it):
    mlp "auto" (written before model.PRESET_MLP) meant gelu for gpt2 and relu2 for modern;
    a pruned shape's head_dim and mlp_hidden are GPTConfig's head_size and mlp_width."""
    mc = ckpt.get("model_config")
    if isinstance(mc, dict) and mc.get("mlp") == "auto":
        mc["mlp"] = "gelu" if mc.get("arch") == "gpt2" else "relu2"
    for old, new in (("head_dim", "head_size"), ("mlp_hidden", "mlp_width")):
        if isinstance(mc, dict) and old in mc:
            mc[new] = mc.pop(old)
    return ckpt


def model_from_checkpoint(ckpt: dict, device="cpu", path="the checkpoint") -> tuple[GPT, Tokenizer]:
    """The model a checkpoint holds. A LoRA checkpoint (only adapters) is resolved to its base
    checkpoint (hash-checked) with the adapters applied, unmerged (see lora.py)."""
    if "lora" not in ckpt:
        model = GPT(GPTConfig(**ckpt["model_config"]))
        if ckpt.get("quant") == "int8":  # written by convert.py int8: int8 tensors into the int8 layout
            from wikigpt.adapt.quant import quantize_model
            quantize_model(model, empty=True)
        model.load_state_dict(ckpt["model"])
        return model.to(device), Tokenizer(ckpt["tokenizer"])
    from wikigpt.adapt.lora import apply_lora, resolve_base
    info = ckpt["lora"]
    model, tok = model_from_checkpoint(load_checkpoint(resolve_base(info, path)))
    apply_lora(model, info["rank"], info["alpha"], info["dropout"], info["targets"], info.get("token_rows", []))
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if unexpected or any(".lora_" in k or k.endswith(".delta") for k in missing):
        raise UsageError(f"{path}: its adapters do not fit the LoRA layers of its base model.")
    return model.to(device), tok


def refuse_unrunnable(ckpt: dict, path, role: str):
    """A model to train or teach with (init_from, a teacher, prune's input) must be a plain float model: say how."""
    if ckpt.get("kind") not in ("pretrain", "sft"):
        raise UsageError(f"{role} {path}: a {ckpt.get('kind')!r} checkpoint holds no model.")
    if "lora" in ckpt:
        raise UsageError(f"{role} {path} holds LoRA adapters, not a whole model: merge them first "
                         f"(python convert.py lora {path} merged.pt) and use merged.pt.")
    if ckpt.get("quant") == "int8":
        raise UsageError(f"{role} {path} holds int8 weights, which neither train nor give exact "
                         "logits: use the float checkpoint it was quantised from.")
