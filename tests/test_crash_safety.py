"""Saves that survive a crash, and sharded checkpoints that never run code: a writer killed at
any moment leaves the old file or the new one; every save is fsynced before its rename and its
folder after; a .dcp folder whose pickles name anything but DCP's own metadata is refused; a
save cut short between the renames of a .dcp swap resumes from the folder it left."""
import json
import os
import pickle
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, run_cli

import train
from wikigpt.run import fsdp
from wikigpt.checkpoint import load_checkpoint, save_checkpoint
from wikigpt.cli import UsageError
from wikigpt.run.output_paths import output_path_problem
from wikigpt.prep.data import DatasetError
from wikigpt.config import TrainConfig

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
from wikigpt.run.durable import write_text

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
    md = folder / "report.md"  # written after report.json, the old one deleted first: none, or the json's
    assert not md.exists() or md.read_text(encoding="utf-8").startswith("# Evaluation report") and \
        md.read_text(encoding="utf-8").endswith(f"version {v} " * NOTES + "\n")
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
    from wikigpt.knowledge.retrieval import INDEX_DIR, add_index_info, build_index

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)  # the shared dataset stays without an index
    build_index(data, quiet=True)
    assert_durable(disk_log, data / INDEX_DIR)
    assert ("fsync", (data / f"{INDEX_DIR}.tmp" / "wikigpt_index.json").resolve()) in disk_log  # every file in it
    build_index(data, quiet=True)  # a rebuild replaces the index
    assert_durable(disk_log, data / INDEX_DIR)
    add_index_info(data, {"threshold": 1.5})
    assert_durable(disk_log, data / INDEX_DIR / "wikigpt_index.json")


def test_a_training_run_saves_checkpoints_and_summary_durably(disk_log, tiny_data, tmp_path):
    train.main([f"--data={tiny_data}", f"--out_dir={tmp_path}", "--max_steps=1", "--eval_interval=1", *TINY])
    for name in ("last.pt", "best.pt", "summary.json"):
        assert_durable(disk_log, tmp_path / name)


# ----------------------------------------------------------------------------------------
# Sharded (.dcp) checkpoints: never run code, resumable after a cut-short save

class Payload:
    """What a hostile pickle holds: unpickling it runs a command (here: creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


SHARDED = [*TINY, "--shard=fsdp", "--max_steps=4", "--eval_interval=2"]


@pytest.fixture(scope="module")
def sharded_run(tiny_data, tmp_path_factory):
    """A real run's folder with last.dcp at step 2 (FSDP on one process over gloo)."""
    out = tmp_path_factory.mktemp("sharded")
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={out}", *SHARDED, "--stop_after=2")
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_a_dcp_folder_whose_metadata_names_other_code_is_refused_and_runs_nothing(sharded_run, tiny_data, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    shutil.copytree(sharded_run, run)
    for name in (".metadata", "__0.metadata"):  # the global file, and the per-rank one DCP falls back to
        (run / "last.dcp" / name).write_bytes(pickle.dumps(Payload(marker)))
    refusal = f"{run / 'last.dcp'} is not a checkpoint this code wrote: its metadata names posix.system; refusing"
    r = run_cli("convert.py", "dcp", run / "last.dcp", tmp_path / "out.pt")
    assert r.returncode == 2 and refusal in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out.pt").exists()
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={run}", *SHARDED, "--resume=auto")
    assert r.returncode == 2 and refusal in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not marker.exists()

    r = run_cli("convert.py", "dcp", sharded_run / "last.dcp", tmp_path / "genuine.pt")  # a real one converts
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_checkpoint(tmp_path / "genuine.pt")["step"] == 2


def test_convert_dcp_names_the_folder_to_give_not_train_pys_options(tmp_path):
    """convert.py dcp on a run's out_dir said "Start without --resume, or point out_dir at the run
    that wrote it": train.py's fixes, not options of convert.py."""
    import convert
    (tmp_path / "run" / "last.dcp").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"run is a training run's folder: convert its sharded checkpoint, .*run/last.dcp"):
        convert.gather_shards(tmp_path / "run", tmp_path / "out.pt")
    with pytest.raises(UsageError, match=r"last.dcp is not a complete sharded checkpoint \(no train_state.pt\): give the "
                                         r"last.dcp folder") as e:
        convert.gather_shards(tmp_path / "run" / "last.dcp", tmp_path / "out.pt")
    assert "--resume" not in str(e.value) and not (tmp_path / "out.pt").exists()
    (tmp_path / "best.pt").write_bytes(b"weights")  # a checkpoint file: said to be one, not "no such folder"
    with pytest.raises(UsageError, match=r"best.pt is a file, and `convert.py dcp` reads a sharded checkpoint folder"):
        convert.gather_shards(tmp_path / "best.pt", tmp_path / "out.pt")


def test_a_dcp_item_that_is_not_plain_data_is_refused_and_runs_nothing(tmp_path):
    import torch.distributed.checkpoint as dcp

    folder, marker = tmp_path / "x.dcp", tmp_path / "PWNED"
    dcp.save({"w": torch.ones(3), "note": Payload(marker)}, checkpoint_id=folder, no_dist=True)
    state = {"w": torch.zeros(3), "note": None}
    with pytest.raises(UsageError, match=r"x.dcp: its item 'note' is not plain data .*refusing to load it"):
        fsdp.load_shards(state, folder)
    assert not marker.exists()
    dcp.save({"w": torch.ones(3), "note": (0.9, "plain")}, checkpoint_id=tmp_path / "y.dcp", no_dist=True)
    fsdp.load_shards(state, tmp_path / "y.dcp")  # plain values load
    assert torch.equal(state["w"], torch.ones(3)) and state["note"] == (0.9, "plain")


def test_a_dcp_save_cut_between_its_renames_resumes_from_the_folder_it_left(sharded_run, tiny_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sharded_run, run)
    (run / "last.dcp").rename(run / "last.dcp.old")  # the crash: the old folder moved aside, the new not in
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={run}", *SHARDED, "--resume=auto")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming {run / 'last.dcp.old'} at step 2" in r.stdout
    assert f"{run / 'last.dcp'} is missing" in r.stdout  # and says why
    assert "step 3/4" in r.stdout and "step 1/4" not in r.stdout
    assert sorted(p.name for p in run.glob("last.dcp*")) == ["last.dcp"]
    assert fsdp.load_train_state(run / "last.dcp")["step"] == 4


def fake_dcp(folder: Path, complete: bool = True):
    folder.mkdir()
    (folder / ".metadata").write_bytes(b"")
    if complete:  # train_state.pt is the last file a save writes
        (folder / fsdp.TRAIN_STATE).write_bytes(b"")
    return folder


def test_no_tool_writes_into_a_sharded_checkpoint_that_the_next_save_replaces_whole(tiny_ckpt, tmp_path):
    """A file put in last.dcp was deleted with it at the run's next save (fsdp.swap_in)."""
    (tmp_path / "run").mkdir()
    dcp = fake_dcp(tmp_path / "run" / "last.dcp")
    before = sorted(p.name for p in dcp.iterdir())
    for args, out in ((["convert.py", "int8", tiny_ckpt], dcp / "int8.pt"),
                      (["export.py", "--ckpt", tiny_ckpt, "--format", "gguf", "--out"], dcp / "sub" / "m.gguf")):
        r = run_cli(*args, out)
        assert r.returncode == 2 and f"is inside {dcp}, a sharded checkpoint that training replaces whole" in r.stderr
        assert "Traceback" not in r.stderr and sorted(p.name for p in dcp.iterdir()) == before
    for name in ("last.dcp.tmp", "last.dcp.old"):  # the folders of a save being swapped in
        assert "a sharded checkpoint" in output_path_problem(tmp_path / "run" / name / "x.pt", "--out")
    assert output_path_problem(tmp_path / "run" / "last.dcp.pt", "--out") is None  # a file named so is fine


@pytest.mark.parametrize("left, resumed", [
    ({"last.dcp": True, "last.dcp.old": True}, "last.dcp"),  # cut after the second rename
    ({"last.dcp.old": True, "last.dcp.tmp": True}, "last.dcp.tmp"),  # between the renames: the newer one
    ({"last.dcp.old": True, "last.dcp.tmp": False}, "last.dcp.old"),
    ({"last.dcp": True, "last.dcp.tmp": False}, "last.dcp"),  # cut while writing
    ({"last.dcp.tmp": False}, None),  # the first save cut short: nothing to resume
])
def test_the_folder_a_cut_save_left_is_the_one_resumed_and_the_next_save_tidies_up(tmp_path, left, resumed):
    for name, complete in left.items():
        fake_dcp(tmp_path / name, complete)
    found = fsdp.resumable(tmp_path / "last.dcp")
    assert found == (tmp_path / resumed if resumed else None)
    fsdp.settle(tmp_path / "last.dcp")  # what the next save does first
    assert sorted(p.name for p in tmp_path.iterdir()) == (["last.dcp"] if resumed else [])


@pytest.mark.parametrize("resume", ["auto", "true"])  # true said "last.pt not found" beside a last.dcp
def test_a_resume_beside_the_other_kind_of_checkpoint_says_which_it_is(tmp_path, resume):
    fake_dcp(tmp_path / "last.dcp")
    with pytest.raises(UsageError, match=r"last.dcp is the last checkpoint of a run with --shard=fsdp: resume it "
                                         r"with --shard=fsdp"):
        train.resolve_resume(TrainConfig(out_dir=str(tmp_path), resume=resume))
    shutil.rmtree(tmp_path / "last.dcp")
    save_checkpoint(tmp_path / "last.pt", {"version": 1})
    with pytest.raises(UsageError, match=r"last.pt.*without --shard=fsdp"):
        train.resolve_resume(TrainConfig(out_dir=str(tmp_path), resume=resume, shard="fsdp"))


def test_a_new_run_never_replaces_a_runs_checkpoints_or_the_weights_it_starts_from(tmp_path):
    resolve_resume = train.resolve_resume
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pt").write_bytes(b"trained")  # a finished run; the same command typed again
    with pytest.raises(UsageError, match=r"holds a run already \(best.pt\): --resume=true .* --overwrite=true"):
        resolve_resume(TrainConfig(out_dir=str(out)))
    assert resolve_resume(TrainConfig(out_dir=str(out), overwrite=True)) is False  # said on purpose: a new run
    with pytest.raises(UsageError, match="this run's first checkpoint would replace it"):  # LoRA on out/best.pt into out
        resolve_resume(TrainConfig(out_dir=str(out), init_from=str(out / "best.pt"), overwrite=True))
    with pytest.raises(UsageError, match="teacher .* is in out_dir"):  # distilling a model into its own folder
        resolve_resume(TrainConfig(out_dir=str(out), init_from=str(tmp_path / "small.pt"), teacher=str(out / "best.pt"),
                                   overwrite=True))
    assert (out / "best.pt").read_bytes() == b"trained"
    # a run inside its dataset folder: prepare_wiki.py and retrieve.py --build replace those folders whole
    from wikigpt.run.output_paths import inside_dataset
    for inside in (tmp_path / "data", tmp_path / "data" / "index", tmp_path / "data" / "runs" / "a"):
        assert "give an --out_dir outside it" in inside_dataset(TrainConfig(data=str(tmp_path / "data"), out_dir=str(inside)))
    assert inside_dataset(TrainConfig(data=str(tmp_path / "data"), out_dir=str(tmp_path / "data-runs"))) is None


def test_a_run_killed_in_its_first_save_starts_again_over_its_step_0_best_pt(tmp_path):
    """A kill between step 0's best.pt and its last.pt (and, sharded, any time before the next
    eval: last.dcp is not saved at step 0) left step 0's best.pt alone, and torchrun's restart
    (--resume=auto) or the same command again was refused as if a trained run were there."""
    save_checkpoint(tmp_path / "best.pt", {"version": 1, "step": 0})
    for kind in ({"shard": "fsdp"}, {}):
        for resume in ("auto", "false"):
            assert train.resolve_resume(TrainConfig(out_dir=str(tmp_path), resume=resume, **kind)) is False
    save_checkpoint(tmp_path / "best.pt", {"version": 1, "step": 40})  # trained: never replaced
    with pytest.raises(UsageError, match=r"holds a run already \(best.pt\)"):
        train.resolve_resume(TrainConfig(out_dir=str(tmp_path), resume="auto", shard="fsdp"))


def test_overwrite_with_a_mistake_in_its_input_leaves_the_old_run_whole(tmp_path):
    """--overwrite ends the old run only once the new one has passed its checks (MetricsLog)."""
    save_checkpoint(tmp_path / "best.pt", {"version": 1, "step": 60})
    save_checkpoint(tmp_path / "last.pt", {"version": 1, "step": 60})
    with pytest.raises(DatasetError):
        train.main([f"--out_dir={tmp_path}", "--overwrite=true", f"--data={tmp_path / 'no_such_dataset'}"])
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 60 and load_checkpoint(tmp_path / "best.pt")["step"] == 60


@pytest.mark.parametrize("name, theirs", [("metrics.jsonl", b'{"user": 1}\n'), ("summary.json", b"[1, 2]"),
                                          ("loss.png", b"\x89PNG\r\n\x1a\n a photo")])
def test_a_new_run_never_replaces_a_users_file_named_as_a_runs_log(tmp_path, name, theirs):
    """A run writes metrics.jsonl, summary.json and loss.png in its out_dir: a folder used for
    other work may hold files of those names that no run wrote, replaced even without --overwrite."""
    from wikigpt.run.runlog import MetricsLog

    (tmp_path / name).write_bytes(theirs)
    for overwrite in (False, True):
        with pytest.raises(UsageError, match=f"{name} is not a file a wikigpt run wrote"):
            train.resolve_resume(TrainConfig(out_dir=str(tmp_path), overwrite=overwrite))
    assert (tmp_path / name).read_bytes() == theirs
    (tmp_path / name).unlink()
    MetricsLog(tmp_path, "pretrain").log("train", 1, 1.0, loss=2.0)  # a run's own (killed before step 0's checkpoint)
    assert train.resolve_resume(TrainConfig(out_dir=str(tmp_path))) is False


def test_two_writers_of_one_path_each_finish_whole(tmp_path):
    """Two processes saving one file at once (two eval runs' report.json): each writes its own
    temporary file, both saves succeed, and the file is one of them whole (it was one shared
    PATH.tmp: the first rename took the other's half-written file, whose rename then failed)."""
    from wikigpt.run.durable import replacing

    dest = tmp_path / "report.json"
    with replacing(dest) as first, replacing(dest) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("a" * 1000)
        second.write_text("b" * 10)
    assert dest.read_text() == "a" * 1000  # the outer block ends last: its rename wins
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary file left


def test_a_writer_killed_mid_save_leaves_no_temporary_file_after_the_next_save(tmp_path):
    """Each writer's temporary file has its own name, so one killed mid-save (its `finally`
    never ran) would leave a whole checkpoint's bytes behind at every crash: the next save of
    that path deletes those of writers that are gone, never a live one's."""
    from wikigpt.run.durable import replacing

    dest = tmp_path / "best.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"best.pt.{dead.stdout.strip()}-0badc0de.tmp"  # a finished process's pid
    live = tmp_path / f"best.pt.{os.getpid()}-feedf00d.tmp"  # this one's: a save in progress
    other = tmp_path / "last.pt.1-0badc0de.tmp"  # another file's
    users = [tmp_path / "best.pt.2024-12-01.tmp", tmp_path / "best.pt.12-draft.tmp"]  # no writer's: "2024" is no pid
    for f in (stale, live, other, *users):
        f.write_bytes(b"x" * 1000)
    with replacing(dest) as tmp:
        tmp.write_bytes(b"new")
    assert dest.read_bytes() == b"new" and not stale.exists() and live.exists() and other.exists()
    assert all(f.exists() for f in users)


# ----------------------------------------------------------------------------------------
# A full disk: one line, the previous file kept, nothing half-written left

# what torch.save raised on a full tmpfs: its zip writer's short write, with no errno
UNEXPECTED_POS = "[enforce fail at inline_container.cc:672] . unexpected pos 248576 vs 248470"


@pytest.fixture
def full_disk(monkeypatch):
    def save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"the first bytes")  # what fitted
        raise RuntimeError(UNEXPECTED_POS)
    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_stops_training_in_one_line_and_keeps_the_previous_checkpoint(tmp_path, full_disk):
    """The background writer's failure was torch's RuntimeError, a traceback: now the line a
    full disk gives (the previous checkpoint is whole: continue with --resume=true)."""
    from wikigpt.checkpoint import BackgroundSaver

    path = tmp_path / "last.pt"
    path.write_bytes(b"the previous checkpoint")
    with pytest.raises(UsageError, match=rf"^could not write {path}: .*No space left on device\? \(the write stopped "
                                         r"short\)\. The file there, if any, is the previous save's, whole: .*--resume"):
        with BackgroundSaver() as saver:
            saver.save([(path, {"step": 2})])
    assert path.read_bytes() == b"the previous checkpoint" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_folder_torch_save_may_not_write_in_is_said_so_not_taken_for_a_full_disk(tmp_path, monkeypatch):
    def save(obj, f, *args, **kwargs):  # torch's words for a read-only folder (chmod 555, not root)
        raise RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: Permission denied")
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(PermissionError, match=r"\[Errno 13\] Permission denied: '.*x.pt'"):  # the path named
        save_checkpoint(tmp_path / "x.pt", {})
    assert list(tmp_path.iterdir()) == []


def test_any_other_error_of_torch_save_is_not_taken_for_a_full_disk(tmp_path, monkeypatch):
    def save(obj, f, *args, **kwargs):
        raise RuntimeError("something else")
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(RuntimeError, match="something else"):
        save_checkpoint(tmp_path / "x.pt", {})


@pytest.mark.parametrize("command", ["convert", "prune"])
def test_a_full_disk_is_one_line_for_convert_and_prune_and_leaves_no_file(tiny_ckpt, tiny_data, tmp_path, full_disk,
                                                                          command):
    from test_concurrent_writers import run_to

    out = tmp_path / "small.pt"
    with pytest.raises(UsageError, match=rf"^could not write {out}: No space left on device\? \(the write stopped "
                                         r"short\)\. Nothing half-written was left there: make room"):
        run_to(command, tiny_ckpt, tiny_data, out)
    assert list(tmp_path.iterdir()) == []
