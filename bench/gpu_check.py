"""
The GPU check: one command that says whether this machine trains and serves as it should.

    bash bench/gpu_check.sh            # on a GPU: ~6 minutes, no download
    bash bench/gpu_check.sh --quick    # fewer steps (also what a CPU run does)

It builds a dataset from the built-in Wikipedia sample (an 8k BPE: GPT-2's files would be a
download), then prints: the device and the peak MFU is stated against; training tokens/s and MFU
of the gpt2_124m shape (compiled, bf16) at two batch sizes; the host syncs in one optimizer step
(torch.cuda.set_sync_debug_mode); the engine's decode tokens/s at 1/8/16 rows, eager and as CUDA
graphs; that an int8 checkpoint is refused on the GPU; a one-GPU FSDP run stopped and resumed.
On a CPU the rows that need CUDA say "not run" and the rest run at a small scale.
"""
import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent  # the repository root: its commands and wikigpt/
sys.path.insert(0, str(ROOT))

from bench_decode import engine_tok_s  # noqa: E402  (bench/, beside this file)
from model import GPT, GPTConfig  # noqa: E402
from wikigpt.batches import PretrainBatches  # noqa: E402
from wikigpt.checkpoint import load_model  # noqa: E402
from wikigpt.cli import load_config  # noqa: E402
from wikigpt.config import TrainConfig  # noqa: E402
from wikigpt.data import load_dataset  # noqa: E402
from wikigpt.optim import build_optimizers  # noqa: E402
from wikigpt.runlog import SUMMARY  # noqa: E402
from wikigpt.throughput import peak_flops  # noqa: E402

NOT_RUN = "not run (needs CUDA)"


def row(name: str, value: str):
    print(f"| {name} | {value} |", flush=True)


def command(*args, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if check and r.returncode:
        sys.exit(f"{args[0]} failed:\n{r.stderr[-3000:]}")
    return r


def train(data: Path, out: Path, cuda: bool, *extra) -> dict:
    shape = ["config/gpt2_124m.toml"] if cuda else ["config/demo_cpu.toml"]
    command("train.py", *shape, f"--data={data}", f"--out_dir={out}", "--eval_interval=100000",
            "--eval_tokens=16384", "--log_interval=5", "--warmup_steps=5", *extra)
    return json.loads((out / SUMMARY).read_text())


def syncs_per_step(data: Path, cuda: bool) -> str:
    """Host syncs in one optimizer step (forward, backward, clip, optimizer, next batch), counted
    by CUDA's sync debug mode after a warm-up step."""
    if not cuda:
        return NOT_RUN
    cfg = load_config(TrainConfig, ["config/gpt2_124m.toml", f"--data={data}", "--batch_size=8"])
    ds = load_dataset(data)
    model = GPT(GPTConfig(vocab_size=ds.tokenizer.n_vocab, block_size=1024, n_layer=12, n_head=12,
                          n_embd=768)).cuda()
    optimizers = build_optimizers(model, cfg, "cuda")
    batches = PretrainBatches(ds.train, 1024, 8, 0, device="cuda")
    x, y = batches.next_batch()

    def step():
        nonlocal x, y
        loss_sum = torch.zeros((), device="cuda")
        for _ in range(2):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x, y) / 2
            x, y = batches.next_batch()
            loss.backward()
            loss_sum += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for o in optimizers:
            o.step()
            o.zero_grad(set_to_none=True)
    step()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        step()
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    where = sorted({str(w.message).splitlines()[0][:80] for w in syncs})
    return f"{len(syncs)} in one step of 2 micro-steps" + (f" ({'; '.join(where[:3])})" if where else "")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer steps and tokens")
    p.add_argument("--work", default="out/gpu_check", help="where the dataset and runs go")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    quick = args.quick or not cuda
    work, t0 = ROOT / args.work, time.time()
    data = work / "data"
    print("| check | result |\n|---|---|")
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak, note = peak_flops("cuda" if cuda else "cpu", torch.bfloat16 if cuda else torch.float32)
    row("device, peak used for MFU", f"{device}: {peak / 1e12:.1f} TFLOP/s ({note})")
    if not (data / "meta.json").is_file():
        command("prepare_wiki.py", "--out", data, "--tokenizer", "bpe:8192", "--val_fraction", "0.05", "--overwrite")
    steps = 12 if quick else 40
    for batch in (8, 16) if cuda else (8,):
        s = train(data, work / f"train_b{batch}", cuda, f"--max_steps={steps}", f"--batch_size={batch}",
                  f"--total_batch_tokens={batch * (1024 if cuda else 256)}")
        shape = "gpt2_124m shape, compiled, bf16" if cuda else "demo shape, compiled, fp32"
        row(f"train tok/s, {shape}, batch {batch}",
            f"{s['tok_per_s']:,.0f} tok/s, MFU {100 * s['tok_per_s'] * s['flops_per_token'] / peak:.1f}%")
    row("host syncs per optimizer step", syncs_per_step(data, cuda))
    model, _, _ = load_model(work / "train_b8" / "best.pt", "cuda" if cuda else "cpu")
    for rows in (1, 8, 16) if cuda else (1, 8):
        eager, _ = engine_tok_s(model, rows, False, 32 if quick else 128, repeats=2)
        graphs, _ = engine_tok_s(model, rows, True, 32 if quick else 128, repeats=2)  # each step reads its tokens: timed whole
        label = "CUDA graphs" if cuda else "compiled"
        row(f"engine decode, {rows} rows", f"eager {eager:,.0f} tok/s, {label} {graphs:,.0f} tok/s (x{graphs / eager:.2f})")
    int8 = work / "int8.pt"
    int8.unlink(missing_ok=True)
    command("convert.py", "int8", work / "train_b8" / "best.pt", int8)
    if cuda:
        r = command("sample.py", "--ckpt", int8, "--device", "cuda", "--max_new_tokens", "4", check=False)
        refused = r.returncode == 2 and "int8 runs on the CPU" in r.stderr
        row("int8 checkpoint on the GPU", "refused with the message" if refused else f"NOT refused: {r.stderr[-200:]}")
    else:
        row("int8 checkpoint on the GPU", NOT_RUN)
    if cuda:
        fsdp = ["--shard=fsdp", f"--max_steps={steps}", "--batch_size=8", "--total_batch_tokens=8192", "--compile=false"]
        straight = train(data, work / "fsdp_straight", cuda, *fsdp, f"--eval_interval={steps // 2}")
        train(data, work / "fsdp_resumed", cuda, *fsdp, f"--eval_interval={steps // 2}", f"--stop_after={steps // 2}")
        resumed = train(data, work / "fsdp_resumed", cuda, *fsdp, f"--eval_interval={steps // 2}", "--resume=true")
        same = resumed["val"]["loss"] == straight["val"]["loss"]
        row("FSDP on 1 GPU, stopped at half and resumed", f"val loss {resumed['val']['loss']:.4f} vs straight "
            f"{straight['val']['loss']:.4f} ({'identical' if same else 'DIFFERENT'})")
    else:
        row("FSDP on 1 GPU, stopped at half and resumed", NOT_RUN)
    print(f"\ndone in {time.time() - t0:.0f} s (torch {torch.__version__})")


if __name__ == "__main__":
    main()
