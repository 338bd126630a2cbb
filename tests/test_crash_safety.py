"""Saves that survive a crash: a writer killed at any moment leaves the old file or the new one;
every save is fsynced before its rename and its folder after."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from wikigpt.checkpoint import load_checkpoint, save_checkpoint

# ----------------------------------------------------------------------------------------
# A writer killed at random points

NOTES = 400_000  # repeats of "version N ": ~4 MB of report, long enough to be caught mid-write
ROUNDS = 5  # kills per seed
# One process imports torch once, then forks a writer per round (a fresh interpreter per kill
# would cost ~2 s of imports each): the writer saves a ~10 MB checkpoint, eval's report and a
# summary, each time with the other of two versions, until it is killed.
WRITER = r"""
import os, sys
from pathlib import Path
import torch
from eval import write_report
from wikigpt.checkpoint import save_checkpoint
from wikigpt.durable import write_text

folder, notes = Path(sys.argv[1]), int(sys.argv[2])
def write_forever():
    torch.set_num_threads(1)
    i = 0
    while True:
        v = i % 2
        save_checkpoint(folder / "last.pt", {"version": 1, "kind": "pretrain", "v": v,
                                             "w": torch.full((2_500_000,), float(v))})
        write_report({"checkpoints": [{"label": f"v{v}"}], "rows": [], "notes": [f"version {v} " * notes]},
                     folder / "report.json")
        write_text(folder / "summary.json", '{"v": %d, "pad": "%s"}' % (v, "x" * 1_000_000))
        if i == 1:
            print("both versions written", flush=True)  # every file exists whole: the round may end
        i += 1
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            write_forever()
        finally:
            os._exit(1)
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def check_whole(folder: Path):
    """Every file the writer writes is one of its two versions, whole."""
    ckpt = load_checkpoint(folder / "last.pt")
    assert ckpt["v"] in (0, 1) and bool((ckpt["w"] == float(ckpt["v"])).all())
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    v = int(report["checkpoints"][0]["label"][1:])
    assert report["notes"] == [f"version {v} " * NOTES]
    md = (folder / "report.md").read_text(encoding="utf-8")  # written after report.json: either version
    assert md.startswith("# Evaluation report") and any(md.endswith(f"version {n} " * NOTES + "\n") for n in (0, 1))
    assert json.loads((folder / "summary.json").read_text())["v"] in (0, 1)


@pytest.fixture(scope="module")
def writer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("killed_writer")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(NOTES)], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    yield proc, folder
    proc.stdin.close()
    proc.wait(timeout=30)


@pytest.mark.parametrize("seed", range(5))
def test_a_writer_killed_at_random_points_leaves_the_old_file_or_the_new_one(writer, seed):
    proc, folder = writer
    rng = random.Random(seed)
    for _ in range(ROUNDS):
        proc.stdin.write("go\n")
        proc.stdin.flush()
        pid = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "both versions written"
        time.sleep(rng.uniform(0.0, 0.4))  # not a wait for anything: the kill's random moment (a round ~0.1-0.5 s)
        os.kill(pid, signal.SIGKILL)
        assert proc.stdout.readline().strip() == "reaped"
        check_whole(folder)


# ----------------------------------------------------------------------------------------
# fsync before the rename, the folder's fsync after it

@pytest.fixture
def disk_log(monkeypatch):
    """Record, in order, every fsync (by the path of its file or folder) and every rename."""
    events, real_fsync, real_replace, real_rename = [], os.fsync, os.replace, os.rename

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def renaming(real):
        def rename(src, dst, **kw):
            events.append(("rename", Path(src).resolve(), Path(dst).resolve()))
            real(src, dst, **kw)
        return rename
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", renaming(real_replace))
    monkeypatch.setattr(os, "rename", renaming(real_rename))
    return events


def assert_durable(events, dest: Path):
    """dest was renamed into place after its temporary file (or folder) was fsynced, and its
    folder was fsynced after the rename."""
    dest = dest.resolve()
    renames = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == dest]
    assert renames, f"{dest} was not renamed into place: {events}"
    i = renames[-1]
    src = events[i][1]
    assert ("fsync", src) in events[:i], f"{src} renamed to {dest} before it was fsynced: {events[:i + 1]}"
    assert ("fsync", dest.parent) in events[i + 1:], f"{dest.parent} not fsynced after the rename: {events}"


def test_checkpoints_and_reports_are_fsynced_before_their_rename_and_their_folder_after(disk_log, tmp_path):
    from eval import write_report

    save_checkpoint(tmp_path / "last.pt", {"version": 1, "w": torch.zeros(3)})
    assert_durable(disk_log, tmp_path / "last.pt")
    write_report({"checkpoints": [{"label": "a"}], "rows": [], "notes": ["n"]}, tmp_path / "report.json")
    assert_durable(disk_log, tmp_path / "report.json")
    assert_durable(disk_log, tmp_path / "report.md")


def test_the_index_and_its_info_are_fsynced_before_their_rename(disk_log, tiny_data, tmp_path):
    from wikigpt.retrieval import INDEX_DIR, add_index_info, build_index

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)  # the shared dataset stays without an index
    build_index(data, quiet=True)
    assert_durable(disk_log, data / INDEX_DIR)
    assert ("fsync", (data / f"{INDEX_DIR}.tmp" / "wikigpt_index.json").resolve()) in disk_log  # every file in it
    build_index(data, quiet=True)  # a rebuild replaces the index
    assert_durable(disk_log, data / INDEX_DIR)
    add_index_info(data, {"threshold": 1.5})
    assert_durable(disk_log, data / INDEX_DIR / "wikigpt_index.json")
