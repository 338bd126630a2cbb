"""An index build killed hard: its worker processes die with it (a SIGKILL or the OOM killer's
leaves no orphan holding tantivy's writer locks), the build run again resumes and ends as a
clean one; a build killed after it finished, before its publish, is published when run again
without being built again, and an old index left in index.tmp by a cut publish is not."""
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from conftest import ROOT, proc_stat, running

import wikigpt.prep.workdir as workdir
from wikigpt.knowledge import index_build
from wikigpt.knowledge.index_build import INDEX_DIR, INFO, LEADS, SQLITE, add_index_info, build_index
from wikigpt.knowledge.retrieval import Index

# The build in a process of its own, held still after its first checkpoint (mid-build, the
# writers open, the workers running) until the test kills it.
BUILD = r"""
import sys
from wikigpt.knowledge import index_build

checkpoint = index_build._Writers.checkpoint
def checkpoint_and_wait(self):
    checkpoint(self)
    print("checkpoint", flush=True)
    sys.stdin.readline()  # never comes: the test kills this process here
index_build._Writers.checkpoint = checkpoint_and_wait
index_build.build_index(sys.argv[1], quiet=True, commit_every=5, workers=2)
"""


def _children(pid: int) -> list[int]:
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit() and (s := proc_stat(int(d))) is not None and s[1] == pid:
            found.append(int(d))
    return found


def _open_files(pid: int) -> set[str]:
    names = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            names.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return names


def _contents(folder) -> tuple:
    """An index's articles, passages and lead ids, and each article's top passage for "What is
    <title>?" (only the first: the tiny articles repeat passages, whose ties a resumed index,
    made of other segments, may order otherwise)."""
    index, db = Index.open(folder), sqlite3.connect(folder / INDEX_DIR / SQLITE)
    rows = [db.execute(f"SELECT * FROM {table} ORDER BY id").fetchall() for table in ("articles", "passages")]
    db.close()
    top = [[(p.title, p.text) for p in index.search(f"What is {title}?", 1)] for _, title, _, _ in rows[0]]
    return rows, (folder / INDEX_DIR / LEADS).read_bytes(), top


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_workers_of_a_killed_build_die_with_it_and_the_build_resumes(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    proc = subprocess.Popen([sys.executable, "-c", BUILD, str(data)], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    workers = []
    try:
        assert proc.stdout.readline() == "checkpoint\n", "the build ended before its first checkpoint"
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            build_cmdline = f.read()
        for pid in _children(proc.pid):  # the forked workers, not multiprocessing's resource tracker
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() == build_cmdline:
                    workers.append(pid)
        assert len(workers) == 2
        held = {name for pid in workers for name in _open_files(pid) if str(data / "index.tmp") in name}
        assert not held, f"workers forked after the index was opened hold {held}"
        os.kill(proc.pid, signal.SIGKILL)  # as the OOM killer would
        proc.wait()
        deadline = time.monotonic() + 20  # a bound on the wait, not a timing: they die at once
        while any(running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if running(pid)], "workers outlived the killed build"
    finally:
        proc.kill()
        for pid in workers:  # on a failure, no orphan outlives the test
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        proc.stdin.close()
        proc.stdout.close()

    assert (data / "index.tmp" / "progress.json").is_file() and not (data / "index").exists()
    info = build_index(data, quiet=True, commit_every=5, workers=2)  # no lock held by anyone: it resumes
    assert info["resumed_after_articles"] > 0
    clean = tmp_path / "clean"
    shutil.copytree(tiny_data, clean)
    assert info["passages"] == build_index(clean, quiet=True, workers=1)["passages"]
    assert _contents(data) == _contents(clean)


@pytest.mark.parametrize("step", ["fsync_tree", "publish"])
def test_a_build_killed_before_its_publish_is_published_without_building_again(tiny_data, tmp_path, monkeypatch, step):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)

    def killed(*args):
        raise KeyboardInterrupt  # the process killed in that step (the fsync takes minutes at enwiki's size)
    monkeypatch.setattr(index_build, step, killed)
    with pytest.raises(KeyboardInterrupt):
        build_index(data, quiet=True, workers=1)
    monkeypatch.undo()
    assert not (data / "index").exists()

    def built_again(*args):
        raise AssertionError("the finished build was built again")
    monkeypatch.setattr(index_build, "_Writers", built_again)
    info = build_index(data, quiet=True, workers=1)
    assert info["passages"] > 0 and Index.open(data).info == info and not (data / "index.tmp").exists()
    assert not (data / "index" / "progress.json").exists()


def test_an_old_index_left_in_index_tmp_by_a_cut_publish_is_not_published_again(tiny_data, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    build_index(data, quiet=True, workers=1)
    add_index_info(data, {"old": True})

    def killed(*args):
        raise KeyboardInterrupt
    # a rebuild of the same articles killed after publish swapped index/ and index.tmp/, before
    # it deleted index.tmp/, which now holds the old index, whole, of the same articles
    monkeypatch.setattr(workdir, "shutil", SimpleNamespace(rmtree=killed))
    with pytest.raises(KeyboardInterrupt):
        build_index(data, quiet=True, workers=1)
    monkeypatch.undo()
    if not (data / "index.tmp").exists():
        pytest.skip("no atomic swap (renameat2) here: publish took the other path")
    assert json.loads((data / "index.tmp" / INFO).read_text()).get("old")
    new = Index.open(data).info
    assert "old" not in new
    info = build_index(data, quiet=True, workers=1)
    assert "old" not in Index.open(data).info and info["generation"] > new["generation"]


def test_a_build_never_deletes_what_it_did_not_write_in_the_index_folder(tiny_data, tmp_path):
    """publish() swaps the new index in whole and deletes the old folder: a user's files in
    index/ (a training run put there, notes) went with it, without a word."""
    from wikigpt.cli import UsageError
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    build_index(data, quiet=True, workers=1)
    before = Index.open(data).info
    (data / "index" / "run").mkdir()
    (data / "index" / "run" / "best.pt").write_bytes(b"trained")
    (data / "index" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"index holds notes.txt, run, which retrieve.py --build did not write"):
        build_index(data, quiet=True, workers=1)
    assert (data / "index" / "run" / "best.pt").read_bytes() == b"trained" and Index.open(data).info == before
    assert not (data / "index.tmp").exists()
    shutil.rmtree(data / "index" / "run")
    (data / "index" / "notes.txt").unlink()
    (data / "index.tmp").mkdir()  # the build's own folder, with someone's file in it: not deleted either
    (data / "index.tmp" / "draft.txt").write_text("mine")
    with pytest.raises(UsageError, match="index.tmp holds draft.txt"):
        build_index(data, quiet=True, workers=1)
    (data / "index.tmp" / "draft.txt").unlink()
    (data / "index" / "wikigpt_index.json.4242-0a1b2c3d.tmp").write_text("{")  # a write of its own a kill cut short
    assert build_index(data, quiet=True, workers=1)["generation"] == before["generation"] + 1


@pytest.mark.parametrize("damage", ["cut in half", "a line that is not JSON"])
def test_damaged_kept_articles_are_one_error_and_the_old_index_stays(tiny_data, tmp_path, damage):
    """retrieve.py --build over an articles file cut short (EOFError) or with a broken line inside
    (JSONDecodeError) ended in a traceback, and a query said only "built from other articles"."""
    import gzip
    from conftest import run_cli

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    assert run_cli("retrieve.py", "--data", data, "--build").returncode == 0
    info = (data / INDEX_DIR / INFO).read_bytes()
    articles = data / "articles.jsonl.gz"
    if damage == "cut in half":
        articles.write_bytes(articles.read_bytes()[:articles.stat().st_size // 2])
    else:
        lines = gzip.decompress(articles.read_bytes()).splitlines(keepends=True)
        articles.write_bytes(gzip.compress(b"".join(lines[:3] + [lines[3][:40] + b"\n"] + lines[4:])))
    r = run_cli("retrieve.py", "--data", data, "--build")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{articles} is damaged after" in r.stderr and "prepare_wiki.py command plus --overwrite" in r.stderr
    assert (data / INDEX_DIR / INFO).read_bytes() == info  # the old index left as it was


def test_a_folder_that_is_no_dataset_is_said_to_be_none(tmp_path):
    """Given an index/ or any folder of the user's, --build advised rebuilding it as "an older
    prepare_wiki.py's" dataset with --overwrite."""
    from conftest import run_cli

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "mine", tmp_path / "empty"):
        r = run_cli("retrieve.py", "--data", folder, "--build")
        assert r.returncode == 2 and f"{folder} is not a dataset folder" in r.stderr
        assert "made by an older" not in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
