"""Two commands writing one place at once: the second prepare_wiki.py into an --out, or the second
index build of a dataset, is refused at once with one clear line (the first one's pid), and the
first one's files are left as they were; a killed holder leaves no stale lock. A work folder that
is damaged anyway says so and starts over; a killed SFT run's token folder is cleared."""
import gzip
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager

import pytest
from conftest import ROOT, run_cli

from prepare_wiki import main as prepare
from wikigpt.chat.sft_config import SFTConfig
from wikigpt.chat.sft_rows import tokenize_dialogues
from wikigpt.cli import run_main
from wikigpt.knowledge.index_build import INDEX_DIR, INFO, add_index_info, build_index
from wikigpt.prep.data import load_dataset
from wikigpt.tokenizer import Tokenizer

HOLD = ("import sys; from wikigpt.run.lock import lock_folder; lock_folder(sys.argv[1]); "
        "print('held', flush=True); sys.stdin.readline()")
# a prepare_wiki.py run stopped where STEP is called: tokenizer_for (pass 2, training the tokenizer:
# pass 1 done) or encode_pass (pass 3, tokenizing: passes 1 and 2 done)
STOPPED_AT = ("import sys, prepare_wiki\n"
              "def stop(*a, **k): raise SystemExit('stopped at STEP')\n"
              "prepare_wiki.STEP = stop\n"
              "prepare_wiki.main(sys.argv[1:])\n")
OPTIONS = ["--tokenizer", "bpe:300", "--min_chars", "50", "--val_fraction", "0.2", "--workers", "1"]


@contextmanager
def held_by_another_process(folder):
    """A process holding the folder's lock, as a run writing there does; killed (-9) at the end."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == "held\n"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def files_of(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def stopped_run(source, out, step="encode_pass"):
    """The work folder of a prepare_wiki.py run into `out` that stopped before it finished."""
    r = run_cli("-c", STOPPED_AT.replace("STEP", step), source, "--out", out, *OPTIONS)
    work = out.parent / f".{out.name}.partial"
    assert r.returncode == 1 and f"stopped at {step}" in r.stderr and (work / "progress.json").is_file()
    return work


def test_a_second_prepare_wiki_into_the_same_out_is_refused_and_the_first_ones_work_is_untouched(
        small_dump, tmp_path, capsys):
    out = tmp_path / "ds"
    work = stopped_run(small_dump, out)
    before = files_of(work)
    with held_by_another_process(work) as pid:
        # the same command would have resumed the folder under the live run; another (a new seed)
        # would have deleted it to start over
        for extra in ([], ["--seed", "7"]):
            with pytest.raises(SystemExit) as e:
                prepare([str(small_dump), "--out", str(out), *OPTIONS, *extra])
            err = capsys.readouterr().err
            assert e.value.code == 2 and f"another prepare_wiki.py (pid {pid}) is writing {out}" in err, err
            assert files_of(work) == before and not out.exists()
    # the holder was killed (-9): the kernel dropped its lock, and the same command finishes the run
    prepare([str(small_dump), "--out", str(out), *OPTIONS])
    assert "training bpe" not in capsys.readouterr().out  # resumed: passes 1 and 2 were not done again
    assert load_dataset(out).meta["splits"]["train"]["articles"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "dump.xml"]


@pytest.mark.parametrize("step, workers", [("encode_pass", 1), ("encode_pass", 2), ("tokenizer_for", 1)],
                         ids=["pass 3", "pass 3, the error in a worker process", "pass 2"])
def test_a_damaged_work_folder_is_a_clear_error_and_the_same_command_then_starts_over(small_dump, tmp_path, capsys,
                                                                                     step, workers):
    out = tmp_path / "ds"
    work = stopped_run(small_dump, out, step)
    articles = work / "articles.jsonl.gz"
    data = articles.read_bytes()
    half = len(data) // 2  # what two runs writing it at once left: the same size, zeros from the middle
    articles.write_bytes(data[:half] + bytes(len(data) - half))
    with pytest.raises((OSError, EOFError)):  # the damage is real: the old code's traceback every time
        gzip.decompress(articles.read_bytes())
    with pytest.raises(SystemExit) as e:
        prepare([str(small_dump), "--out", str(out), *OPTIONS, "--workers", str(workers)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{articles} cannot be read" in err and "damaged" in err, err
    assert not work.exists() and not out.exists()
    prepare([str(small_dump), "--out", str(out), *OPTIONS])  # as the message says
    assert "training bpe" in capsys.readouterr().out  # started over
    assert load_dataset(out).meta["splits"]["train"]["articles"] > 0


def test_a_run_that_stops_in_this_process_lets_its_lock_go(small_dump, tmp_path, monkeypatch):
    """prepare_wiki.main in a notebook (or a test) stopped by an error other than bad input:
    the command it says to run next would find the work folder locked by the notebook."""
    import prepare_wiki
    from wikigpt.run.lock import folder_locked

    def crash(*a, **k):
        raise RuntimeError("a worker was lost")
    monkeypatch.setattr(prepare_wiki, "encode_pass", crash)
    with pytest.raises(RuntimeError):
        prepare([str(small_dump), "--out", str(tmp_path / "ds"), *OPTIONS])
    with folder_locked(tmp_path / ".ds.partial"):  # Busy if the run still held it
        pass


def test_a_dataset_another_run_published_while_this_one_waited_is_not_replaced(small_dump, tmp_path, monkeypatch,
                                                                                capsys):
    """--out is checked before the work folder is locked: a run that published there meanwhile
    (and let the lock go) must still be found, under the lock, before anything is replaced."""
    import prepare_wiki

    out = tmp_path / "ds"
    prepare([str(small_dump), "--out", str(tmp_path / "other"), *OPTIONS])
    open_work = prepare_wiki.open_work

    def published_meanwhile(*args):
        shutil.copytree(tmp_path / "other", out)  # the other run's rename, between the check and the lock
        return open_work(*args)
    monkeypatch.setattr(prepare_wiki, "open_work", published_meanwhile)
    before = files_of(tmp_path / "other")
    with pytest.raises(SystemExit) as e:
        prepare([str(small_dump), "--out", str(out), *OPTIONS, "--seed", "7"])
    assert e.value.code == 2 and "already exists. Pass --overwrite" in capsys.readouterr().err
    assert files_of(out) == before


def test_a_file_system_without_locks_runs_as_before_with_a_warning(tmp_path, monkeypatch, capsys):
    import errno

    from wikigpt.run import lock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(lock.fcntl, "flock", no_locks)
    with lock.folder_locked(tmp_path):
        pass
    assert "cannot be locked (No locks available)" in capsys.readouterr().err


def test_a_second_index_build_and_an_info_update_during_a_build_are_refused(tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns("index*"))
    build_index(data, quiet=True, workers=1)
    before = files_of(data)
    with held_by_another_process(data) as pid:  # a build running
        with pytest.raises(SystemExit) as e:
            run_main(lambda argv: __import__("retrieve").main(["--data", str(data), "--build"]))
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"a build of {data}'s index is running (pid {pid})" in err, err
        assert err.count("\n") == 1  # one line, no traceback
        with pytest.raises(SystemExit) as e:  # bench_answers.py --confidence storing its threshold
            run_main(lambda argv: add_index_info(data, {"abstain_below": 0.5}))
        assert e.value.code == 2 and f"(pid {pid})" in capsys.readouterr().err
        assert files_of(data) == before and not (data / (INDEX_DIR + ".tmp")).exists()
    add_index_info(data, {"abstain_below": 0.5})  # the holder was killed (-9): no stale lock
    assert json.loads((data / INDEX_DIR / INFO).read_text())["abstain_below"] == 0.5


def test_sft_clears_the_token_folders_of_killed_runs_and_keeps_a_live_ones(tmp_path):
    out = tmp_path / "chat"
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()  # its pid names no process now (the odds of its reuse within the test: nil)
    killed = out / f"sft_tokens-0123456789ab.tmp-{dead.pid}"  # what kill -9 during tokenizing left
    live = out / f"sft_tokens-ba9876543210.tmp-{os.getpid()}"  # a run tokenizing now
    for folder in (killed, live):
        folder.mkdir(parents=True)
        (folder / "train_tokens.bin").write_bytes(b"\0" * 64)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Say {i}", "response": f"{i}."}) + "\n" for i in range(20)))
    cfg = SFTConfig(out_dir=str(out), sft_data=str(pairs), sft_val_fraction=0.5)
    folder = tokenize_dialogues(cfg, Tokenizer.from_name("gpt2"), 32)
    assert (folder / "meta.json").is_file()
    assert not killed.exists() and (live / "train_tokens.bin").is_file()


def run_to(command: str, ckpt, data, out):
    """convert.py int8 or prune.py from `ckpt` to `out`, in this process."""
    import convert
    import prune

    if command == "convert":
        return convert.main(["int8", str(ckpt), str(out)])
    return prune.main(["--ckpt", str(ckpt), "--out", str(out), "--keep_layers", "1", "--data", str(data)])


@pytest.mark.parametrize("command, meanwhile", [("convert", "load_model"), ("prune", "choose")])
def test_a_checkpoint_another_run_wrote_meanwhile_is_not_replaced(tiny_ckpt, tiny_data, tmp_path, monkeypatch, command,
                                                                  meanwhile):
    """Two convert.py (or prune.py) runs to one new out: both found nothing there before their
    work. The one that finishes second is refused in one line naming the file, and the other's
    file stays (the second save replaced it, and both said "wrote"); no temporary is left."""
    import convert
    import prune
    from wikigpt.cli import UsageError

    out, theirs = tmp_path / "small.pt", b"the other run's checkpoint"
    module = convert if command == "convert" else prune
    real = getattr(module, meanwhile)  # a step of the work, after the check that `out` does not exist

    def other_run_writes_out(*args, **kwargs):
        out.write_bytes(theirs)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, meanwhile, other_run_writes_out)
    with pytest.raises(UsageError, match=f"^{out} was written by another run while this one worked: it was left as it"):
        run_to(command, tiny_ckpt, tiny_data, out)
    assert out.read_bytes() == theirs and [p.name for p in tmp_path.iterdir()] == ["small.pt"]


def test_a_file_system_without_hard_links_still_gets_a_new_checkpoint_and_keeps_an_existing_one(tmp_path,
                                                                                                 monkeypatch):
    """FAT has no hard links (os.link: EPERM): the file is checked for, then renamed in."""
    import errno

    import torch

    from wikigpt.run.new_checkpoint import save_new
    from wikigpt.cli import UsageError

    def no_links(src, dest):
        raise PermissionError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(os, "link", no_links)
    save_new(tmp_path / "a.pt", {"step": 1})
    assert torch.load(tmp_path / "a.pt")["step"] == 1
    with pytest.raises(UsageError, match="was written by another run"):
        save_new(tmp_path / "a.pt", {"step": 2})
    assert torch.load(tmp_path / "a.pt")["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["a.pt"]
