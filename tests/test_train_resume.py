"""train.py resumed after what real runs meet: an fp16 run's loss scale, a kill at each point of
a checkpoint's save, a dataset of another tokenizer. Each run is a real process."""
import json
import os
import shutil

import pytest
import torch
from conftest import TINY, run_cli, two_machines

from wikigpt.checkpoint import load_checkpoint

# train.py run with a patch: GradScaler grows its scale every step (not every 2,000), so that an
# fp16 run's scale moves within a few steps; checkpoints written before the loop goes on (not
# beside it), and a SIGKILL at one point of their save: each kill lands at one point of the loop
PATCHED = '''
import os, runpy, signal, sys
sys.path.insert(0, os.getcwd())
import torch
import wikigpt.checkpoint as checkpoint
init, save = torch.amp.GradScaler.__init__, checkpoint.save_checkpoint
torch.amp.GradScaler.__init__ = lambda self, *a, **k: init(self, *a, **{**k, "growth_interval": 1})
step, when = int(os.environ.get("KILL_STEP", -1)), os.environ.get("KILL_WHEN")
def save_or_die(path, state):
    if when == "before best.pt" and path.name == "best.pt" and state["step"] == step:
        os.kill(os.getpid(), signal.SIGKILL)
    save(path, state)
    if when == "after " + path.name and state["step"] == step:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.save_checkpoint = save_or_die
in_background = checkpoint.BackgroundSaver.save
def save_now(self, files):
    in_background(self, files)
    self.wait()
checkpoint.BackgroundSaver.save = save_now
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
'''


@pytest.fixture
def patched(tmp_path):
    path = tmp_path / "patched_train.py"
    path.write_text(PATCHED)
    return path


def same_weights(a, b) -> bool:
    return all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_an_fp16_run_resumes_with_the_loss_scale_it_had_reached(tiny_data, tmp_path, patched):
    common = [f"--data={tiny_data}", "--max_steps=8", "--eval_interval=4", "--dtype=float16", *TINY]
    for out, extra in (("a", []), ("b", ["--stop_after=4"]), ("b", ["--resume=true"])):
        r = run_cli(patched, *common, f"--out_dir={tmp_path / out}", *extra)
        assert r.returncode == 0, r.stderr
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["scaler"]["scale"] != 2.0 ** 16  # it moved from GradScaler's first scale...
    assert b["scaler"] == a["scaler"] and same_weights(a, b)  # ...and the resumed run went on from it


@pytest.mark.parametrize("when", ["before best.pt", "after last.pt"])
def test_a_kill_during_an_evals_save_resumes_to_the_same_best_pt_and_metrics(tiny_data, tmp_path, patched, when):
    common = [f"--data={tiny_data}", f"--out_dir={tmp_path}", "--max_steps=8", "--eval_interval=4", *TINY]
    killed = run_cli(patched, *common, env={"KILL_STEP": "8", "KILL_WHEN": when})  # the last eval's save
    assert killed.returncode == -9, killed.stderr
    r = run_cli("train.py", *common, "--resume=true")
    assert r.returncode == 0 and "resuming" in r.stdout, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if row["type"] == "eval"]
    assert [row["step"] for row in evals] == [0, 4, 8]  # none lost, none twice
    best = min(evals, key=lambda row: row["val_loss"])
    saved = load_checkpoint(tmp_path / "best.pt")
    assert saved["step"] == best["step"] and saved["val"]["loss"] == pytest.approx(best["val_loss"], abs=1e-6)


def test_a_finished_run_resumed_ends_with_the_same_checkpoint(tiny_data, tmp_path):
    """Resumed at its last step, a run evaluates that step again: not one more eval without
    improvement (patience would count it), the same last.pt."""
    common = [f"--data={tiny_data}", f"--out_dir={tmp_path}", "--max_steps=4", "--eval_interval=2", *TINY,
              "--lr=1e-9", "--muon_lr=1e-9"]  # learning rates that change nothing: each later eval is "no better"
    assert run_cli("train.py", *common).returncode == 0
    before = load_checkpoint(tmp_path / "last.pt")
    r = run_cli("train.py", *common, "--resume=true")
    assert r.returncode == 0 and "resuming" in r.stdout, r.stderr
    after = load_checkpoint(tmp_path / "last.pt")
    assert before["bad_evals"] >= 1 and after["bad_evals"] == before["bad_evals"] and same_weights(before, after)


def test_another_dataset_or_tokenizer_is_refused_and_the_run_left_as_it_was(tiny_data, tmp_path, small_dump,
                                                                           stopped_run):
    other = tmp_path / "other"  # another text, a smaller vocabulary: the ids fit, and mean other words
    r = run_cli("prepare_wiki.py", small_dump, "--out", other, "--tokenizer", "bpe:280", "--min_chars", "10")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"  # a run on tiny_data's tokenizer: the module's stopped run, copied (a train.py start ~5 s)
    shutil.copytree(stopped_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    # resumed on another dataset: its saved position would read other windows (it trained on, silently)
    r = run_cli("train.py", f"--data={other}", "--max_steps=4", *TINY, f"--out_dir={run}", "--resume=true")
    assert r.returncode == 2 and f"data {tiny_data} -> {other} (another dataset" in r.stderr, r.stderr
    r = run_cli("train.py", f"--data={other}", "--max_steps=4", *TINY, f"--out_dir={tmp_path / 'new'}",
                f"--init_from={run / 'last.pt'}")
    assert r.returncode == 2 and "was trained with another tokenizer" in r.stderr and "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # told by what the dataset held when the run saved: the folder made again with other articles is
    # another dataset, a copy elsewhere the same (the path's content was read at the resume before)
    from wikigpt.prep.data import dataset_fingerprint
    from wikigpt.run.resume import other_dataset
    saved = load_checkpoint(run / "last.pt")["train_config"]
    assert saved["data_fingerprint"] == dataset_fingerprint(tiny_data)
    copy = shutil.copytree(tiny_data, tmp_path / "copy")
    remade = shutil.copytree(tiny_data, tmp_path / "remade")
    meta = json.loads((remade / "meta.json").read_text())
    (remade / "meta.json").write_text(json.dumps(meta | {"options": "other articles"}))
    assert not other_dataset(saved, copy) and other_dataset(saved | {"data": str(remade)}, remade)
    assert other_dataset({"data": str(remade)}, copy)  # a checkpoint without the record: the path as it is now
    # the other way round, a larger vocabulary than the model's: said as the tokenizer too (before: "the
    # model has 280 token ids but the tokenizer 300", which names no option and no fix)
    small = tmp_path / "small"
    assert run_cli("train.py", f"--data={other}", f"--out_dir={small}", "--max_steps=1", *TINY).returncode == 0
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={tmp_path / 'new2'}", f"--init_from={small / 'last.pt'}",
                "--max_steps=2", *TINY)
    assert r.returncode == 2 and "was trained with another tokenizer" in r.stderr, r.stderr


# A run of 4 steps stopped after step 2 (its checkpoint holds step 2): the tests that use it each copy
# it into their own folder (a train.py start costs ~7 s), as a user copies a run to another disk
STOPPED = ["--max_steps=4", "--eval_interval=2", *TINY]


@pytest.fixture(scope="module")
def stopped_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("stopped")
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={out}", *STOPPED, "--stop_after=2")
    assert r.returncode == 0, r.stderr
    return out


def test_a_resume_with_other_optimizer_or_data_settings_is_refused_and_one_that_runs_longer_is_not(tiny_data, tmp_path,
                                                                                                  stopped_run):
    common = [f"--data={tiny_data}", f"--out_dir={tmp_path}", *STOPPED]
    shutil.copytree(stopped_run, tmp_path, dirs_exist_ok=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    r = run_cli("train.py", *common, "--resume=true", "--lr=1", "--seed=5", "--beta2=0.99", "--block_size=16",
                "--n_layer=3", "--dropout=0.1")  # the shape and dropout: the checkpoint's model's, silently
    said = ("seed 1337 -> 5, lr 0.01 -> 1.0, beta2 0.95 -> 0.99, block_size 32 -> 16, n_layer 2 -> 3, "
            "dropout 0.0 -> 0.1")  # the optimizer's state would keep lr 0.01
    assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    copy = shutil.copytree(tiny_data, tmp_path.parent / f"{tmp_path.name}-data")  # the dataset copied: the same
    r = run_cli("train.py", *common, f"--data={copy}", "--resume=true", "--max_steps=6", "--eval_interval=3",
                "--batch_size=2", "--grad_accum=2")  # longer, and the same rows per step in smaller micro-batches
    assert r.returncode == 0 and "resuming" in r.stdout, r.stderr


def test_machines_that_would_resume_from_different_steps_stop_with_one_clear_line_each(tiny_data, tmp_path,
                                                                                      stopped_run):
    """Two torchrun launchers on 127.0.0.1 as two machines, each with an out_dir of its own disk:
    the first holds a checkpoint, the second none (it would start over, beside the other)."""
    common = [f"--data={tiny_data}", *STOPPED]
    shutil.copytree(stopped_run, tmp_path / "node0")
    nodes = two_machines(lambda rank: [*common, f"--out_dir={tmp_path / f'node{rank}'}", "--resume=auto"])
    for code, _, err in nodes:  # each machine says it, once (its first process)
        assert code != 0 and err.count("make out_dir one shared folder") == 1, err[-2000:]


def test_a_second_run_into_an_out_dir_a_run_is_writing_is_refused_and_a_file_for_out_dir_named(tiny_data, tmp_path):
    """Two runs in one out_dir both trained and both said "Checkpoints: ...": one's checkpoints were
    lost, metrics.jsonl held two rows per eval. The first holds out_dir's lock for its whole run."""
    from wikigpt.run.lock import lock_folder, release

    from wikigpt.run.output_paths import claim_out_dir

    out = tmp_path / "run"
    out.mkdir()
    held = lock_folder(out)  # as the running train.py holds it (new, resumed or --overwrite: claimed first)
    try:
        r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={out}", "--max_steps=2", "--overwrite=true", *TINY)
        assert r.returncode == 2 and "another training run is writing in" in r.stderr, r.stderr
        assert f"pid {os.getpid()}" in r.stderr and "Traceback" not in r.stderr
        assert list(out.iterdir()) == []  # nothing written by the refused run
    finally:
        release(held)
    assert claim_out_dir(out) is None  # free once the first has ended
    (tmp_path / "notes.txt").write_text("mine")  # an out_dir that is a file (or inside one): said so
    for given in ("notes.txt", "notes.txt/run"):
        said = claim_out_dir(tmp_path / given)
        assert said == (f"out_dir {tmp_path / given}: {tmp_path / 'notes.txt'} is a file, not a folder. Give a folder "
                        "for the run's checkpoints (--out_dir=...)."), said
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_overwrite_killed_in_its_first_save_never_resumes_the_run_it_replaces(tiny_data, tmp_path, patched,
                                                                             stopped_run):
    """--overwrite=true's first save writes best.pt, then last.pt: killed between, the old run's
    last.pt stood beside the new run's step-0 best.pt, and --resume=true continued the old run (its
    "best val" the old one's, its best.pt the new untrained model)."""
    common = [f"--data={tiny_data}", f"--out_dir={tmp_path}", *STOPPED]
    shutil.copytree(stopped_run, tmp_path, dirs_exist_ok=True)  # the old run, its last.pt at step 2 (a train.py start ~5 s)
    killed = run_cli(patched, *common, "--overwrite=true", "--lr=0.002", env={"KILL_STEP": "0", "KILL_WHEN": "after best.pt"})
    assert killed.returncode == -9, killed.stderr
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 0 and not (tmp_path / "last.pt").exists()
    r = run_cli("train.py", *common, "--resume=true")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr  # nothing of the old run to continue
    # (the same command again starts the new run over its step 0: test_crash_safety's first-save test)


def test_init_from_keeps_its_checkpoints_shape_says_so_and_records_it(tiny_data, tmp_path, stopped_run):
    """The shape asked for beside init_from was dropped in silence, and the checkpoints' train_config
    then said block_size 16 of a model whose context is 32."""
    init = stopped_run / "last.pt"  # n_layer 2, block_size 32 (TINY)
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={tmp_path / 'run'}", f"--init_from={init}", *TINY,
                "--max_steps=1", "--eval_interval=1", "--block_size=16", "--n_layer=3")
    assert r.returncode == 0, r.stderr
    assert f"note: the model keeps the shape of {init}: block_size 32 (asked: 16), n_layer 2 (asked: 3)" in r.stdout
    # one step, with TINY's two of warmup: said (the SFT config's 20 with a short --max_steps, silent before)
    assert "warning: warmup_steps >= max_steps (1): the learning rate never reaches its peak" in r.stdout
    assert '"block_size": 32' in r.stdout and '"n_layer": 2' in r.stdout  # the config line: what trains
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["train_config"]["block_size"] == saved["model_config"]["block_size"] == 32
    assert saved["train_config"]["n_layer"] == saved["model_config"]["n_layer"] == 2
