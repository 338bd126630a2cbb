"""
The checks of bench/gpu_check.py, one per process: `python bench/gpu_steps.py NAME --work DIR`
prints its rows as 'ROW<TAB>name<TAB>value' lines. A row that shows a defect starts with
"FAILED"; a row that needs CUDA on a machine without it says "not run (needs CUDA)".
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent  # the repository root: its commands and wikigpt/
sys.path.insert(0, str(ROOT))

from model import GPT, GPTConfig  # noqa: E402
from wikigpt.loss import NextTokenLoss  # noqa: E402
from wikigpt.run.runlog import SUMMARY  # noqa: E402
from wikigpt.run.throughput import peak_flops  # noqa: E402

NOT_RUN = "not run (needs CUDA)"
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
EAGER_WARNING = "torch.compile failed"  # train.py's line when it falls back to eager


def row(name: str, value: str):
    print(f"ROW\t{name}\t{value}", flush=True)


def command(*args, check=True) -> subprocess.CompletedProcess:
    # No timeout of its own: subprocess.run's kills the command alone, not what it started (the
    # compile workers). The command stays in the check's process group, which gpu_check.py kills
    # whole at the check's timeout.
    r = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if check and r.returncode:
        sys.exit(f"{args[0]} failed: {r.stderr.strip()[-1500:]}")
    return r


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process: a recompile (a guard failed, a new shape) adds
    one, as does a graph break's second graph. torch 2.13 sets no counters["recompiles"]: a count
    read from it was always 0."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def cudagraph_skips() -> int:
    """Compiled graphs inductor ran without a CUDA graph (reduce-overhead mode, CUDA only)."""
    from torch._dynamo.utils import counters
    return counters["inductor"]["cudagraph_skips"]


def gpt2_124m(vocab: int = 50304) -> GPTConfig:
    return GPTConfig(vocab_size=vocab, block_size=1024, n_layer=12, n_head=12, n_embd=768, arch="modern")


# ----------------------------------------------------------------------------------------

def nvidia_gpu_present() -> bool:
    """An NVIDIA GPU is on this machine, whatever torch sees: the driver's files, its device node,
    or `nvidia-smi -L` listing one (WSL2 and some containers have no /proc/driver/nvidia)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists():
        return True
    smi = shutil.which("nvidia-smi")
    try:
        return bool(smi) and "GPU " in subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False


def not_run() -> str:
    """The row of a check that needs CUDA, torch having none: FAILED where the machine has a GPU
    (a CPU build of torch, a driver it cannot use), else a CPU run's honest "not run"."""
    if nvidia_gpu_present():
        return "FAILED: not run, torch sees no GPU on this machine that has one (see the device row)"
    return NOT_RUN


def check_env(work: Path):
    if CUDA:
        name = torch.cuda.get_device_name(0)
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        row("device", f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
                      f"bf16 {'native' if native else 'emulated: training uses fp16 + GradScaler'}")
    elif nvidia_gpu_present():  # a CPU build of torch, a driver it cannot use, CUDA_VISIBLE_DEVICES=""
        row("device", f"FAILED: this machine has an NVIDIA GPU, torch {torch.__version__} sees none: "
                      "every CUDA row would say 'not run' (install a CUDA build of torch, check the driver)")
    else:
        row("device", f"cpu, torch {torch.__version__}: the CUDA rows are not run")
    peak, note = peak_flops(DEVICE, torch.bfloat16 if CUDA else torch.float32)
    row("peak used for MFU", f"{peak / 1e12:.1f} TFLOP/s ({note})")


def check_data(work: Path):
    data = work / "data"
    if not (data / "meta.json").is_file():
        command("prepare_wiki.py", "--out", data, "--tokenizer", "bpe:8192", "--val_fraction", "0.05", "--overwrite")
    meta = json.loads((data / "meta.json").read_text())
    row("dataset", f"{data}: the built-in sample, 8k BPE, {meta['splits']['train']['tokens']:,} train tokens "
                   "(no download)")


def check_model(work: Path):
    """gpt2_124m's shape on synthetic tokens: one compiled micro-step and a full step."""
    if not CUDA:
        return row("gpt2_124m shape, compiled, bf16", not_run())
    from torch._dynamo.utils import counters
    from wikigpt.optim import build_optimizers
    from wikigpt.config import TrainConfig

    cfg, B, accum = gpt2_124m(), 16, 4
    model = GPT(cfg).cuda()
    optimizers = build_optimizers(model, TrainConfig(), "cuda")
    compiled = torch.compile(NextTokenLoss(model))  # what train.py's step calls
    x = torch.randint(0, cfg.vocab_size, (B, cfg.block_size), device="cuda")  # (B, T)

    def micro():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = compiled(x, x) / accum
        loss.backward()

    def full():
        for _ in range(accum):
            micro()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for o in optimizers:
            o.step()
            o.zero_grad(set_to_none=True)
    counters.clear()
    t = time.perf_counter()
    full()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t
    after_first = graphs_compiled()
    full()  # warm
    torch.cuda.reset_peak_memory_stats()
    rates = {}
    for name, fn, tokens in (("micro-step", micro, B * cfg.block_size), ("full step", full, accum * B * cfg.block_size)):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        rates[name] = 3 * tokens / (time.perf_counter() - t)
    peak, _ = peak_flops("cuda", torch.bfloat16)
    flops = model.flops_per_token()
    row("gpt2_124m compile (first full step)", f"{compile_s:.0f} s")
    for name, rate in rates.items():
        row(f"gpt2_124m {name}, B={B}x1024, bf16", f"{rate:,.0f} tok/s, MFU {100 * rate * flops / peak:.1f}%")
    row("gpt2_124m peak memory", f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    breaks = sum(counters["graph_break"].values())
    recompiles = graphs_compiled() - after_first
    row("gpt2_124m graph breaks, graphs compiled after the first step",
        f"{'FAILED: ' if breaks or recompiles else ''}{breaks} graph breaks, {recompiles} new graphs")
    row("attention kernel", attention_kernel(model, x))


def attention_kernel(model: GPT, x) -> str:
    """Which SDPA kernel a forward ran, from the profiler's CUDA kernel names."""
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), profile(activities=[ProfilerActivity.CUDA]) as prof:
        model(x[:2])
        torch.cuda.synchronize()
    names = {e.key for e in prof.key_averages()}
    # cuDNN first: its kernels' names may say "flash" too
    for kernel, pattern in (("cuDNN attention", r"cudnn.*(fmha|attn|sdpa|flash)"), ("flash attention", r"flash"),
                            ("memory-efficient attention", r"fmha|efficient_attention|mem_eff"),
                            ):
        if any(re.search(pattern, n, re.I) for n in names):
            return kernel
    return "FAILED: the math fallback (no fused attention kernel ran)"


def train_run(work: Path, name: str, dtype: str, *extra, processes: int = 1) -> tuple[dict, str]:
    out = work / name
    shape = ["config/gpt2_124m.toml", "--batch_size=8", "--grad_accum=1"] if CUDA else ["config/demo_cpu.toml"]
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    r = command(*launch, "train.py", *shape, f"--data={work / 'data'}", f"--out_dir={out}", "--overwrite=true", "--max_steps=20",
                "--eval_interval=20", "--eval_tokens=16384", "--log_interval=5", "--warmup_steps=5",
                f"--dtype={dtype}", "--total_batch_tokens=0", *extra)
    return json.loads((out / SUMMARY).read_text()), r.stdout + r.stderr


def check_train(work: Path, dtype: str):
    label = f"train.py 20 steps, {dtype}" + (", gpt2_124m shape" if CUDA else ", demo shape")
    if dtype == "float16" and not CUDA:
        return row(label, not_run())
    summary, log = train_run(work, f"train_{dtype}", dtype, "--sync_check=true")
    peak, _ = peak_flops(DEVICE, torch.bfloat16 if CUDA else torch.float32)
    eager = EAGER_WARNING in log
    row(label, f"{'FAILED: fell back to eager; ' if eager else ''}{summary['tok_per_s']:,.0f} tok/s, "
               f"MFU {100 * summary['tok_per_s'] * summary['flops_per_token'] / peak:.1f}%, "
               f"val loss {summary['val']['loss']:.3f}")
    syncs = re.search(r"host syncs in step (\d+): (\d+)(.*)", log)
    if CUDA:
        row(f"host syncs in one train.py step, {dtype}",
            f"{'FAILED: ' if not syncs or syncs[2] != '0' else ''}"
            + (f"{syncs[2]} in step {syncs[1]}{syncs[3]}" if syncs else "train.py did not report them"))


def check_ddp(work: Path):
    """torchrun over 2 GPUs, as a multi-GPU user's first command runs: DDP over NCCL, compiled, the
    distributed Muon; the same weights on both at the end. NCCL takes one process per GPU: one GPU
    cannot run it."""
    label = "torchrun DDP on 2 GPUs, 20 steps, bf16"
    if not CUDA:
        return row(label, not_run())
    if torch.cuda.device_count() < 2:
        return row(label, "skipped: one GPU here (NCCL runs one process per GPU)")
    summary, log = train_run(work, "ddp", "bfloat16", processes=2)
    peak, _ = peak_flops(DEVICE, torch.bfloat16)
    same = "weights identical on all 2 processes: yes" in log
    row(label, f"{'FAILED: fell back to eager; ' if EAGER_WARNING in log else ''}"
               f"{'' if same else 'FAILED: the processes ended with different weights; '}{summary['tok_per_s']:,.0f} tok/s, "
               f"MFU {100 * summary['tok_per_s'] * summary['flops_per_token'] / (2 * peak):.1f}%, "
               f"val loss {summary['val']['loss']:.3f}")


def check_serve(work: Path):
    """serve.py with 8 concurrent streaming clients: every stream 200 with tokens."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    sys.path.insert(0, str(ROOT / "bench"))
    from bench import start_server, stream_chat

    ckpt = sft_checkpoint(work)
    server, url = start_server(str(ckpt), "--slots", "8")
    try:
        with ThreadPoolExecutor(8) as pool:
            t = time.perf_counter()
            results = list(pool.map(lambda i: stream_chat(url, "What is the capital of Andorra?", i, 64), range(8)))
            wall = time.perf_counter() - t
        compiled = httpx.get(url + "/health", timeout=10).json()["compiled"]  # else eager's speed is measured
    except Exception as e:
        return row("serve.py, 8 concurrent streams", f"FAILED: {type(e).__name__}: {str(e)[:200]}")
    finally:  # a server that ignores SIGTERM is killed, not left listening
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    ttft = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    ok = all(r[1] > 0 for r in results)
    eager = "FAILED: the decode step fell back to eager; " if CUDA and not compiled else ""
    row("serve.py, 8 concurrent streams", f"{eager}{'' if ok else 'FAILED: a stream without tokens; '}all 200, "
        f"TTFT median {1000 * ttft[4]:.0f} ms, max {1000 * ttft[-1]:.0f} ms; {tokens} tokens, "
        f"{1000 * wall * 8 / max(tokens, 1):.1f} ms per token per stream")


def sft_checkpoint(work: Path) -> Path:
    """A chat checkpoint (chat tokens in its tokenizer) of the check's own dataset: a few SFT steps."""
    out = work / "chat"
    if not (out / "best.pt").is_file():
        base = next(p for p in (work / "train_bfloat16" / "best.pt", work / "train_float32" / "best.pt") if p.is_file())
        command("chat_sft.py", "config/sft_demo.toml", f"--init_from={base}", f"--data={work / 'data'}",
                f"--out_dir={out}", "--overwrite=true", "--max_steps=4", "--eval_interval=4", "--grounded_qa=0", "--eot_check=0")
    return out / "best.pt"


def check_engine(work: Path):
    """The engine eager vs compiled (CUDA graphs on a GPU) at 1/8/16 rows, greedy tokens equal,
    a second generate() compiling nothing, and (on a GPU) a 48-slot server engine warming up."""
    from wikigpt.decoding.load import load_model
    from wikigpt.decoding.engine import Engine, Request
    from wikigpt.decoding.generate import generate, warmed_engine
    from wikigpt.decoding.sampling import SamplingParams

    ckpt = next(p for p in (work / "train_bfloat16" / "best.pt", work / "train_float32" / "best.pt") if p.is_file())
    model, tok, _ = load_model(ckpt, DEVICE)
    label = "CUDA graphs" if CUDA else "compiled"
    for rows in (1, 8, 16) if CUDA else (1, 8):
        row(*engine_decode_row(model, rows))
    # tokens equal only in float32 without TF32: in bf16 the compiled step keeps its fused steps'
    # intermediates in float32 where eager rounds each op's result, and greedy decoding flips at
    # near-ties (seen at token 23 on the CPU); the 16-bit speed is the rows above
    exact, _, _ = load_model(ckpt, DEVICE, "float32")
    torch.backends.cuda.matmul.allow_tf32 = False
    prompt, greedy = tok.encode("The history of"), SamplingParams(temperature=0)
    eager = list(generate(exact, prompt, 48, greedy, tok=tok))
    skips = cudagraph_skips()  # before the warm-up: inductor counts a skip when it compiles the graph
    engine = warmed_engine(exact, tok)  # the engine generate(compile=True) decodes with
    first = list(generate(exact, prompt, 48, greedy, tok=tok, compile=True))
    graphs = graphs_compiled()
    second = list(generate(exact, tok.encode("A second prompt"), 48, greedy, tok=tok, compile=True))
    more = graphs_compiled() - graphs
    # a chat's next turn: the keys of the last prompt and reply (written by the compiled steps) reused
    list(generate(exact, prompt, 48, greedy, tok=tok, compile=True, reuse=True))
    held, turn = len(engine.left.get(0, ())), prompt + first + tok.encode(" Then")
    reused = list(generate(exact, turn, 32, greedy, tok=tok, compile=True, reuse=True))
    whole = list(generate(exact, turn, 32, greedy, tok=tok))
    # each token's logprob as the compiled steps keep its logits (under CUDA graphs, a static buffer)
    asked = [Request(prompt, 16, greedy, logprobs=5) for _ in range(2)]
    # OpenAI's penalties and a bias, read from the static buffers of counts and biases
    penalised = SamplingParams(temperature=0, frequency_penalty=0.8, presence_penalty=0.4, logit_bias={eager[0]: -100})
    pushed = [Request(prompt, 24, penalised) for _ in range(2)]
    eager_engine = Engine(exact, 1, tok, compile=False)
    for e, reqs in zip((engine, eager_engine), zip(asked, pushed)):
        for req in reqs:
            e.add(req)
            while e.active:
                e.step()
    worst = max(abs(a[0] - b[0]) for a, b in zip(*(r.token_logprobs for r in asked)))
    torch.backends.cuda.matmul.allow_tf32 = True  # as load_model set it: the rows below measure speed
    not_compiled = not_compiled_why(engine, cudagraph_skips() - skips)  # else eager was compared with eager
    same = first == eager
    row("engine greedy tokens, eager vs " + label, f"{not_compiled}{'equal' if same else 'FAILED: different'} "
                                                   "(48 tokens, float32)")
    row("two generate() calls after warm-up", f"{not_compiled}{'' if more == 0 and second else 'FAILED: '}"
                                              f"{more} new graphs")
    row("a chat's next turn reusing its keys, vs prefilled whole", f"{not_compiled}"
        f"{'equal' if reused == whole and held == len(prompt) + len(first) - 1 else 'FAILED: different'} (greedy, "
        f"{held} of {len(turn)} prompt tokens reused, float32)")
    same = asked[0].tokens == asked[1].tokens and len(asked[0].token_logprobs) == 16 and worst < 1e-3
    row("token logprobs, eager vs " + label, f"{not_compiled}{'equal' if same else 'FAILED: different'} "
                                             f"(16 tokens, worst {worst:.1e}, float32)")
    same = pushed[0].tokens == pushed[1].tokens and eager[0] not in pushed[0].tokens and len(pushed[0].tokens) == 24
    row("presence/frequency penalties and logit_bias, eager vs " + label,
        f"{not_compiled}{'equal' if same else 'FAILED: different'} (24 greedy tokens, float32)")
    if not CUDA:
        return row("48-slot server engine warm-up", not_run())
    skips, t = cudagraph_skips(), time.perf_counter()
    engine = Engine(model, 48, tok, compile=True)
    engine.warm_up()
    row("48-slot server engine warm-up", f"{not_compiled_why(engine, cudagraph_skips() - skips)}"
        f"{engine.graph_count} graphs in {time.perf_counter() - t:.0f} s")


def engine_decode_row(model: GPT, rows: int) -> tuple[str, str]:
    """The engine's decode tokens/s at `rows` rows, eager and compiled: FAILED if the compiled
    engine fell back to eager (or, on CUDA, ran a graph without a CUDA graph), since its speed
    would then be eager's under another name."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_decode import engine_tok_s

    eager, _, _ = engine_tok_s(model, rows, False, 64, repeats=2)
    skips = cudagraph_skips()
    graphs, warm, engine = engine_tok_s(model, rows, True, 64, repeats=2)
    label = "CUDA graphs" if CUDA else "compiled"
    return (f"engine decode, {rows} rows", f"{not_compiled_why(engine, cudagraph_skips() - skips)}eager "
            f"{eager:,.0f} tok/s, {label} {graphs:,.0f} tok/s (x{graphs / eager:.2f}; warm-up {warm:.0f} s)")


def not_compiled_why(engine, skips: int) -> str:
    """'' if the engine's step ran compiled (as CUDA graphs on a GPU), else a FAILED prefix."""
    if not engine.compiled:
        return "FAILED: the step fell back to eager; "
    if CUDA and skips:
        return f"FAILED: {skips} graphs ran without a CUDA graph; "
    return ""


def fsdp_dtypes(cfg: GPTConfig, device: str, backend: str) -> dict:
    """{"stream": the first block's input dtype, "weight": its weights'} in one step of an FSDP
    model under a bf16 policy, in a process group of one. The group is made without setting
    RANK / WORLD_SIZE in os.environ: the train.py runs started after it inherited them, took
    themselves for torchrun's, and stopped at the LOCAL_RANK torchrun would also have set."""
    import torch.distributed as dist
    from wikigpt.run import fsdp
    from wikigpt.run.dist import free_port

    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        model = fsdp.shard_model(GPT(cfg).to(device), device, 1, torch.bfloat16)
        seen = {}

        def first_block(module, args):  # returns None: a pre-hook's result would replace the input
            seen.setdefault("stream", args[0].dtype)

        def first_matmul(module, args):
            seen.setdefault("weight", module.weight.dtype)
        model.blocks[0].register_forward_pre_hook(first_block)
        model.blocks[0].mlp.c_fc.register_forward_pre_hook(first_matmul)
        x = torch.randint(0, cfg.vocab_size, (2, cfg.block_size), device=device)
        with torch.autocast(device, dtype=torch.bfloat16):
            NextTokenLoss(model)(x, x).backward()  # as train.py's step: hidden_states, then the fused loss
    finally:
        dist.destroy_process_group()
    return seen


def check_fsdp(work: Path):
    """FSDP on one GPU: the first block's input is float32 (as under DDP) with bf16 blocks, and
    a run stopped at half and resumed ends where a straight run does (within 1e-3: attention's
    backward adds with atomics, so two runs are close, not bitwise equal)."""
    if not CUDA:
        return row("FSDP on 1 GPU", not_run())
    seen = fsdp_dtypes(gpt2_124m(), "cuda", "nccl")
    right = seen == {"stream": torch.float32, "weight": torch.bfloat16}
    row("FSDP residual stream / block weights", f"{'' if right else 'FAILED: '}{seen.get('stream')} / {seen.get('weight')}")
    # compiled, as --shard=fsdp trains by default: a fallback to eager fails the row
    runs = ["--shard=fsdp", "--max_steps=20", "--eval_interval=10", "--batch_size=8", "--grad_accum=1",
            "--total_batch_tokens=0"]
    straight, logs = train_run(work, "fsdp_straight", "bfloat16", *runs)
    _, first_half = train_run(work, "fsdp_resumed", "bfloat16", *runs, "--stop_after=10")
    resumed, second_half = train_run(work, "fsdp_resumed", "bfloat16", *runs, "--resume=true")
    eager = any(EAGER_WARNING in log for log in (logs, first_half, second_half))
    gap = abs(resumed["val"]["loss"] - straight["val"]["loss"])
    row("FSDP on 1 GPU, compiled, stopped at step 10 and resumed", f"{'FAILED: fell back to eager; ' if eager else ''}"
        f"{'' if gap < 1e-3 else 'FAILED: '}val loss "
        f"{resumed['val']['loss']:.4f} vs straight {straight['val']['loss']:.4f} (gap {gap:.1e}, bound 1e-3)")


def check_int8(work: Path):
    if not CUDA:
        return row("int8 checkpoint on the GPU", not_run())
    base = work / "train_bfloat16" / "best.pt"
    int8 = work / "int8.pt"
    int8.unlink(missing_ok=True)
    command("convert.py", "int8", base, int8)
    r = command("sample.py", "--ckpt", int8, "--device", "cuda", "--max_new_tokens", "4", check=False)
    refused = r.returncode == 2 and "int8" in r.stderr and "Traceback" not in r.stderr
    row("int8 checkpoint on the GPU", "refused with a clear message" if refused else f"FAILED: {r.stderr[-200:]}")


CHECKS = {"env": check_env, "data": check_data, "model": check_model,
          "train_bf16": lambda w: check_train(w, "bfloat16" if CUDA else "float32"),
          "train_fp16": lambda w: check_train(w, "float16"), "engine": check_engine, "serve": check_serve,
          "ddp": check_ddp, "fsdp": check_fsdp,
          "int8": check_int8}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("check", choices=sorted(CHECKS))
    p.add_argument("--work", required=True)
    args = p.parse_args()
    CHECKS[args.check](Path(args.work))


if __name__ == "__main__":
    main()
