"""train.py: config handling, data order, resume, DDP, compile, checkpoints, bad input."""
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, run_cli, two_machines

from wikigpt import optim
import train
from wikigpt.batches import batch_plan
from wikigpt.checkpoint import CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from wikigpt.cli import UsageError, load_config
from wikigpt.optim import lr_factor
from wikigpt.batches import PretrainBatches
from wikigpt.config import TrainConfig


# ----- configuration

def test_unknown_key_lists_close_matches():
    with pytest.raises(UsageError, match=r"unknown config key 'n_layers'.*Did you mean: n_layer"):
        load_config(TrainConfig, ["--n_layers=3"])


def test_values_are_type_checked_from_command_line_and_toml(tmp_path):
    with pytest.raises(UsageError, match="n_layer expects int, got 'four'"):
        load_config(TrainConfig, ["--n_layer=four"])
    (tmp_path / "c.toml").write_text('n_layer = "4"\nlr = 1\n')
    with pytest.raises(UsageError, match=r"c.toml, key n_layer: n_layer expects int, got str"):
        load_config(TrainConfig, [str(tmp_path / "c.toml")])
    (tmp_path / "ok.toml").write_text("n_layer = 4\nlr = 1\ncompile = true\n")
    cfg = load_config(TrainConfig, [str(tmp_path / "ok.toml"), "--n_layer=3", "--compile=false"])
    assert (cfg.n_layer, cfg.lr, cfg.compile) == (3, 1.0, False)  # CLI overrides the file


def test_invalid_values_and_files_are_refused(tmp_path):
    with pytest.raises(UsageError, match="arch must be gpt2 or modern"):
        load_config(TrainConfig, ["--arch=llama"])
    with pytest.raises(UsageError, match="resume=true continues .* overwrite=true starts a new one"):  # overwrite was ignored
        load_config(TrainConfig, ["--resume=true", "--overwrite=true"])
    with pytest.raises(UsageError, match="not found"):
        load_config(TrainConfig, [str(tmp_path / "missing.toml")])
    (tmp_path / "bad.toml").write_text("n_layer = = 4\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_config(TrainConfig, [str(tmp_path / "bad.toml")])
    with pytest.raises(UsageError, match="--key=value"):
        load_config(TrainConfig, ["--n_layer", "4"])
    # the usual slips: a checkpoint for --init_from, a folder for --data (a traceback and "not found" before)
    torch.save({"model": torch.zeros(8)}, tmp_path / "best.pt")
    with pytest.raises(UsageError, match=r"best.pt is not a TOML config but binary data: .* --init_from="):
        load_config(TrainConfig, [str(tmp_path / "best.pt")])
    with pytest.raises(UsageError, match=r"is a folder, not a config file: .* --data="):
        load_config(TrainConfig, [str(tmp_path)])


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, min_lr_frac=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    wsd = TrainConfig(max_steps=110, warmup_steps=10, schedule="wsd", decay_frac=0.2)
    assert lr_factor(80, wsd) == 1.0 and lr_factor(110, wsd) == pytest.approx(0.1)


# ----- data order

def test_batches_are_disjoint_across_processes_and_cover_an_epoch():
    shard = np.arange(1000, dtype=np.uint16)
    seen = []
    for rank in range(2):
        b = PretrainBatches([shard], block_size=10, batch_size=3, seed=0, rank=rank, world=2)
        for _ in range(16):  # 16 * 3 * 2 = 96 of the 99 windows
            x, y = b.next_batch()
            assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
            seen += [int(r[0]) // 10 for r in x]
    assert len(seen) == len(set(seen)) == 96


def test_batch_state_resumes_the_same_stream():
    shard = np.arange(5000, dtype=np.uint16)
    a = PretrainBatches([shard], 16, 4, seed=1)
    for _ in range(100):  # crosses an epoch boundary (312 windows)
        a.next_batch()
    b = PretrainBatches([shard], 16, 4, seed=1)
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        assert torch.equal(a.next_batch()[0], b.next_batch()[0])


# ----- runs as a user runs them

def losses(stdout):
    return {int(m[1]): float(m[2]) for m in re.finditer(r"step (\d+)/\d+ \| loss ([\d.]+)", stdout)}


# 12 steps of Muon (named, though it is the default) with dropout: the uninterrupted run that the
# resume test compares with, and the run whose loss test_muon_optimizer_trains reads (a train.py
# start costs ~7 s: one run serves both)
STRAIGHT = ["--max_steps=12", "--eval_interval=6", "--dropout=0.1", "--optimizer=muon", *TINY]


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    r = run_cli("train.py", f"--data={tiny_data}", *STRAIGHT, f"--out_dir={out}")
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_resume_continues_exactly(tiny_data, tmp_path, straight_run):
    common = [f"--data={tiny_data}", *STRAIGHT]
    first = run_cli("train.py", *common, f"--out_dir={tmp_path / 'b'}", "--stop_after=6")
    second = run_cli("train.py", *common, f"--out_dir={tmp_path / 'b'}", "--resume=true")
    for r in (first, second):
        assert r.returncode == 0, r.stderr
    assert "resuming" in second.stdout
    # the first part says it stopped early (a script reading its summary took it for finished)
    assert "done (stop_after 6: --resume=true, a later stop_after) at step 6" in first.stdout, first.stdout[-500:]
    assert "done (max_steps) at step 12" in second.stdout
    expected = losses(straight_run[1])
    assert len(expected) == 12
    assert {**losses(first.stdout), **losses(second.stdout)} == expected
    a, b = load_checkpoint(straight_run[0] / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == 12
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# One 2-process DDP run that the tests below compare with (a torchrun start costs ~10 s): 8 windows
# a step, 4 per process in 2 micro-steps of 2 (gradient accumulation under DDP)
DDP_ARGS = ["--max_steps=6", "--eval_interval=2", "--total_batch_tokens=256", "--batch_size=2"]


@pytest.fixture(scope="module")
def ddp_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    r = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
                f"--data={tiny_data}", *TINY, *DDP_ARGS, f"--out_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r.stdout


def test_two_process_torchrun_gloo_keeps_weights_identical(ddp_run):
    out, stdout = ddp_run
    assert "2 process(es) on cpu" in stdout and "2 process(es) x 2 micro-step(s) x 2 rows x 32" in stdout
    assert "weights identical on all 2 processes: yes" in stdout
    steps = losses(stdout)
    assert steps[6] < steps[1]


# train.py, each process saying which of its first dropout's units were dropped
FIRST_DROPOUT_MASK = """
import os, torch.nn.functional as F
from wikigpt.cli import run_main
import train
real, said = F.dropout, []
def saying(x, p=0.5, training=True, inplace=False):
    out = real(x, p, training, inplace)
    if training and p > 0 and not said:
        said.append(True)
        print(f"first mask of {os.environ.get('RANK', '0')}:", "".join("01"[d] for d in (out == 0).flatten()[:200].tolist()))
    return out
F.dropout = saying
run_main(train.main)
"""


def test_each_ddp_process_drops_its_own_units(tiny_data, tmp_path):
    """Every process once drew the same dropout masks (one seed for all, set for the weights,
    which must be alike): N processes regularised like one."""
    script = tmp_path / "train_saying_its_mask.py"
    script.write_text(FIRST_DROPOUT_MASK)
    r = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, f"--data={tiny_data}",
                f"--out_dir={tmp_path / 'out'}", "--max_steps=1", "--eval_interval=1", "--dropout=0.5", *TINY,
                "--total_batch_tokens=256", "--batch_size=2", env={"PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    masks = dict(re.findall(r"first mask of (\d): ([01]+)", r.stdout))
    assert sorted(masks) == ["0", "1"] and "1" in masks["0"] and masks["0"] != masks["1"]


def test_torchrun_batch_that_does_not_divide_is_refused(tiny_data, tmp_path):
    r = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
                f"--data={tiny_data}", f"--out_dir={tmp_path}", "--max_steps=2", *TINY, "--batch_size=3")
    assert r.returncode != 0
    assert "96 tokens per optimizer step cannot be split" in r.stderr and "Set total_batch_tokens to 64 or 128" in r.stderr
    assert "Traceback" not in r.stderr.split("error:")[0]
    assert r.stderr.count("error: ") == 1  # said once, by process 0, not by every process


def test_one_config_gives_the_same_run_on_one_process_and_on_two(tiny_data, tmp_path, ddp_run):
    """256 tokens a step, micro-batches of 2: on one process 4 micro-steps of 2 windows, on 2
    processes 2 each: the same windows, the same mean loss, the same weights (up to float summation order)."""
    one = run_cli("train.py", f"--data={tiny_data}", *TINY, *DDP_ARGS, f"--out_dir={tmp_path}")
    assert one.returncode == 0, one.stderr[-2000:]
    assert "256 tokens/step = 1 process(es) x 4 micro-step(s) x 2 rows x 32" in one.stdout
    a, b = losses(one.stdout), losses(ddp_run[1])
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) < 2e-4 for s in a)  # printed to 4 decimals
    wa, wb = load_checkpoint(tmp_path / "last.pt")["model"], load_checkpoint(ddp_run[0] / "last.pt")["model"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_compile_path_trains(tiny_data, tmp_path):
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={tmp_path}", "--max_steps=4",
                "--eval_interval=4", "--compile=true", *TINY)
    assert r.returncode == 0, r.stderr
    assert len(losses(r.stdout)) == 4 and "compile failed" not in r.stderr
    assert "matmul peak measured at start" in r.stdout
    mfus = [float(m) for m in re.findall(r"MFU ([\d.]+)%", r.stdout)]
    rates = [float(t.replace(",", "")) for t in re.findall(r"([\d,]+) tok/s", r.stdout)]
    # a tiny model's MFU is a fraction of a percent: printed to 0.1 %, it reads 0.0 on a loaded machine
    assert len(mfus) == 4 and all(0 <= m <= 100 for m in mfus)
    assert len(rates) >= 4 and all(t > 0 for t in rates[1:])  # step 1 holds compilation


def test_early_stopping_on_patience(tiny_data, tmp_path):
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={tmp_path}", "--max_steps=200",
                "--eval_interval=1", "--patience=1", "--lr=1e-9", "--optimizer=adamw", *TINY[:-1])
    assert r.returncode == 0, r.stderr
    assert "early stop" in r.stdout


def test_sample_py_end_to_end(tiny_ckpt):
    r = run_cli("sample.py", "--ckpt", tiny_ckpt, "--prompt", "Article 3", "--max_new_tokens", "20",
                "--seed", "0", "--num_samples", "2")
    assert r.returncode == 0, r.stderr
    samples = r.stdout.split("-" * 40)
    assert len(samples) == 3 and all(s.strip().startswith("Article 3") for s in samples[:2])
    again = run_cli("sample.py", "--ckpt", tiny_ckpt, "--prompt", "-", "--max_new_tokens", "20",
                    "--seed", "0", "--num_samples", "2", input="Article 3")
    assert again.stdout == r.stdout  # stdin prompt, same seed: same text
    for bad, said in ((["--prompt_file", "p.txt"], "choose one"), (["--num_samples", "0"], "--num_samples must be"),
                      (["--max_new_tokens", "0"], "--max_new_tokens must be")):
        r = run_cli("sample.py", "--ckpt", tiny_ckpt, "--prompt", "Article 3", *bad)
        assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, r.stderr


# ----- checkpoints and bad input

def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"version": CHECKPOINT_VERSION, "step": 1})

    def dying_save(obj, f):
        open(f, "wb").write(b"partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"version": CHECKPOINT_VERSION, "step": 2})
    assert load_checkpoint(path)["step"] == 1


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tiny_data, tmp_path, monkeypatch):
    real_forward = train.NextTokenLoss.forward  # what each training step calls
    calls = {"n": 0}

    def forward(self, x, y):
        out = real_forward(self, x, y)
        calls["n"] += 1
        if calls["n"] > 3:
            return out * float("nan")
        return out
    monkeypatch.setattr(train.NextTokenLoss, "forward", forward)
    with pytest.raises(UsageError, match="loss became nan at step 3: training diverged"):
        train.main([f"--data={tiny_data}", f"--out_dir={tmp_path}", "--max_steps=10",
                    "--eval_interval=2", *TINY])
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2


@pytest.fixture
def broken(tiny_data, tmp_path):
    import shutil
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_data, corrupt)
    shard = corrupt / "train_000.bin"
    shard.write_bytes(shard.read_bytes()[:-7])
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "notes.txt").write_text("a README, say")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_bytes(b"")
    (tmp_path / "last.dcp").mkdir()
    torch.save({"version": 99}, tmp_path / "future.pt")
    return tmp_path


@pytest.mark.parametrize("args,message", [
    (["--data={tmp}/nope"], "nope: no such folder. Build the dataset first"),
    (["--data={tmp}/corrupt"], "truncated or corrupt"),
    (["--init_from={tmp}/missing.pt"], "not found"),
    (["--init_from={tmp}/trunc.pt"], "truncated or not a wikigpt checkpoint"),
    (["--init_from={tmp}/notes.txt"], "not a torch.save archive"),
    (["--init_from={tmp}"], "is a folder (future.pt, trunc.pt): pass a checkpoint file"),
    (["--init_from={tmp}/last.dcp"], "make one file of it with `python convert.py dcp"),
    (["--data={tmp}/run"], "holds a training run (checkpoints), not a dataset"),
    (["--init_from={tmp}/future.pt"], "checkpoint version 99"),
    (["--resume=true", "--out_dir={tmp}/empty"], "not found"),
    (["--block_size=4096"], "too few"),
    (["--batch_size=x"], "batch_size expects int"),
])
def test_bad_input_gets_a_clear_error(broken, tiny_data, args, message):
    argv = [f"--data={tiny_data}", f"--out_dir={broken}/out", "--max_steps=2", *TINY]
    argv += [a.format(tmp=broken) for a in args]
    r = run_cli("train.py", *argv)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (broken / "out" / "last.pt").exists()


def test_compile_failure_falls_back_to_eager_with_one_warning(tiny_data, tmp_path, monkeypatch, capsys):
    def broken_compile(model):
        def run(*args, **kwargs):
            raise RuntimeError("no C++ compiler found\nlong details")
        return run
    monkeypatch.setattr(torch, "compile", broken_compile)
    train.main([f"--data={tiny_data}", f"--out_dir={tmp_path}", "--max_steps=3", "--eval_interval=3",
                *TINY, "--compile=true"])
    out = capsys.readouterr()
    assert "warning: torch.compile failed (RuntimeError: no C++ compiler found); training in eager mode" in out.err
    assert len(losses(out.out)) == 3


def test_newton_schulz_orthogonalises():
    torch.manual_seed(0)
    g = torch.randn(64, 32) @ torch.diag(torch.logspace(-1, 1, 32))  # singular values over 100x
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 50
    s = torch.linalg.svdvals(optim.zeropower_newton_schulz(g))
    assert s.min() > 0.5 and s.max() < 1.5  # every direction gets a similar step


def test_muon_optimizer_trains(straight_run):
    out, stdout = straight_run  # --optimizer=muon, 12 steps
    steps = losses(stdout)
    assert steps[12] < steps[1] - 0.5
    state = load_checkpoint(out / "last.pt")["optimizer"]
    assert len(state) == 2  # AdamW for embeddings/norms, Muon for the hidden matrices


def test_wandb_logging_works_offline(tiny_data, tmp_path):
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={tmp_path / 'out'}", "--max_steps=2",
                "--eval_interval=2", "--wandb_project=wikigpt-test", *TINY,
                env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"})
    assert r.returncode == 0, r.stderr
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))  # the run's logged data


def test_help_lists_every_key_with_its_default():
    r = run_cli("train.py", "-h")
    assert r.returncode == 0
    for f in fields(TrainConfig):
        assert re.search(rf"^--{f.name}\s+{re.escape(str(f.default))}\s", r.stdout, re.M), f.name


def test_two_nodes_on_loopback_train_as_one_run(tiny_data, tmp_path):
    """Two torchrun launchers (one process each) meeting through a c10d rendezvous on 127.0.0.1,
    as two machines would: one run, identical weights, one set of checkpoints."""
    nodes = two_machines(lambda rank: [f"--data={tiny_data}", f"--out_dir={tmp_path}", "--max_steps=6",
                                       "--eval_interval=3", "--grad_accum=2", *TINY])
    assert all(code == 0 for code, _, _ in nodes), [err[-1500:] for _, _, err in nodes]
    stdout = "".join(out for _, out, _ in nodes)
    assert "2 process(es) on cpu" in stdout and "weights identical on all 2 processes: yes" in stdout
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["best.pt", "last.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 6


def test_fsdp_matches_ddp_resumes_across_world_sizes_and_converts(tiny_data, tmp_path, ddp_run):
    """FSDP2 on 2 CPU processes (gloo), Muon for the hidden matrices and AdamW for the rest:
    the same losses as DDP; stopped after step 2 and resumed on 1 process, then on 2 again,
    the same losses as one straight run; the DCP folder converts to a file the tools load."""
    common = [f"--data={tiny_data}", *TINY, *DDP_ARGS]
    two = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    straight = run_cli(*two, *common, "--shard=fsdp", f"--out_dir={tmp_path / 'fsdp'}")
    assert straight.returncode == 0, straight.stderr[-2000:]
    a, b = losses(ddp_run[1]), losses(straight.stdout)
    assert sorted(a) == list(range(1, 7)) and a.keys() == b.keys()
    assert all(abs(a[s] - b[s]) < 2e-4 for s in a), (a, b)  # printed to 4 decimals

    out = tmp_path / "resumed"
    parts = [run_cli(*two, *common, "--shard=fsdp", "--stop_after=2", f"--out_dir={out}"),
             run_cli("train.py", *common, "--shard=fsdp", "--stop_after=4", "--resume=true", f"--out_dir={out}"),
             run_cli(*two, *common, "--shard=fsdp", "--resume=auto", f"--out_dir={out}")]
    assert all(r.returncode == 0 for r in parts), [r.stderr[-1500:] for r in parts]
    assert "1 process(es)" in parts[1].stdout and "resuming" in parts[1].stdout
    resumed = {s: v for r in parts for s, v in losses(r.stdout).items()}
    assert resumed.keys() == b.keys() and all(abs(resumed[s] - b[s]) < 2e-4 for s in b), (resumed, b)
    assert sorted(p.name for p in (out / "last.dcp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp",
                                                                  "train_state.pt"]  # a shard per process

    r = run_cli("convert.py", "dcp", out / "last.dcp", tmp_path / "last.pt")
    assert r.returncode == 0, r.stderr
    converted, best = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(out / "best.pt")
    assert converted["step"] == best["step"] == 6  # val improved at every eval of this run
    assert all(torch.equal(converted["model"][k], best["model"][k]) for k in best["model"])
    r = run_cli("sample.py", "--ckpt", tmp_path / "last.pt", "--max_new_tokens=4", "--prompt=The")
    assert r.returncode == 0, r.stderr
    r = run_cli("convert.py", "dcp", out / "last.dcp", tmp_path / "last.pt")  # never overwrites
    assert r.returncode == 2 and "exists" in r.stderr


@pytest.mark.parametrize("name, worlds", [("gpt2_124m", (1, 8)), ("gpt2_350m", (1, 8)), ("demo_cpu", (1, 2))])
def test_shipped_configs_load_and_split_over_their_gpus(name, worlds):
    """Every config loads, validates, and cuts its tokens per step into whole windows on one
    process and on the GPU counts its comments name; the parameter counts they state hold."""
    from model import GPT, GPTConfig

    cfg = load_config(TrainConfig, [str(ROOT / "config" / f"{name}.toml")])
    for world in worlds:
        micro, accum = batch_plan(cfg, cfg.block_size, world)
        assert micro * accum * world * cfg.block_size == (cfg.total_batch_tokens or
                                                          cfg.batch_size * cfg.block_size * cfg.grad_accum)
    with torch.device("meta"):  # no memory: shapes only
        model = GPT(GPTConfig(vocab_size=50261, block_size=cfg.block_size, n_layer=cfg.n_layer,
                              n_head=cfg.n_head, n_embd=cfg.n_embd, arch=cfg.arch))
    stated = {"gpt2_124m": 162e6, "gpt2_350m": 407e6}  # "modern" counts in the configs' comments
    if name in stated:
        assert abs(model.n_params() - stated[name]) / stated[name] < 0.01
    if name == "gpt2_350m":
        assert cfg.shard == "fsdp" and batch_plan(cfg, cfg.block_size, 8) == (16, 4)


def _worker_pid(out_dir, rank: int, attempt: int):
    """The pid of torchrun's worker `rank` in restart round `attempt` of the run writing out_dir."""
    for proc in Path("/proc").iterdir():
        try:
            cmd, env = (proc / "cmdline").read_bytes(), (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        env = dict(e.split(b"=", 1) for e in env if b"=" in e)
        if (b"train.py" in cmd and str(out_dir).encode() in cmd and env.get(b"RANK") == str(rank).encode()
                and env.get(b"TORCHELASTIC_RESTART_COUNT") == str(attempt).encode()):
            return int(proc.name)
    return None


def test_a_killed_worker_is_restarted_by_torchrun_and_the_run_ends_as_if_never_interrupted(tiny_data, tmp_path):
    common = [f"--data={tiny_data}", *TINY, "--max_steps=30", "--eval_interval=5", "--total_batch_tokens=256",
              "--resume=auto"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max_restarts=2",
              "train.py", *common]
    straight = subprocess.run([*launch, f"--out_dir={tmp_path / 'straight'}"], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen([*launch, f"--out_dir={out}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    killed, deadline = False, time.time() + 120
    while not killed and proc.poll() is None and time.time() < deadline:
        evals = (out / "metrics.jsonl").read_text().count('"type": "eval"') if (out / "metrics.jsonl").exists() else 0
        if evals >= 3 and (pid := _worker_pid(out, rank=1, attempt=0)):  # last.pt holds step 5 or 10 here
            os.kill(pid, signal.SIGKILL)  # a lost worker, mid-run
            killed = True
        time.sleep(0.02)
    try:
        stdout, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the restarted group did not finish")
    assert killed and proc.returncode == 0, stdout[-3000:]
    # (a later step where this poll runs late, on a busy or fast machine: still mid-run)
    assert re.search(r"resuming \S+ at step (5|10|15|20|25)\b", stdout) and "done (max_steps) at step 30" in stdout
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(out / "last.pt")
    assert a["step"] == b["step"] == 30
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # bit for bit
