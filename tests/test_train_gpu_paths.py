"""Distributed training on the paths a GPU user takes first, pinned on the CPU (gloo): FSDP keeps
the residual stream float32 as DDP does, a NaN seen by one process stops every process, DDP
skips buffer broadcasts and keeps gradients in its buckets, and last.pt is written in the
background while training goes on."""
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
import torch
import torch.distributed as torch_dist
from conftest import ROOT, TINY, run_cli

import train
from model import GPT, GPTConfig
from wikigpt.run import dist as wdist
from wikigpt.run import fsdp
from wikigpt.checkpoint import load_checkpoint
from wikigpt.cli import UsageError
from wikigpt.loss import NextTokenLoss


@pytest.fixture
def one_process_group():
    """A process group of one (gloo on 127.0.0.1), as train.py forms under torchrun."""
    store = torch_dist.TCPStore("127.0.0.1", wdist.free_port(), 1, is_master=True)
    torch_dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    torch_dist.destroy_process_group()


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32))


# ----------------------------------------------------------------------------------------
# FSDP: the residual stream in float32, the blocks' matmuls in bf16

def test_fsdp_feeds_the_first_block_float32_under_a_bf16_policy(one_process_group, monkeypatch):
    """Under DDP the embedding is an fp32 lookup and autocast casts only each matmul's inputs.
    FSDP gathering the root group (embeddings, final norm, head) in bf16 made wte(idx) bf16,
    and with it every residual sum. The bf16 policy is CUDA's; here it is asked for on gloo."""
    policy_on_cuda = fsdp.mixed_precision
    monkeypatch.setattr(fsdp, "mixed_precision", lambda device_type, dtype: policy_on_cuda("cuda", dtype))
    model = fsdp.shard_model(tiny_model(), "cpu", 1, torch.bfloat16)
    seen = {}

    def first_block(module, args):  # what the block gets, and what its matmuls multiply
        seen.setdefault("residual stream", args[0].dtype)

    def first_matmul(module, args):
        seen.setdefault("block weight", module.weight.dtype)
    model.blocks[0].register_forward_pre_hook(first_block)
    model.blocks[0].mlp.c_fc.register_forward_pre_hook(first_matmul)
    x = torch.randint(0, 300, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = NextTokenLoss(model)(x, x)  # as the training step calls it: hidden_states, the fused loss
    loss.backward()
    assert seen == {"residual stream": torch.float32, "block weight": torch.bfloat16}
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())


# ----------------------------------------------------------------------------------------
# A NaN on one process only

NAN_ON_RANK_1 = r"""
import os
import train
from wikigpt.cli import run_main

real_forward, calls = train.NextTokenLoss.forward, [0]  # what each training step calls
def forward(self, x, y):
    out = real_forward(self, x, y)
    if os.environ["RANK"] == "1":
        calls[0] += 1
        if calls[0] > 3:  # process 1's 4th step (step 3): its loss alone is NaN
            return out * float("nan")
    return out
train.NextTokenLoss.forward = forward
run_main(train.main)
"""


def test_a_nan_on_one_process_stops_both_with_the_diverged_message(tiny_data, tmp_path):
    """Two processes started as torchrun starts them, but without its agent (which would kill
    the survivor and hide a hang): each must stop by itself, at the same check."""
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(wdist.free_port())}
    procs = [subprocess.Popen([sys.executable, str(script), f"--data={tiny_data}", f"--out_dir={tmp_path / 'out'}",
                               "--max_steps=20", "--eval_interval=2", *TINY], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in (0, 1)]
    try:
        outs = [p.communicate(timeout=60) for p in procs]  # a process left waiting would hang here
    except subprocess.TimeoutExpired:
        pytest.fail("a process was still running after 60 s: it waits for one that stopped")
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [2, 2], [e[-1500:] for _, e in outs]
    assert "error: loss became nan at step 3: training diverged" in outs[0][1]
    assert "Traceback" not in outs[0][1] + outs[1][1]
    assert load_checkpoint(tmp_path / "out" / "last.pt")["step"] == 2  # the last good one


# ----------------------------------------------------------------------------------------
# DDP's settings

def test_a_launch_that_sets_rank_without_the_rest_says_what_is_missing(tiny_data, tmp_path):
    """A launcher other than torchrun (or a RANK left in a shell) set RANK alone: setup_dist
    read LOCAL_RANK and stopped with a KeyError traceback."""
    r = run_cli("train.py", f"--data={tiny_data}", f"--out_dir={tmp_path / 'out'}", "--max_steps=1", *TINY,
                env={"RANK": "0", "WORLD_SIZE": "1"})
    assert r.returncode == 2, r.stderr[-1500:]
    assert "error: RANK is set but not LOCAL_RANK, MASTER_ADDR, MASTER_PORT: start several processes with torchrun" \
        in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "last.pt").exists()


def test_ddp_skips_buffer_broadcasts_and_keeps_gradients_in_its_buckets(one_process_group):
    model = tiny_model()
    ddp = wdist.data_parallel(NextTokenLoss(model), wdist.Dist())  # as train.py wraps what its step calls
    assert len(list(model.buffers())) == 2 and not ddp.will_sync_module_buffers()  # rot_cos/rot_sin: not synced
    assert ddp.gradient_as_bucket_view is True
    x = torch.randint(0, 300, (2, 32))
    ddp(x, x).backward()
    grads = [p.grad for p in model.parameters()]
    # views into one all-reduce bucket (the whole tiny model fits one), not a copy of their own each
    assert len({g.untyped_storage().data_ptr() for g in grads}) == 1 and len(grads) > 1


# ----------------------------------------------------------------------------------------
# last.pt written in the background

@pytest.fixture
def slow_writer(monkeypatch):
    """torch.save, slowed: the first call (step 0's last.pt) holds until a training step has
    started after it (or 30 s: the step never came), the others take 0.3 s longer. Records
    whether the first write overlapped a step."""
    real_save, real_forward = torch.save, train.NextTokenLoss.forward
    writing, stepped, record = threading.Event(), threading.Event(), {}

    def save(obj, f, *args, **kwargs):
        if not writing.is_set():
            writing.set()
            record["overlapped a step"] = stepped.wait(timeout=30)
        else:
            time.sleep(0.3)  # not a wait for anything: a slow disk
        real_save(obj, f, *args, **kwargs)

    def forward(self, x, y):  # a training step
        if writing.is_set():
            stepped.set()
        return real_forward(self, x, y)
    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(train.NextTokenLoss, "forward", forward)
    return record


def test_last_pt_is_written_in_the_background_while_training_goes_on(tiny_data, tmp_path, slow_writer, capsys):
    train.main([f"--data={tiny_data}", f"--out_dir={tmp_path}", "--max_steps=4", "--eval_interval=2", *TINY])
    assert slow_writer == {"overlapped a step": True}
    last = load_checkpoint(tmp_path / "last.pt")  # the final write, slowed, was waited for
    assert last["step"] == 4 and len(last["optimizer"]) == 2
    assert sorted(p.name for p in tmp_path.glob("*.pt*")) == ["best.pt", "last.pt"]  # no temporary left
    out = capsys.readouterr().out
    assert len(re.findall(r"step \d: val loss .* \| checkpoint [\d.]+ s", out)) == 3  # the loop's share, per eval
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0 < summary["checkpoint_seconds"] < summary["seconds"]


def test_a_failed_background_write_stops_the_run_with_a_clear_message(tiny_data, tmp_path, monkeypatch):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "last.pt" in str(f) and obj.get("step") == 2:  # step 2's last.pt (a temporary file beside it)
            raise OSError(28, "No space left on device")
        real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(UsageError, match=r"could not write .*last.pt: \[Errno 28\] No space left on device"):
        train.main([f"--data={tiny_data}", f"--out_dir={tmp_path}", "--max_steps=4", "--eval_interval=2", *TINY])
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 0  # the previous one, whole


def test_the_background_copy_keeps_tied_weights_tied_and_reused_buffers_hold_the_new_values(tmp_path):
    from wikigpt.checkpoint import BackgroundSaver

    w = torch.arange(6.0).view(2, 3)
    state = {"wte": w, "lm_head": w.detach(), "row": w[1], "step": 1}  # one storage, three views
    with BackgroundSaver() as saver:
        saver.save([(tmp_path / "a.pt", state)])
        w.add_(100)  # the next step, while the write may still run
        saver.save([(tmp_path / "b.pt", state)])  # into the buffers a.pt was written from
    a, b = (torch.load(tmp_path / name, weights_only=True) for name in ("a.pt", "b.pt"))
    assert torch.equal(a["wte"], torch.arange(6.0).view(2, 3)) and torch.equal(b["wte"], a["wte"] + 100)
    assert torch.equal(b["row"], b["wte"][1]) and b["step"] == 1
    shared = {t.untyped_storage().data_ptr() for t in (b["wte"], b["lm_head"], b["row"])}
    assert len(shared) == 1  # stored once, loaded tied, as a synchronous torch.save does


def test_a_run_on_apples_gpu_makes_no_float64_tensor(tiny_data, tmp_path, monkeypatch):
    """MPS has no float64 (torch refuses to make such a tensor there): the loss sums of the log and
    of the eval were float64 on every device, and a Mac's first `make demo` (--device auto picks
    MPS) stopped at its first eval. Here every op of a short run is watched, with the sums' type
    chosen as it is for MPS."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from wikigpt import loss_eval
    from wikigpt.run import throughput, train_log

    assert throughput.sum_dtype("mps") == torch.float32 and throughput.sum_dtype("cuda:1") == torch.float64

    class Float64Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            outs = out if isinstance(out, (tuple, list)) else [out]
            if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in outs):
                self.seen.add(str(func))
            return out
    from wikigpt.adapt import prune

    for module in (loss_eval, train_log, prune):
        monkeypatch.setattr(module, "sum_dtype", lambda device: throughput.sum_dtype("mps"))
    with Float64Ops() as ops:
        train.main([f"--data={tiny_data}", f"--out_dir={tmp_path}", "--max_steps=2", "--eval_interval=2", *TINY])
        x = torch.randint(0, 300, (2, 32))
        scores = prune.unit_scores(tiny_model(), x, x, prune.Plan.everything(tiny_model()))  # prune.py's sums
    assert ops.seen == set() and load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert scores.dtype == torch.float32 and scores.shape == (2, 128)
