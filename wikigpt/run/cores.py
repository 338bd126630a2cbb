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

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD" in microseconds, or "max PERIOD"


def usable_cores() -> int:
    """The cores this process may run on (taskset, a cpuset), fewer where a cgroup quota caps
    its CPU time (rounded up: a quota of 1.5 cores keeps two threads busy part of the time)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = CPU_MAX.read_text().split()[:2]
        if quota != "max":
            n = min(n, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup v2 here (cgroup v1, macOS), or a line we cannot read
        pass
    return max(1, n)
