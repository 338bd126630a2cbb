"""
Throughput accounting for train.py: the peak FLOP/s that MFU is stated against, and timing
helpers. MFU = tokens/s x training FLOPs per token / peak.
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


def synchronize(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
