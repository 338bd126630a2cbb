"""wikigpt/run/cores.py: the cores a process may use, under a cgroup quota or none."""
import os

import pytest

from wikigpt.run import cores

ALLOWED = len(os.sched_getaffinity(0))


@pytest.mark.parametrize("cpu_max, expected", [
    ("50000 100000\n", 1),  # half a core: one thread
    ("150000 100000\n", min(ALLOWED, 2)),  # 1.5 cores: two threads, each busy part of the time
    (f"{64 * 100000} 100000\n", ALLOWED),  # a quota above the cores it may run on
    ("max 100000\n", ALLOWED),  # no quota
    ("garbled\n", ALLOWED),
], ids=["half", "one and a half", "over", "max", "garbled"])
def test_a_cgroup_quota_caps_the_cores_and_a_missing_one_does_not(tmp_path, monkeypatch, cpu_max, expected):
    (tmp_path / "cpu.max").write_text(cpu_max)
    monkeypatch.setattr(cores, "CPU_MAX", tmp_path / "cpu.max")
    assert cores.usable_cores() == expected


def test_without_cgroup_v2_it_is_the_cores_the_process_may_run_on(tmp_path, monkeypatch):
    monkeypatch.setattr(cores, "CPU_MAX", tmp_path / "absent")
    assert cores.usable_cores() == ALLOWED
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # as `taskset -c 0` would
    try:
        assert cores.usable_cores() == 1
    finally:
        os.sched_setaffinity(0, allowed)
