"""wikigpt/run/cores.py: the cores a process may use, under a cgroup quota or none."""
import os

import pytest

from wikigpt.run import cores

ALLOWED = len(os.sched_getaffinity(0))


def fake_cgroups(monkeypatch, root, proc_cgroup: str):
    """A /sys/fs/cgroup at `root` and a /proc/self/cgroup that reads `proc_cgroup`."""
    (root / "proc_cgroup").write_text(proc_cgroup)
    monkeypatch.setattr(cores, "CGROUP_ROOT", root)
    monkeypatch.setattr(cores, "PROC_CGROUP", root / "proc_cgroup")


@pytest.mark.parametrize("cpu_max, expected", [
    ("50000 100000\n", 1),  # half a core: one thread
    ("150000 100000\n", min(ALLOWED, 2)),  # 1.5 cores: two threads, each busy part of the time
    (f"{64 * 100000} 100000\n", ALLOWED),  # a quota above the cores it may run on
    ("max 100000\n", ALLOWED),  # no quota
    ("garbled\n", ALLOWED),
], ids=["half", "one and a half", "over", "max", "garbled"])
def test_a_cgroup_quota_caps_the_cores_and_a_missing_one_does_not(tmp_path, monkeypatch, cpu_max, expected):
    fake_cgroups(monkeypatch, tmp_path, "0::/\n")  # in a container's cgroup namespace
    (tmp_path / "cpu.max").write_text(cpu_max)
    assert cores.usable_cores() == expected


def test_a_quota_on_a_parent_cgroup_caps_the_cores_of_every_cgroup_below_it(tmp_path, monkeypatch):
    """systemd runs a service in its own cgroup under a slice: the slice's quota is the cap."""
    fake_cgroups(monkeypatch, tmp_path, "0::/box.slice/job.service\n")
    (tmp_path / "box.slice/job.service").mkdir(parents=True)
    (tmp_path / "box.slice/job.service/cpu.max").write_text("max 100000\n")
    assert cores.usable_cores() == ALLOWED
    (tmp_path / "box.slice/cpu.max").write_text("100000 100000\n")
    assert cores.usable_cores() == 1


@pytest.mark.parametrize("proc_cgroup, folder", [
    ("4:cpu,cpuacct:/\n1:memory:/x\n", ""),  # cgroup v1 in a container's namespace
    ("5:cpu:/docker/abc\n", "docker/abc"),  # v1, the container's own cgroup
    ("5:cpu:/docker/abc\n", ""),  # v1 without a namespace: the container sees its cgroup as the root
], ids=["v1", "v1 path", "v1 path mounted as root"])
def test_a_cgroup_v1_quota_caps_the_cores(tmp_path, monkeypatch, proc_cgroup, folder):
    fake_cgroups(monkeypatch, tmp_path, proc_cgroup)
    (tmp_path / "cpu" / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / "cpu" / folder / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu" / folder / "cpu.cfs_quota_us").write_text("-1\n")  # none
    assert cores.usable_cores() == ALLOWED
    (tmp_path / "cpu" / folder / "cpu.cfs_quota_us").write_text("100000\n")
    assert cores.usable_cores() == 1


def test_without_cgroups_it_is_the_cores_the_process_may_run_on(tmp_path, monkeypatch):
    monkeypatch.setattr(cores, "PROC_CGROUP", tmp_path / "absent")
    assert cores.usable_cores() == ALLOWED
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # as `taskset -c 0` would
    try:
        assert cores.usable_cores() == 1
    finally:
        os.sched_setaffinity(0, allowed)


def test_inference_on_the_cpu_runs_no_more_threads_than_a_quota_allows(tmp_path, monkeypatch):
    """load_model: torch starts one thread per core it may run on, a container's quota unread."""
    from dataclasses import asdict

    import torch
    from model import GPT, GPTConfig
    from test_server_abuse import byte_tokenizer
    from wikigpt.checkpoint import build_checkpoint, save_checkpoint
    from wikigpt.decoding.load import load_model

    tok = byte_tokenizer()
    cfg = GPTConfig(vocab_size=tok.n_vocab, block_size=16, n_layer=1, n_head=1, n_embd=8)
    save_checkpoint(tmp_path / "m.pt", build_checkpoint("sft", GPT(cfg).state_dict(), asdict(cfg), tok.spec, step=0))
    fake_cgroups(monkeypatch, tmp_path, "0::/\n")
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # one core's time
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        load_model(tmp_path / "m.pt", "cpu")
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a thread count the user set is theirs
        load_model(tmp_path / "m.pt", "cpu")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
