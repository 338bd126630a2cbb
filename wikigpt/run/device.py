"""
The device a process computes on: which one (pick_device), its native 16-bit type (gpu_dtype),
TF32 for float32 matmuls (enable_tf32). It imports nothing of training: dist.py and inference
(wikigpt/decoding/load.py) both choose their device here.
"""
import torch

from wikigpt.cli import UsageError


def gpu_dtype() -> str:
    """The 16-bit type this GPU computes in natively: bfloat16 from Ampere on; float16 before
    (V100, T4), where bfloat16 is only emulated, several times slower."""
    return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"


def enable_tf32():
    """float32 matmuls on TF32 tensor cores (what nanoGPT and nanochat set): ~8x the plain fp32
    rate on an A100, with a 10-bit mantissa for the products only."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def pick_device(name: str = "auto") -> str:
    """'auto' -> the best device here (cuda, then mps, then cpu); anything else is checked."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {name!r}: no CUDA GPU is visible here. Use --device cpu (or auto).")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("device 'mps': Apple's Metal backend is not available here. Use --device cpu.")
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps.")
    if name.startswith("cuda:"):
        index, count = name.split(":", 1)[1], torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise UsageError(f"device {name!r}: {count} CUDA GPU(s) are visible here, cuda:0 to cuda:{count - 1}.")
        # The current device: a bare torch.cuda.synchronize() (the checkpoint's copies), CUDA
        # graphs' memory pools and CUDA events use it, and left at 0 it opens a context there too
        torch.cuda.set_device(int(index))
    return name
