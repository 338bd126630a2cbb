"""bench/gpu_check.py cannot mislead on a machine without CUDA: the rows that need it say so and
the run does not pass (exit 3, unless --cpu), or fail where the machine has a GPU torch cannot see,
a check that hangs becomes a FAILED row (and leaves nothing running), a check the budget leaves
out or a mistyped name fails the run, recompiles are counted, and an engine that fell back to
eager is not reported as compiled."""
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, running

sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402
import gpu_steps  # noqa: E402


def run_gpu_check(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/gpu_check.py", *args, "--work", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_the_gpu_check_on_a_cpu_marks_the_cuda_rows_not_run_and_does_not_pass(tmp_path):
    r = run_gpu_check(tmp_path, "--only", "env,model,train_fp16,ddp,fsdp,int8")
    assert r.returncode == 3, r.stdout + r.stderr  # no failure, but no GPU was checked either
    table = dict(line.strip("| ").split(" | ", 1) for line in r.stdout.splitlines() if line.startswith("| ")
                 and "---" not in line)
    assert table["device"].startswith("cpu")
    for name in ("gpt2_124m shape, compiled, bf16", "train.py 20 steps, float16, demo shape",
                 "torchrun DDP on 2 GPUs, 20 steps, bf16", "FSDP on 1 GPU", "int8 checkpoint on the GPU"):
        assert table[name] == "not run (needs CUDA)", (name, table)
    assert "no failure; 5 rows need CUDA and were not run: no GPU was checked" in r.stdout
    assert "exit 3: this was not a GPU check" in r.stdout
    r = run_gpu_check(tmp_path, "--only", "env,int8", "--cpu")  # a CPU run on purpose
    assert r.returncode == 0 and "no failure; 1 rows need CUDA" in r.stdout and "exit 3" not in r.stdout, r.stdout


def test_a_check_past_its_timeout_is_a_failed_row(tmp_path):
    rows = gpu_check.run_check("env", 0.01, tmp_path)  # far less than importing torch takes
    assert rows[-1][0] == "env" and rows[-1][1].startswith("FAILED: timed out")


def test_a_check_past_its_timeout_leaves_no_process_it_started(tmp_path, monkeypatch):
    steps = tmp_path / "steps.py"  # a check that starts a process (as train.py, serve.py) and hangs
    steps.write_text("import pathlib, subprocess, sys\np = subprocess.Popen(['sleep', '60'])\n"
                     "pathlib.Path(sys.argv[-1], 'child').write_text(str(p.pid))\np.wait()\n")
    monkeypatch.setattr(gpu_check, "STEPS", steps)
    rows = gpu_check.run_check("env", 6, tmp_path)  # room for a loaded machine to start it and write its child's pid
    assert rows[-1][1].startswith("FAILED: timed out"), rows
    child = int((tmp_path / "child").read_text())
    for _ in range(50):  # SIGKILL is delivered at once; dying takes the kernel a moment
        if not running(child):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the check's child (pid {child}) still runs")


def test_a_check_the_budget_leaves_out_fails_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "BUDGET_S", 0)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--only", "env", "--work", str(tmp_path)])
    with pytest.raises(SystemExit) as exit:
        gpu_check.main()
    assert exit.value.code == 1 and "| env | FAILED: not run" in capsys.readouterr().out


def test_an_unknown_check_name_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--only", "env,engin", "--work", str(tmp_path)])
    with pytest.raises(SystemExit) as exit:
        gpu_check.main()
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "unknown check(s) engin;" in err and "engine, serve" in err, err


def test_a_recompile_is_counted():
    f = torch.compile(lambda x: x * 2, backend="eager", dynamic=False)
    f(torch.ones(3))
    before = gpu_steps.graphs_compiled()
    f(torch.ones(4))  # a new shape: a recompile
    f(torch.ones(4))  # compiled already: none
    assert gpu_steps.graphs_compiled() - before == 1


@pytest.mark.parametrize("compiles", [False, True])
def test_an_engine_that_fell_back_to_eager_is_a_failed_row(compiles, monkeypatch):
    import wikigpt.decoding.decode as decode

    def broken(*args):  # as a broken inductor/Triton fails a graph's first call
        raise RuntimeError("simulated backend failure")
    # the step "compiled" as decode_step itself (a real compile takes minutes on a CPU), or broken
    monkeypatch.setattr(decode, "compiled_step", lambda graphs, cuda: decode.decode_step if compiles else broken)
    torch.manual_seed(0)
    model = gpu_steps.GPT(gpu_steps.GPTConfig(vocab_size=256, block_size=128, n_layer=1, n_head=2, n_embd=32))
    name, value = gpu_steps.engine_decode_row(model.eval(), 1)
    assert value.startswith("FAILED: the step fell back to eager") != compiles, value


def test_a_gpu_that_torch_cannot_see_is_a_failed_row(tmp_path, monkeypatch, capsys):
    """A CPU build of torch (or a driver it cannot use) on a GPU machine would otherwise pass the
    check with every CUDA row 'not run'."""
    monkeypatch.setattr(gpu_steps, "nvidia_gpu_present", lambda: True)
    gpu_steps.check_env(tmp_path)
    device = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("ROW\tdevice"))
    assert device.split("\t")[2].startswith("FAILED: this machine has an NVIDIA GPU, torch"), device
    gpu_steps.check_int8(tmp_path)  # and each row that needs CUDA: not a "not run" that passes
    assert "ROW\tint8 checkpoint on the GPU\tFAILED: not run, torch sees no GPU" in capsys.readouterr().out
    monkeypatch.setattr(gpu_steps, "nvidia_gpu_present", lambda: False)  # a CPU machine: no failure
    gpu_steps.check_env(tmp_path)
    gpu_steps.check_int8(tmp_path)
    out = capsys.readouterr().out
    assert "ROW\tdevice\tcpu, torch" in out and "ROW\tint8 checkpoint on the GPU\tnot run (needs CUDA)" in out


def test_the_fsdp_check_runs_its_step_and_leaves_no_torchrun_variables_to_the_train_runs_after_it(monkeypatch):
    """The check set RANK / WORLD_SIZE in os.environ for its process group of one; the train.py
    --shard=fsdp runs it starts next inherited them, took themselves for torchrun's, and stopped
    with KeyError: 'LOCAL_RANK'. Before that its hooks returned what they saw, which a forward
    pre-hook hands on as the input: the step itself failed. A FAILED fsdp row on every GPU; here
    the same code on gloo, with the bf16 policy CUDA gets."""
    import os

    from model import GPTConfig
    from wikigpt.run import fsdp

    policy_on_cuda = fsdp.mixed_precision
    monkeypatch.setattr(fsdp, "mixed_precision", lambda device_type, dtype: policy_on_cuda("cuda", dtype))
    launch = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # what torchrun sets
    before = {k: os.environ.get(k) for k in launch}
    seen = gpu_steps.fsdp_dtypes(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32), "cpu", "gloo")
    assert seen == {"stream": torch.float32, "weight": torch.bfloat16}  # what the GPU row checks
    assert {k: os.environ.get(k) for k in launch} == before
