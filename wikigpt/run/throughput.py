"""
Throughput and memory accounting for train.py: the peak FLOP/s that MFU is stated against,
timing helpers, and what a process holds. MFU = tokens/s x training FLOPs per token / peak.
"""
import time
import warnings
from pathlib import Path

import torch


# Dense (no sparsity) 16-bit tensor-core peaks from the datasheets, in TFLOP/s, keyed by the exact
# name torch.cuda.get_device_name() reports: a substring would take an L40S for an L4 or a PCIe
# H100 for an SXM one. bfloat16 and float16 run at the same rate on these parts.
DATASHEET_TFLOPS = {
    "NVIDIA B200": 2250, "NVIDIA H200": 989, "NVIDIA H200 NVL": 835, "NVIDIA GH200 480GB": 989,
    "NVIDIA GH200 144G HBM3e": 989, "NVIDIA H100 80GB HBM3": 989, "NVIDIA H100 PCIe": 756,
    "NVIDIA H100 NVL": 835, "NVIDIA A100-SXM4-80GB": 312, "NVIDIA A100-SXM4-40GB": 312,
    "NVIDIA A100-PCIE-40GB": 312, "NVIDIA A100 80GB PCIe": 312, "NVIDIA A10": 125, "NVIDIA A10G": 70,
    "NVIDIA L4": 121, "NVIDIA L40": 181, "NVIDIA L40S": 362, "NVIDIA RTX A6000": 155,
    "NVIDIA GeForce RTX 4090": 165, "NVIDIA GeForce RTX 3090": 71, "Tesla V100-SXM2-16GB": 125,
    "Tesla V100-SXM2-32GB": 125, "Tesla V100-PCIE-16GB": 112, "Tesla V100-PCIE-32GB": 112, "Tesla T4": 65,
}


def datasheet_peak(name: str, dtype: torch.dtype) -> float | None:
    """FLOP/s of the datasheet for this exact device name and a 16-bit dtype, else None."""
    if dtype not in (torch.bfloat16, torch.float16) or name not in DATASHEET_TFLOPS:
        return None
    return DATASHEET_TFLOPS[name] * 1e12


def peak_flops(device: str, dtype: torch.dtype) -> tuple[float, str]:
    """Peak FLOP/s to state MFU against: the datasheet figure of a known GPU; otherwise a matmul
    peak measured now, at the start of this run (a second or so). Measured once and cached forever, a
    peak taken while the machine was busy undercounts and inflates every later run's MFU."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        flops = datasheet_peak(name, dtype)
        if flops:
            return flops, f"{name} datasheet dense {str(dtype).replace('torch.', '')}"
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


def measure_matmul_flops(device: str, dtype: torch.dtype, n: int | None = None, reps: int = 5) -> float:
    """The best rate of square matmuls. On a GPU: 8192^3 products timed with CUDA events over 10
    back-to-back launches, so that launch overhead (tens of microseconds, as long as a small
    product) does not read as a low peak; elsewhere: the best of `reps` single products of 2048^3,
    or smaller ones where the dtype is slow: without a fast kernel for it (float16 on most CPUs) a
    2048^3 product takes tens of seconds, not a fifth of one, and the run would wait minutes."""
    cuda = device.startswith("cuda")
    gen = torch.Generator(device).manual_seed(0)  # its own: the global one is dropout's (train.dropout_seed)

    def operands(size):
        return [torch.randn(size, size, device=device, dtype=dtype, generator=gen) for _ in range(2)]

    if cuda:
        n = n or 8192
        a, b = operands(n)
        a @ b  # warm-up: cuBLAS picks its kernel
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        best = float("inf")
        for _ in range(reps):
            start.record()
            for _ in range(10):
                a @ b
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3 / 10)
        return 2 * n**3 / best
    n = n or 2048
    size = min(256, n)
    while True:  # double the size while the next product, 8x the work (or more), looks under 0.5 s
        a, b = operands(size)
        t = time.perf_counter()
        a @ b  # also the warm-up of this size
        synchronize(device)  # on Apple's GPU (MPS) the product only starts here
        best = time.perf_counter() - t
        if size * 2 > n or best * 8 > 0.5:
            break
        size *= 2
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


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


class HostSyncWatch:
    """Counts the host syncs CUDA sees between start and stop (torch.cuda.set_sync_debug_mode
    warns at each one): train.py's sync_check runs one optimizer step under it."""

    def __init__(self):
        self.caught = warnings.catch_warnings(record=True)

    def start(self) -> "HostSyncWatch":
        self.seen = self.caught.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def stop(self) -> str:
        torch.cuda.synchronize()  # the step's own work, before the mode goes back
        torch.cuda.set_sync_debug_mode(0)
        self.caught.__exit__(None, None, None)
        syncs = [w for w in self.seen if "synchroniz" in str(w.message)]
        first = f" (first at {syncs[0].filename}:{syncs[0].lineno})" if syncs else ""
        return f"{len(syncs)}{first}"


def synchronize(device: str):
    """Wait for the device's queued work (a GPU's kernels run after the Python that launched them)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    elif device.startswith("mps"):
        torch.mps.synchronize()


def sum_dtype(device) -> torch.dtype:
    """The type a run's loss sums accumulate in: float64, but float32 on Apple's GPU (MPS),
    which has no float64 (torch refuses to make such a tensor there)."""
    return torch.float32 if str(device).startswith("mps") else torch.float64


def fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
