"""bench/gpu_check.py cannot mislead on a machine without CUDA: the rows that need it say so,
and a check that hangs becomes a FAILED row instead of a stalled run."""
import subprocess
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402


def test_the_gpu_check_on_a_cpu_marks_the_cuda_rows_not_run(tmp_path):
    r = subprocess.run([sys.executable, "bench/gpu_check.py", "--only", "env,model,train_fp16,fsdp,int8",
                        "--work", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    table = dict(line.strip("| ").split(" | ", 1) for line in r.stdout.splitlines() if line.startswith("| ")
                 and "---" not in line)
    assert table["device"].startswith("cpu")
    for name in ("gpt2_124m shape, compiled, bf16", "train.py 20 steps, float16, demo shape", "FSDP on 1 GPU",
                 "int8 checkpoint on the GPU"):
        assert table[name] == "not run (needs CUDA)", (name, table)
    assert "no failure" in r.stdout


def test_a_check_past_its_timeout_is_a_failed_row(tmp_path):
    rows = gpu_check.run_check("env", 0.01, tmp_path)  # far less than importing torch takes
    assert rows[-1][0] == "env" and rows[-1][1].startswith("FAILED: timed out")
