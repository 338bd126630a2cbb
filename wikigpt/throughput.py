"""
Throughput and memory accounting for train.py: the peak FLOP/s that MFU is stated against,
timing helpers, and what a process holds. MFU = tokens/s x training FLOPs per token / peak.
"""
import time
from pathlib import Path

import torch


def peak_flops(device: str, dtype: torch.dtype) -> tuple[float, str]:
    """Peak FLOP/s to state MFU against: datasheet figures for common GPUs; otherwise a matmul
    peak measured now, at the start of this run (~0.5 s). Measured once and cached forever, a
    peak taken while the machine was busy undercounts (0.11 TFLOP/s cached on a machine that
    reaches 0.13-0.18) and inflates every later run's MFU."""
    if device.startswith("cuda") and dtype in (torch.bfloat16, torch.float16):
        name = torch.cuda.get_device_name(device)
        for key, flops in (("H100", 989e12), ("A100", 312e12), ("L4", 121e12), ("A10", 125e12),
                           ("4090", 165e12), ("3090", 71e12)):
            if key in name:
                return flops, f"{name} datasheet dense {dtype}"
    key = f"{platform_name(device)}, {dtype}, {torch.get_num_threads()} threads"
    return measure_matmul_flops(device, dtype), f"matmul peak measured at start ({key})"


def platform_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    import platform
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_matmul_flops(device: str, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    gen = torch.Generator(device).manual_seed(0)  # its own: the global RNG stream is the run's (exact resume)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    best = float("inf")
    for _ in range(reps + 1):
        synchronize(device)
        t = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_memory_mb(device: str) -> float:
    """This process's peak memory: allocated on a GPU, resident (RSS) on the CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def held_mb(model, optimizers) -> tuple[float, float]:
    """(weights, optimizer state) in MB that this process holds: its shards under FSDP
    (DTensor local parts), everything under DDP. Gradients, during a step, are as big as the
    trainable weights."""
    def local_bytes(t) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    weights = sum(local_bytes(p) for p in model.parameters())
    state = sum(local_bytes(v) for o in optimizers for s in o.state.values() for v in s.values()
                if isinstance(v, torch.Tensor) and v.dim() > 0)
    return weights / 2**20, state / 2**20


def synchronize(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
