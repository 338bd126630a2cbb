"""
Benchmarks on this machine, printed as one table (ratios, not absolute claims):

  1. training tokens/s and MFU (against a matmul peak measured here) for a fixed model:
     6 layers, 6 heads, width 384, context 256, batch 8, fp32; with an 8k BPE and GPT-2's vocab,
     eager and torch.compile, with AdamW (Muon's throughput is a row of its own);
  2. generation: 256 new tokens with and without the KV cache, and the per-token latency
     at context 1 vs 256;
  3. the gpt2 vs modern presets, each with AdamW and Muon: val bits-per-byte after the same
     wall-clock budget; and on the demo's own config, the modern preset's ReLU^2 vs SwiGLU MLP;
  4. serving: serve.py on a chat checkpoint, 1/4/8/16 concurrent streaming clients, time to
     first token and aggregate tokens/s, with continuous batching and with batching off.

    python bench/bench.py                          # about 25 minutes on a 2-core CPU
    python bench/bench.py --budget 60              # shorter arch comparison
    python bench/bench.py --only serve --ckpt out/chat/best.pt
    python bench/bench.py --only mlp --budget 150  # sections: train, generate, presets, mlp, dtypes, decode, lora, prune, serve
Datasets are built from the built-in Wikipedia sample into data/bench_* when missing.
"""
import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent  # the repository root: its commands and wikigpt/
sys.path.insert(0, str(ROOT))

from wikigpt.checkpoint import load_checkpoint
from wikigpt.prep.data import load_dataset
from model import GPT, GPTConfig
from wikigpt.run.throughput import measure_matmul_flops
from wikigpt.run.dist import Dist
from wikigpt.batches import val_windows
from wikigpt.config import TrainConfig
from wikigpt.run.runlog import SUMMARY

FIXED = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=8, dtype="float32",
             eval_interval=10**9, eval_tokens=8192, warmup_steps=5, device="cpu")
ARCH_LR = {"gpt2": 1e-3, "modern": 3e-3}  # best of 1e-3 / 3e-3 for each preset with AdamW


def dataset(tokenizer: str, name: str):
    path = Path("data") / name
    if not (path / "meta.json").is_file():
        subprocess.run([sys.executable, ROOT / "prepare_wiki.py", "--out", str(path), "--tokenizer", tokenizer,
                        "--val_fraction", "0.05", "--overwrite"], check=True)
    return load_dataset(path)


def run(cfg: TrainConfig, ds, quiet=True) -> dict:
    """One run of train.py, as a user runs it; its output is kept out of the table. Returns the
    run's summary (train.py writes it to out_dir/summary.json)."""
    args = [f"--{k}={v}" for k, v in asdict(replace(cfg, overwrite=True)).items()]  # the bench's own runs, each in place of the last
    r = subprocess.run([sys.executable, ROOT / "train.py", *args], capture_output=quiet, text=True)
    if r.returncode:
        sys.exit(f"train.py failed:\n{(r.stderr or '')[-2000:]}")
    return json.loads((Path(cfg.out_dir) / SUMMARY).read_text())


def bench_training(ds, compile: bool, steps: int, out: str, optimizer="adamw") -> dict:
    cfg = TrainConfig(**FIXED, data=str(ds.path), out_dir=out, max_steps=steps, log_interval=3,
                      compile=compile, optimizer=optimizer)
    return run(cfg, ds)


@torch.no_grad()
def bench_generation(vocab_size: int, new_tokens=256) -> dict:
    """Latency of each new token from a 1-token prompt, with and without the KV cache. The
    context is 512 here so that 256 new tokens never hit the window limit."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=512, n_layer=6, n_head=6, n_embd=384)).eval()
    result = {}
    for use_cache in (True, False):
        stamps = [time.perf_counter()]
        for _ in model.generate([0], new_tokens, temperature=1.0, seed=0, use_cache=use_cache):
            stamps.append(time.perf_counter())
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        result[use_cache] = {"tok_s": new_tokens / (stamps[-1] - stamps[0]),
                             "ms_ctx1": 1000 * sum(gaps[1:9]) / 8,  # tokens 2-9: context ~1
                             "ms_ctx256": 1000 * sum(gaps[-8:]) / 8}  # the last ones: ~256
    return result


def start_server(ckpt: str, *extra, stderr=None) -> tuple[subprocess.Popen, str]:
    """serve.py as a real process on a free port of 127.0.0.1: (the process, its URL), once it
    listens. `extra`: more serve.py options; stderr: where its log goes (None: here)."""
    proc = subprocess.Popen([sys.executable, ROOT / "serve.py", "--ckpt", ckpt, "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=stderr, text=True)
    line = proc.stdout.readline()  # its first line names the URL, once the socket is bound
    if " on http://" not in line:
        proc.wait()
        sys.exit(f"serve.py did not start (exit code {proc.returncode}): {line.strip()}")
    return proc, line.split(" on ")[1].split()[0]


def stream_chat(url: str, question: str, seed: int, max_tokens: int) -> tuple[float, int]:
    """One streaming chat request: (seconds to the first token, tokens generated). A refusal
    raises httpx.HTTPStatusError."""
    import httpx

    body = {"messages": [{"role": "user", "content": question}], "stream": True, "seed": seed,
            "max_tokens": max_tokens, "stream_options": {"include_usage": True}}
    t0, ttft, tokens = time.perf_counter(), None, 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if ttft is None and '"content": "' in line and '"content": ""' not in line:
                ttft = time.perf_counter() - t0
            if '"usage"' in line:
                tokens = int(line.split('"completion_tokens": ')[1].split(",")[0])
    return ttft or time.perf_counter() - t0, tokens


QUESTIONS = ["What is a river?", "Tell me about Aristotle.", "你好", "How are you?"]


def serve_client(job) -> list[tuple[float, int]]:
    """One client: `rounds` streaming requests back to back; [(TTFT, tokens)]."""
    url, i, rounds, max_tokens = job
    return [stream_chat(url, QUESTIONS[(i + r) % 4], seed=100 * i + r, max_tokens=max_tokens) for r in range(rounds)]


def bench_serve(ckpt: str, slots: int, clients: int, rounds=3, max_tokens=64, extra=()) -> dict:
    """serve.py as a real process on 127.0.0.1; `clients` client processes (as real clients
    are: separate programs, not threads sharing one interpreter) each send `rounds` streaming
    requests back to back. Aggregate tokens/s = all tokens / wall time."""
    import multiprocessing

    proc, url = start_server(ckpt, "--slots", str(slots), *extra)
    try:
        stream_chat(url, "Hello!", 0, 8)  # warm-up
        with multiprocessing.get_context("fork").Pool(clients) as pool:
            pool.map(abs, range(clients))  # the client processes exist before the clock starts
            t0 = time.perf_counter()
            results = [x for per_client in pool.map(serve_client, [(url, i, rounds, max_tokens) for i in range(clients)])
                       for x in per_client]
            wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait()
    ttfts, tokens = [t for t, _ in results], [n for _, n in results]
    q = statistics.quantiles(ttfts, n=20) if len(ttfts) > 1 else ttfts * 19
    return {"tok_s": sum(tokens) / wall, "p50": statistics.median(ttfts), "p95": q[18], "tokens": sum(tokens)}


def serve_rows(ckpt: str) -> list:
    rows, base = [], {}
    for slots, label, extra in ((1, "batching off", ()), (16, "continuous batching", ()),
                                (16, "continuous batching, compiled step", ("--compile", "on"))):
        for clients in (1, 4, 8, 16):
            r = bench_serve(ckpt, slots, clients, extra=extra)
            base.setdefault(label, r["tok_s"])
            rows.append((f"serve, {label}, {clients:2d} streaming clients",
                         f"{r['tok_s']:,.0f} tok/s aggregate (x{r['tok_s'] / base[label]:.2f} of 1 client), "
                         f"TTFT p50 {1000 * r['p50']:.0f} ms, p95 {1000 * r['p95']:.0f} ms"))
    return rows


def train_rows(args, bpe, gpt2, peak) -> list:
    rows, speed = [], {}
    for ds, vocab in ((bpe, "8k BPE"), (gpt2, "GPT-2 50k")):
        for compile in (False, True):
            r = bench_training(ds, compile, args.steps, f"out/bench_{vocab[:3]}_{compile}")
            speed[(vocab, compile)] = r["tok_per_s"]
            mfu = r["tok_per_s"] * r["flops_per_token"] / peak  # against the peak measured above
            rows.append((f"train modern, {vocab} vocab, {'compiled' if compile else 'eager'}",
                         f"{r['tok_per_s']:,.0f} tok/s, MFU {100 * mfu:.1f}%"))
    for vocab in ("8k BPE", "GPT-2 50k"):
        rows.append((f"torch.compile speed-up, {vocab}", f"x{speed[(vocab, True)] / speed[(vocab, False)]:.2f}"))
    r = bench_training(bpe, True, args.steps, "out/bench_muon", optimizer="muon")
    rows.append(("train modern, 8k BPE vocab, compiled, Muon optimizer",
                 f"{r['tok_per_s']:,.0f} tok/s ({r['tok_per_s'] / speed[('8k BPE', True)]:.2f}x AdamW's)"))
    return rows


def generation_rows(bpe) -> list:
    rows, gen = [], bench_generation(bpe.tokenizer.n_vocab)
    for use_cache in (True, False):
        g = gen[use_cache]
        rows.append((f"generate 256 tokens, {'KV cache' if use_cache else 'no cache'}",
                     f"{g['tok_s']:,.1f} tok/s; {g['ms_ctx1']:.1f} ms/token at ctx 1, "
                     f"{g['ms_ctx256']:.1f} ms/token at ctx 256"))
    rows.append(("KV cache speed-up (256 tokens)", f"x{gen[True]['tok_s'] / gen[False]['tok_s']:.1f}"))
    return rows


def budget_run(base: TrainConfig, ds, budget: float) -> dict:
    """Train for `budget` seconds; the cosine schedule is planned for the steps this config can
    afford at its own measured speed (so every contender finishes its schedule in time)."""
    probe = run(replace(base, max_steps=8, log_interval=2, warmup_steps=2, eval_interval=10**9), ds)
    steps = max(20, int(budget * probe["tok_per_s"] / (base.batch_size * base.block_size)))
    return run(replace(base, max_steps=steps, warmup_steps=steps // 20, max_time=budget,
                       eval_interval=steps, eval_tokens=32768), ds)


def preset_rows(args, bpe) -> list:
    rows = []
    for optimizer in ("adamw", "muon"):
        for arch in ("gpt2", "modern"):
            base = TrainConfig(**FIXED, data=str(bpe.path), out_dir=f"out/bench_arch_{arch}",
                               arch=arch, optimizer=optimizer, lr=ARCH_LR[arch], mlp="gelu" if arch == "gpt2" else "relu2")
            r = budget_run(base, bpe, args.budget)
            rows.append((f"{arch} preset + {optimizer}, {args.budget:.0f} s ({r['step']} steps)",
                         f"val bpb {r['val']['bpb']:.4f} (val loss {r['val']['loss']:.3f})"))
    return rows


def mlp_rows(args) -> list:
    """The modern preset's MLP on the demo itself (config/demo_cpu.toml, the demo's data and
    size, Muon), same wall-clock budget: ReLU^2 against SwiGLU (which exports exactly to
    transformers' Qwen3 layout, see export.py)."""
    from wikigpt.cli import load_config

    ds = dataset("bpe:8192", "demo")
    rows = []
    for mlp in ("relu2", "swiglu"):
        base = load_config(TrainConfig, ["config/demo_cpu.toml", f"--mlp={mlp}", "--out_dir=out/bench_mlp",
                                         "--compile=true", "--log_interval=10", "--device=cpu"])
        r = budget_run(base, ds, args.budget)
        rows.append((f"demo config, modern + {mlp} MLP, {args.budget:.0f} s ({r['step']} steps, "
                     f"{r['tok_per_s']:,.0f} tok/s)", f"val bpb {r['val']['bpb']:.4f} (val loss {r['val']['loss']:.3f})"))
    return rows


@torch.no_grad()
def decode_tok_s(model, batch: int, new_tokens=64, prompt_len=16) -> float:
    """Greedy decoding with the KV cache: batch 1 through model.generate, batch 8 through the
    serving engine (one batched forward per step)."""
    from wikigpt.decoding.generate import generate_batch
    from wikigpt.decoding.sampling import SamplingParams

    prompts = [[(7 * i + j) % 200 + 1 for j in range(prompt_len)] for i in range(batch)]
    greedy = SamplingParams(temperature=0.0, repetition_penalty=1.0)
    list(model.generate(prompts[0], 4, temperature=0.0))  # warm-up: first-call allocations
    t0 = time.perf_counter()
    if batch == 1:
        n = len(list(model.generate(prompts[0], new_tokens, temperature=0.0)))
    else:
        n = sum(map(len, generate_batch(model, _NoTok(), prompts, new_tokens, greedy, n_slots=batch)))
    return n / (time.perf_counter() - t0)


class _NoTok:
    """What generate_batch needs of a tokenizer, for token-count benchmarks: no stop token."""
    stops: set = set()

    def utf8_table(self, size):
        return torch.zeros(8, size, dtype=torch.long)  # every id allowed, the decoder stays in state 0


def dtype_rows(args) -> list:
    """Decode speed and val bits/byte for float32, bfloat16 and int8 weights, side by side: the
    demo's chat model and a 6x384 model with GPT-2's 50k vocabulary (random weights: speed only)."""
    from wikigpt.decoding.load import load_model

    rows = []
    models = {}
    if Path(args.ckpt).is_file():
        models["demo chat model"] = lambda dtype: load_model(args.ckpt, "cpu", dtype)[0]

    def big(dtype):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=50304, block_size=256, n_layer=6, n_head=6, n_embd=384, mlp="swiglu")).eval()
        if dtype == "int8":
            from wikigpt.adapt.quant import quantize_model
            return quantize_model(model)
        return model.to(getattr(torch, dtype))
    models["6x384, GPT-2 vocab"] = big
    for name, make in models.items():
        base = {}
        for dtype in ("float32", "bfloat16", "int8"):
            model = make(dtype)
            speeds = {b: decode_tok_s(model, b) for b in (1, 8)}
            base.setdefault("s", speeds)
            rows.append((f"decode with KV cache, {name}, {dtype}",
                         "; ".join(f"batch {b}: {s:,.0f} tok/s (x{s / base['s'][b]:.2f})" for b, s in speeds.items())))
    if "demo chat model" in models:
        ds = load_dataset(load_model(args.ckpt, "cpu")[2]["data"] or "data/demo")
        from wikigpt.loss_eval import evaluate, token_bytes_table
        bpb = {}
        for dtype in ("float32", "bfloat16", "int8"):
            model, tok, _ = load_model(args.ckpt, "cpu", dtype)
            x, y = val_windows(ds.val, model.cfg.block_size, 32768)
            bpb[dtype] = evaluate(model, x, y, token_bytes_table(tok, model.cfg.padded_vocab, "cpu"), 16,
                                  Dist(), contextlib.nullcontext())["bpb"]
            rows.append((f"val bits/byte, demo chat model, {dtype}",
                         f"{bpb[dtype]:.4f} ({100 * (bpb[dtype] / bpb['float32'] - 1):+.2f}% vs float32)"))
    return rows


def lora_rows(args) -> list:
    """The demo's chat SFT, full vs LoRA (rank 16), same steps, as real processes: held-out
    assistant loss, tokens/s, peak memory, checkpoint size."""
    import re

    rows, sft = [], {}
    base_ckpt = "out/demo/best.pt"
    if not Path(base_ckpt).is_file():
        return [("LoRA vs full SFT", f"skipped: no {base_ckpt} (run make demo first)")]
    lora = [f"--lora_rank={args.lora_rank}", f"--lora_alpha={2 * args.lora_rank}", "--lr=1e-2"]
    for name, extra in (("full SFT", []), (f"LoRA r={args.lora_rank}", lora)):
        out = f"out/bench_sft_{'lora' if extra else 'full'}"
        r = subprocess.run(["/usr/bin/time", "-f", "peak_rss_kb %M", sys.executable, "chat_sft.py", "config/sft_demo.toml",
                            f"--init_from={base_ckpt}", f"--out_dir={out}", f"--max_steps={args.sft_steps}",
                            f"--eval_interval={args.sft_steps}", "--max_time=0", "--overwrite=true", *extra],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(r.stderr[-2000:])
        loss = float(re.findall(r"val loss (\d+\.\d+)", r.stdout)[-1])
        tok_s = [float(v.replace(",", "")) for v in re.findall(r"\| ([\d,]+) tok/s", r.stdout)][1:]
        rss = int(re.search(r"peak_rss_kb (\d+)", r.stderr).group(1)) / 1e6
        size = Path(out, "best.pt").stat().st_size / 1e6
        sft[name] = loss
        rows.append((f"chat SFT on the demo, {name}, {args.sft_steps} steps",
                     f"held-out assistant loss {loss:.3f}" + (f" ({100 * (loss / sft['full SFT'] - 1):+.1f}% vs full)" if extra else "")
                     + f"; {statistics.mean(tok_s):,.0f} tok/s; peak RSS {rss:.2f} GB; best.pt {size:.1f} MB"))
    weights_mb = 4 * GPT(GPTConfig(**load_checkpoint(base_ckpt)["model_config"])).n_params() / 1e6
    rows.append(("LoRA adapter file vs the model's float32 weights", f"{size:.1f} MB / {weights_mb:.1f} MB = {size / weights_mb:.1%}"))
    return rows


# The prune section's recipe (docs/prune.md): the demo chat model's 4 layers -> 2, then healing
# split between distillation on the Wikipedia text and on the dialogues, the teacher in both.
# Healing a trained model wants gentler steps than the configs' (which start from random
# weights): 30 distillation steps from the pruned model reached val bpb 2.246 with these, 2.291
# with the demo config's lr 3e-3 / muon_lr 0.02, 2.257 with 3e-4 / 0.002 (2.306 before).
PRUNE_SHAPE = ["--keep_layers", "2"]
HEAL = (("train.py", "config/demo_cpu.toml", 0.5), ("chat_sft.py", "config/sft_demo.toml", 0.5))
HEAL_LR = ["--lr=1e-3", "--muon_lr=0.005"]
DEMO_STEP_TOKENS = 16 * 256  # both demo configs: batch 16 x context 256


def timed_phase(script: str, args: list, budget: float, out: Path) -> Path:
    """One run of `script` for `budget` seconds, its LR schedule sized to the steps a probe run
    measured it can afford (as budget_run does); returns its last checkpoint."""
    def go(where: Path, *more):
        r = subprocess.run([sys.executable, ROOT / script, *args, f"--out_dir={where}", "--overwrite=true", *more],
                           capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{script} failed:\n{r.stderr[-2000:]}")
        return json.loads((where / SUMMARY).read_text())
    probe = go(out.with_name(out.name + "_probe"), "--max_steps=8", "--warmup_steps=2", "--eval_interval=1000",
               "--eval_tokens=4096", "--log_interval=2", "--max_time=0")
    steps = max(20, int(budget * probe["tok_per_s"] / DEMO_STEP_TOKENS))
    go(out, f"--max_steps={steps}", f"--warmup_steps={max(2, steps // 20)}", f"--eval_interval={steps}",
       f"--max_time={budget}")
    return out / "last.pt"


def heal(init: Path, teacher: str | None, budget: float, out: Path) -> Path:
    """HEAL's phases one after the other from `init`, with the teacher or (None) without."""
    ckpt = init
    for i, (script, config, share) in enumerate(HEAL):
        args = [config, f"--init_from={ckpt}", "--data=data/demo"] + ([f"--teacher={teacher}", *HEAL_LR] if teacher else [])
        args += ["--eot_check=0", "--qa_eval=0"] if script == "chat_sft.py" else []
        ckpt = timed_phase(script, args, share * budget, out / f"phase{i}")
    return ckpt


def prune_rows(args) -> list:
    """Structured pruning + distillation on the demo chat model: the teacher, the pruned model
    as prune.py writes it, that model after args.heal_budget s of distillation, and the same
    shape from random weights, trained the same way for the same time without a teacher."""
    import shutil

    from wikigpt.checkpoint import build_checkpoint, save_checkpoint
    from wikigpt.decoding.load import load_model

    teacher = args.ckpt
    if not Path(teacher).is_file():
        return [("pruning + distillation", f"skipped: no {teacher} (run make demo first)")]
    out = Path("out/bench_prune")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    r = subprocess.run([sys.executable, ROOT / "prune.py", "--ckpt", teacher, "--out", out / "pruned.pt",
                        *PRUNE_SHAPE], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"prune.py failed:\n{r.stderr[-2000:]}")
    pruned = load_checkpoint(out / "pruned.pt")
    torch.manual_seed(1337)  # the from-scratch contender: the same shape, fresh weights
    fresh = GPT(GPTConfig(**pruned["model_config"]))
    save_checkpoint(out / "random.pt", build_checkpoint("pretrain", fresh.state_dict(), pruned["model_config"],
                                                        pruned["tokenizer"]))
    shutil.copy(heal(out / "pruned.pt", teacher, args.heal_budget, out / "healing"), out / "healed.pt")
    shutil.copy(heal(out / "random.pt", None, args.heal_budget, out / "scratch_run"), out / "scratch.pt")
    names = {teacher: "teacher (demo chat model)", out / "pruned.pt": f"pruned {' '.join(PRUNE_SHAPE)}, no healing",
             out / "healed.pt": f"pruned + {args.heal_budget:.0f} s distillation",
             out / "scratch.pt": f"same shape from scratch, {args.heal_budget:.0f} s"}
    r = subprocess.run([sys.executable, ROOT / "eval.py", *(a for p in names for a in ("--ckpt", str(p))),
                        "--data", "data/demo", "--out", str(out / "report.json"), "--max_examples", "20"],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"eval.py failed:\n{r.stderr[-2000:]}")
    metric = {m["metric"]: m["values"] for m in json.loads((out / "report.json").read_text())["rows"]}
    bpb, assistant = metric["val bits per byte"], metric["held-out assistant-token loss"]
    models = [load_model(path, "cpu")[0] for path in names]
    speed = [{1: 0.0, 8: 0.0} for _ in models]
    for _ in range(8):  # the models take turns, best of 8 each: a busy moment slows one round, not one model
        for model, best in zip(models, speed):
            for b in best:
                best[b] = max(best[b], decode_tok_s(model, b))
    rows = [(f"prune: {name}", f"{model.n_params() / 1e6:.2f}M params; decode {s[1]:,.0f} / {s[8]:,.0f} tok/s "
             f"(batch 1 / 8); val bpb {bpb[i]:.4f}; held-out assistant loss {assistant[i]:.3f}")
            for i, (name, model, s) in enumerate(zip(names.values(), models, speed))]
    rows.append(("prune: targets, healed vs teacher and vs scratch",
                 f"decode x{speed[2][1] / speed[0][1]:.2f} / x{speed[2][8] / speed[0][8]:.2f} (batch 1 / 8; target "
                 f">= 1.5); val bpb {100 * (bpb[2] / bpb[0] - 1):+.1f}% (target <= +5%); {bpb[2]:.4f} vs "
                 f"{bpb[3]:.4f} from scratch (target: lower)"))
    return rows


SECTIONS = ("train", "generate", "presets", "mlp", "dtypes", "decode", "lora", "prune", "serve")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12, help="training steps per throughput run")
    p.add_argument("--budget", type=float, default=120, help="seconds per run in the preset and MLP comparisons")
    p.add_argument("--only", default="", choices=("", *SECTIONS), help="one section")
    p.add_argument("--ckpt", default="out/chat/best.pt", help="chat checkpoint for the serve and dtype benchmarks")
    p.add_argument("--sft_steps", type=int, default=100, help="SFT steps of each run in the LoRA comparison")
    p.add_argument("--lora_rank", type=int, default=16, help="adapter rank in the LoRA comparison")
    p.add_argument("--heal_budget", type=float, default=120, help="prune section: seconds of healing, and of training from scratch")
    args = p.parse_args()
    wanted = [args.only] if args.only else SECTIONS
    rows = []
    if {"train", "generate", "presets"} & set(wanted):
        bpe = dataset("bpe:8192", "bench_bpe8k")
    if "train" in wanted:
        peak = measure_matmul_flops("cpu", torch.float32, reps=20)
        rows.append(("fp32 matmul peak (2048x2048, best of 21)", f"{peak / 1e9:.1f} GFLOP/s"))
        rows += train_rows(args, bpe, dataset("gpt2", "bench_gpt2"), peak)
    if "generate" in wanted:
        rows += generation_rows(bpe)
    if "presets" in wanted:
        rows += preset_rows(args, bpe)
    if "mlp" in wanted:
        rows += mlp_rows(args)
    if "dtypes" in wanted:
        rows += dtype_rows(args)
    if "decode" in wanted:
        from bench_decode import decode_rows  # bench/, beside this file

        rows += decode_rows(args.ckpt)  # without the checkpoint: the random model's rows, and a note
    if "lora" in wanted:
        rows += lora_rows(args)
    if "prune" in wanted:
        rows += prune_rows(args)
    if "serve" in wanted:
        if Path(args.ckpt).is_file():
            rows += serve_rows(args.ckpt)
        else:
            rows.append(("serve", f"skipped: no chat checkpoint at {args.ckpt} (run make demo first)"))
    print_table(rows)


def print_table(rows):
    width = max(len(r[0]) for r in rows)
    print(f"\n{'benchmark':{width}s} | result\n{'-' * width}-|-{'-' * 60}")
    for name, value in rows:
        print(f"{name:{width}s} | {value}")


if __name__ == "__main__":
    main()
