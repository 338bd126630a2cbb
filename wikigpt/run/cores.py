"""
The CPU cores this process may use, for the defaults that size work by them (prepare_wiki.py's
workers, serve.py's threads, the index build's writer threads, the threads of inference on the
CPU (decoding/load.py), the tests' threads per worker).
os.cpu_count() counts the machine's: in a container started with `--cpus=2` on a 64-core host
it says 64, and 64 workers or threads then share two cores' time.
"""
import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")  # "ID:CONTROLLERS:PATH" per hierarchy; v2's is "0::PATH"


def _up_from(top: Path, path: str) -> list[Path]:
    """The cgroup folder `path` under `top` and each folder above it up to `top`: a quota set on
    a parent (a systemd slice, a container) caps every cgroup below it. Inside a cgroup namespace
    the path is "/" and `top` is the container's own cgroup."""
    d = top / path.strip("/")
    return [d, *[p for p in d.parents if p.is_relative_to(top)]]


def _quotas() -> list[float]:
    """Every CPU quota, in cores, set on this process's cgroup or above it (v2's cpu.max holds
    "QUOTA PERIOD" or "max PERIOD"; v1's cpu controller, cfs_quota_us and cfs_period_us, -1 = none)."""
    quotas = []
    for line in PROC_CGROUP.read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and not controllers:  # cgroup v2
            for d in _up_from(CGROUP_ROOT, path):
                fields = (d / "cpu.max").read_text().split() if (d / "cpu.max").exists() else []
                if fields and fields[0] != "max":
                    quotas.append(int(fields[0]) / int(fields[1]))
        elif "cpu" in controllers.split(","):  # cgroup v1 (a "cpu" folder or link to "cpu,cpuacct")
            for d in _up_from(CGROUP_ROOT / "cpu", path):
                if (d / "cpu.cfs_quota_us").exists():
                    quota = int((d / "cpu.cfs_quota_us").read_text())
                    if quota > 0:
                        quotas.append(quota / int((d / "cpu.cfs_period_us").read_text()))
    return quotas


def usable_cores() -> int:
    """The cores this process may run on (taskset, a cpuset), fewer where a cgroup quota caps
    its CPU time (rounded up: a quota of 1.5 cores keeps two threads busy part of the time)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        n = min([n, *(math.ceil(q) for q in _quotas())])
    except (OSError, ValueError):  # no cgroups here (macOS), or a line we cannot read
        pass
    return max(1, n)
