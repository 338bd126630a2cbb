"""prune.py and distillation: the surgery is exact, the importance is measured, pruned
checkpoints are ordinary ones, the KD loss is the formula, alpha = 0 is ordinary training, and
healing a pruned model by distillation works (and resumes exactly, on 1 process or 2)."""
import json
import math
import re
import subprocess
import sys
from dataclasses import asdict

import httpx
import pytest
import torch
from conftest import TINY, run_cli
from live_server import LiveServer

import prune as prune_cmd
from model import GPT, GPTConfig
from wikigpt.loss import linear_cross_entropy
from wikigpt.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
from wikigpt.decoding.load import load_model
from wikigpt.cli import UsageError, load_config
from wikigpt.chat.sft_config import SFTConfig
from wikigpt.config import TrainConfig
from wikigpt.adapt.distill import distill_cross_entropy
from wikigpt.decoding.generate import generate_batch
from wikigpt.adapt.prune import Plan, choose, choose_layers, mean_loss, mean_loss_masked, masked, prune, unit_scores
from wikigpt.decoding.sampling import SamplingParams


def random_model(arch="modern", mlp=None, n_layer=3):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=n_layer, n_head=4, n_embd=32, arch=arch, mlp=mlp))
    with torch.no_grad():
        for p in model.parameters():  # the modern preset starts its projections at 0: make every unit matter
            p.normal_(0, 0.2)
    return model.eval()


SOME_PLAN = Plan(layers=[0, 2], heads=[[1, 3], [0, 2]], units=[[0, 5, 9, 30], [1, 2, 3, 60]])


# ----- the surgery

@pytest.mark.parametrize("arch,mlp", [("modern", "swiglu"), ("modern", "relu2"), ("gpt2", "gelu")])
def test_pruning_nothing_gives_identical_logits_and_config(arch, mlp):
    model = random_model(arch, mlp)
    same = prune(model, Plan.everything(model))
    x = torch.randint(0, 300, (2, 32))
    assert asdict(same.cfg) == asdict(model.cfg)  # head_dim and mlp_hidden stay 0: the old shape
    assert torch.equal(same.hidden_states(x), model.hidden_states(x))


@pytest.mark.parametrize("arch,mlp", [("modern", "swiglu"), ("modern", "relu2"), ("gpt2", "gelu")])
def test_the_pruned_model_computes_what_the_masked_original_computes(arch, mlp):
    model = random_model(arch, mlp)
    x = torch.randint(0, 300, (2, 32))
    with masked(model, SOME_PLAN):
        expected = model.lm_head(model.hidden_states(x))
    small = prune(model, SOME_PLAN)
    assert (small.cfg.n_layer, small.cfg.n_head, small.cfg.head_size, small.cfg.mlp_width) == (2, 2, 8, 4)
    assert small.n_params() < model.n_params()
    # the same sums without the zero terms: equal up to float rounding
    assert torch.allclose(small.lm_head(small.hidden_states(x)), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(model.lm_head(model.hidden_states(x)), expected, atol=1e-2)  # it did remove something


def test_a_head_pruned_model_decodes_with_both_kv_caches():
    """H * D < C: the model's KV cache and the engine's slot cache must size heads by head_dim."""
    small = prune(random_model(), SOME_PLAN)
    prompt = [5, 6, 7]
    cached = list(small.generate(prompt, 10, temperature=0))
    assert cached == list(small.generate(prompt, 10, temperature=0, use_cache=False))

    class NoTok:
        stops: set = set()

        def utf8_table(self, size):
            return torch.zeros(8, size, dtype=torch.long)
    batch = generate_batch(small, NoTok(), [prompt, [9, 9]], 10, SamplingParams(temperature=0.0, repetition_penalty=1.0))
    assert batch[0] == cached


# ----- importance

def test_dead_mlp_units_score_zero_and_are_pruned_first():
    model = random_model(n_layer=2)
    with torch.no_grad():
        model.blocks[1].mlp.c_proj.weight[:, :10] = 0  # units 0..9 of layer 1 write nothing
    x, y = torch.randint(0, 300, (4, 32)), torch.randint(0, 300, (4, 32))
    scores = unit_scores(model, x, y, Plan.everything(model))
    assert torch.all(scores[1, :10] == 0) and torch.all(scores[1, 10:] > 0)  # a * dL/da is 0 exactly
    plan = choose(model, x, y, keep_layers=2, keep_heads=4, mlp_width=model.cfg.mlp_width - 10, log=lambda s: None)
    assert set(range(10)).isdisjoint(plan.units[1]) and len(plan.units[1]) == model.cfg.mlp_width - 10


@pytest.fixture(scope="module")
def calibrated(tiny_ckpt, tiny_data):
    model, _, _ = load_model(tiny_ckpt, "cpu")
    x, y = prune_cmd.calibration(str(tiny_data), load_checkpoint(tiny_ckpt), model.cfg.block_size, 512, 0, "cpu")
    return model, x, y


def test_a_dead_head_is_pruned_before_a_working_one(calibrated):
    model, x, y = calibrated
    original = model.blocks[0].attn.c_proj.weight.detach().clone()
    with torch.no_grad():
        model.blocks[0].attn.c_proj.weight[:, 16:] = 0  # head 1 of layer 0 (of 2, D = 16) writes nothing
    try:
        plan = choose(model, x, y, keep_layers=2, keep_heads=1, mlp_width=model.cfg.mlp_width, log=lambda s: None)
    finally:
        with torch.no_grad():
            model.blocks[0].attn.c_proj.weight.copy_(original)
    assert plan.heads[0] == [0]


def test_the_layer_dropped_is_the_one_whose_absence_costs_least(calibrated):
    model, x, y = calibrated
    kept = choose_layers(model, x, y, keep=1, log=lambda s: None)
    everything = Plan.everything(model)
    cost = {layer: mean_loss_masked(model, x, y, Plan([layer], everything.heads[:1], everything.units[:1]))
            for layer in (0, 1)}
    assert kept == [min(cost, key=cost.get)]
    assert cost[kept[0]] > mean_loss(model, x, y)  # a trained layer is missed


# ----- the command and the tools

@pytest.fixture(scope="module")
def chat_pair(tiny_ckpt, tiny_data, tmp_path_factory):
    """A tiny chat model (the teacher) and its pruned copy (1 layer, 1 head, half the MLP)."""
    root = tmp_path_factory.mktemp("prune")
    data = root / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}."})
                            + "\n" for i in range(120)))
    r = run_cli("chat_sft.py", f"--init_from={tiny_ckpt}", f"--data={tiny_data}", f"--out_dir={root / 'chat'}", f"--sft_data={data}",
                "--max_steps=30", "--eval_interval=30", "--sft_val_fraction=0.2", "--eot_check=0", *TINY)
    assert r.returncode == 0, r.stderr
    big = root / "chat" / "best.pt"
    r = run_cli("prune.py", "--ckpt", big, "--out", root / "small.pt", "--keep_layers", "1", "--keep_heads", "1",
                "--mlp_width", "0.5", "--calib_tokens", "1024")
    assert r.returncode == 0, r.stderr
    return big, root / "small.pt", data, r.stdout


def test_the_pruned_checkpoint_has_the_smaller_shape_and_says_where_it_came_from(chat_pair):
    big, small, _, stdout = chat_pair
    ckpt = load_checkpoint(small)
    c = ckpt["model_config"]
    assert (c["n_layer"], c["n_head"], c["head_size"], c["mlp_width"]) == (1, 1, 16, 64)
    origin = ckpt["pruned_from"]
    assert origin["path"] == str(big.resolve()) and len(origin["sha256"]) == 64
    assert origin["model_config"] == load_checkpoint(big)["model_config"]
    assert len(origin["keep"]["layers"]) == 1 and len(origin["keep"]["units"][0]) == 64
    assert ckpt["kind"] == "sft" and ckpt["tokenizer"] == load_checkpoint(big)["tokenizer"]
    assert f"wrote {small}" in stdout and f"--teacher={big}" in stdout


def test_pruned_checkpoints_run_in_sample_chat_and_serve(chat_pair):
    _, small, _, _ = chat_pair
    r = run_cli("sample.py", "--ckpt", small, "--prompt", "The river", "--max_new_tokens", "8", "--seed", "1")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    r = run_cli("chat.py", "--ckpt", small, "--prompt", "What is 3 plus 3?", "--max_new_tokens", "8", "--seed", "0")
    assert r.returncode == 0, r.stderr
    server = LiveServer(small)
    try:
        reply = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "What is 3 plus 3?"}], "max_tokens": 8, "seed": 0})
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["role"] == "assistant"
    finally:
        server.stop()


HF_LOGITS = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    print(json.dumps([type(model).__name__, model(torch.tensor([json.loads(sys.argv[2])])).logits[0].tolist()]))
"""


def test_a_pruned_model_exports_and_transformers_computes_what_we_compute(chat_pair, tmp_path):
    _, small, _, _ = chat_pair
    r = run_cli("export.py", "--ckpt", small, "--out", tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    (tmp_path / "hf_logits.py").write_text(HF_LOGITS)
    ids = [1, 50, 60, 70, 80, 90]
    r = subprocess.run([sys.executable, "-I", "hf_logits.py", "hf", json.dumps(ids)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    arch, theirs = json.loads(r.stdout.strip().splitlines()[-1])
    model, tok, _ = load_model(small, "cpu")
    with torch.no_grad():
        ours = model.lm_head(model.hidden_states(torch.tensor([ids])))[0, :, :tok.n_vocab]
    assert arch == "Qwen3ForCausalLM" and ours.abs().max() > 0.1
    assert (ours - torch.tensor(theirs)).abs().max() < 1e-4


def test_export_refuses_a_gpt2_model_with_pruned_heads(tiny_ckpt, tmp_path):
    model = prune(random_model("gpt2"), SOME_PLAN)
    save_checkpoint(tmp_path / "g.pt", build_checkpoint("pretrain", model.state_dict(), asdict(model.cfg),
                                                        load_checkpoint(tiny_ckpt)["tokenizer"]))
    r = run_cli("export.py", "--ckpt", tmp_path / "g.pt", "--out", tmp_path / "hf")
    assert r.returncode == 2 and "heads were pruned" in r.stderr and not (tmp_path / "hf").exists()


def test_dry_run_prints_size_and_speed_per_choice_and_writes_nothing(tiny_ckpt, tmp_path, capsys):
    prune_cmd.main(["--ckpt", str(tiny_ckpt), "--ratio", "0.5", "--dry_run"])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.startswith(("original", "keep", "mlp"))}
    assert set(rows) == {"original", "keep_layers", "keep_heads", "mlp_width"}
    assert "1.00x" in rows["original"] and "parameters" in out and "dry run: nothing written" in out
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def odd_checkpoints(tiny_ckpt, tmp_path_factory):
    """An int8 checkpoint (convert.py), one marked as LoRA adapters, one with another tokenizer,
    one with a shorter context."""
    root = tmp_path_factory.mktemp("odd")
    assert run_cli("convert.py", "int8", tiny_ckpt, root / "int8.pt").returncode == 0
    ckpt = load_checkpoint(tiny_ckpt)
    save_checkpoint(root / "lora.pt", {**ckpt, "lora": {"rank": 4}})
    save_checkpoint(root / "gpt2tok.pt", {**ckpt, "tokenizer": {"kind": "gpt2"}})
    save_checkpoint(root / "short.pt", {**ckpt, "model_config": {**ckpt["model_config"], "block_size": 16}})
    return root


@pytest.mark.parametrize("args,message", [
    (["--keep_layers", "3"], "the model has 2; keep between 1 and 2"),
    (["--keep_heads", "0"], "keep between 1 and 2"),
    (["--mlp_width", "1.5"], "a fraction must be in (0, 1]"),
    (["--mlp_width", "129"], "the model has 128"),
    (["--ratio", "0.5", "--keep_layers", "1"], "--ratio sets layers, heads and MLP width together"),
    (["@int8"], "int8 weights"), (["@lora"], "merge them first (python convert.py lora"),
    (["--keep_layers", "1", "--calib_tokens", "100000000"], "--calib_tokens 100000000: the train split of"),  # was
    # train.py's "lower block_size or batch_size", options prune.py does not have
    (["--keep_layers", "1", "--calib_tokens", "0"], "--calib_tokens must be >= 1"),  # said after the timings before
    ([], "nothing to prune: give --keep_layers"),  # wrote a copy and suggested healing it
])
def test_bad_prune_requests_are_clear_errors_and_write_nothing(tiny_ckpt, odd_checkpoints, tmp_path, args, message, capsys):
    ckpt = odd_checkpoints / f"{args[0][1:]}.pt" if args and args[0].startswith("@") else tiny_ckpt
    argv = ["--ckpt", str(ckpt), "--out", str(tmp_path / "small.pt"), *(a for a in args if not a.startswith("@"))]
    with pytest.raises(UsageError, match=re.escape(message)):
        prune_cmd.main(argv)
    assert not (tmp_path / "small.pt").exists()
    assert "measured ms/token" not in capsys.readouterr().out  # refused before the table's timings


def test_calibration_data_with_no_whole_window_says_why(tiny_ckpt, tiny_data):
    """Every shard shorter than the context: "holds 0 tokens ... give --calib_tokens 0 or less",
    a value then refused as below 1."""
    ckpt = load_checkpoint(tiny_ckpt)
    with pytest.raises(UsageError, match=r"every train shard of .* is shorter than a 10000000-token window"):
        prune_cmd.calibration(str(tiny_data), ckpt, 10_000_000, 4096, 0, "cpu")


def test_a_bad_prune_request_exits_2_with_one_line(tiny_ckpt, tmp_path):
    r = run_cli("prune.py", "--ckpt", tiny_ckpt, "--out", tmp_path / "s.pt", "--keep_layers", "0")
    assert r.returncode == 2 and r.stderr.startswith("error: --keep_layers 0") and "Traceback" not in r.stderr
    assert not (tmp_path / "s.pt").exists()


@pytest.mark.parametrize("teacher,student,message", [
    ("@int8", None, "teacher .* holds int8 weights"), ("@lora", None, "teacher .* merge them first"),
    ("@gpt2tok", None, "both must use the same one"), ("@short", None, "reads 16 tokens at most"),
    (None, "@int8", r"student \(init_from\) .* int8"),
    ("sft", None, r"is a base \(pretrained\) model, never taught the chat turns: a chat run distils from a chat"),
])
def test_bad_teachers_and_students_are_refused_before_anything_is_written(tiny_ckpt, odd_checkpoints, tmp_path,
                                                                          teacher, student, message):
    pick = lambda name: str(odd_checkpoints / f"{name[1:]}.pt") if name and name != "sft" else str(tiny_ckpt)  # noqa: E731
    config = SFTConfig if teacher == "sft" else TrainConfig  # a base teacher for chat SFT trained on, unwarned
    with pytest.raises(UsageError, match=message):
        load_config(config, [f"--teacher={pick(teacher)}", f"--init_from={pick(student)}",
                             f"--out_dir={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match="distill_alpha must be in"):
        load_config(TrainConfig, [f"--teacher={tiny_ckpt}", "--distill_alpha=1.5"])


def test_a_teacher_of_another_tokenizer_of_the_same_name_is_told_apart(tiny_ckpt):
    """Two bpe:300 tokenizers trained on other text: "uses the tokenizer bpe:300, the student
    bpe:300" read as if they were the same."""
    from model import GPTConfig
    from wikigpt.adapt.distill import check_pair
    ckpt = load_checkpoint(tiny_ckpt)
    ranks = [list(r) for r in ckpt["tokenizer"]["ranks"]]
    ranks[-1][1], ranks[-2][1] = ranks[-2][1], ranks[-1][1]  # two merges learned the other way round
    teacher = {**ckpt, "tokenizer": {**ckpt["tokenizer"], "ranks": ranks}}
    with pytest.raises(UsageError, match=r"uses the tokenizer bpe:\d+, the student bpe:\d+ \(two of that name, trained on "
                                         r"other text\): distillation compares"):
        check_pair(teacher, "t.pt", ckpt["tokenizer"], GPTConfig(**ckpt["model_config"]), "the student")


# ----- the distillation loss

def test_kd_loss_matches_a_hand_computed_value():
    # 2 rows, 3 token ids; the second row is not counted (y = -1): it must not matter
    x, w = torch.tensor([[1.0, 0.0], [5.0, 5.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    tx, tw = torch.tensor([[0.0, 1.0], [9.0, 9.0]]), torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    y, alpha, T = torch.tensor([1, -1]), 0.25, 2.0
    s, t = [1.0, 0.0, 0.0], [0.0, 2.0, 1.0]  # row 0's student and teacher logits, by hand

    def softmax(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]
    ce = -math.log(softmax(s)[1])
    p, q = softmax([v / T for v in t]), softmax([v / T for v in s])
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = alpha * T * T * kl + (1 - alpha) * ce
    assert abs(distill_cross_entropy(x, w, tx, tw, y, alpha, T).item() - expected) < 1e-6


def test_kd_gradients_match_autograd_and_do_not_depend_on_the_chunking():
    torch.manual_seed(0)
    x, w = torch.randn(50, 8, dtype=torch.double), torch.randn(40, 8, dtype=torch.double)
    tx, tw = torch.randn(50, 6, dtype=torch.double), torch.randn(40, 6, dtype=torch.double)
    y = torch.randint(-1, 40, (50,))
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()  # the reference, in float64
    zs, zt, keep = xr @ wr.t(), tx @ tw.t(), y != -1
    kl = (torch.softmax(zt / 3, -1) * (torch.log_softmax(zt / 3, -1) - torch.log_softmax(zs / 3, -1))).sum(-1)
    ref = 0.6 * 9 * kl[keep].mean() + 0.4 * torch.nn.functional.cross_entropy(zs, y, ignore_index=-1)
    ref.backward()
    for chunk in (7, 1024):  # ours in float32, as training runs it
        xs, ws = x.float().requires_grad_(), w.float().requires_grad_()
        loss = distill_cross_entropy(xs, ws, tx.float(), tw.float(), y, 0.6, 3.0, chunk_rows=chunk)
        loss.backward()
        assert abs(loss.item() - ref.item()) < 1e-5
        assert torch.allclose(xs.grad.double(), xr.grad, atol=1e-6) and torch.allclose(ws.grad.double(), wr.grad, atol=1e-6)
        assert torch.all(xs.grad[~keep] == 0)  # ignored rows (in SFT: not the assistant's) get no gradient


def test_kd_with_alpha_zero_is_the_fused_cross_entropy_bit_for_bit():
    torch.manual_seed(0)
    x, w, y = torch.randn(3000, 16), torch.randn(100, 16), torch.randint(-1, 100, (3000,))
    a, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    b, wb = x.clone().requires_grad_(), w.clone().requires_grad_()
    plain = linear_cross_entropy(a, wa, y)
    kd = distill_cross_entropy(b, wb, torch.randn(3000, 8), torch.randn(100, 8), y, 0.0, 2.0)
    plain.backward(), kd.backward()
    assert torch.equal(plain, kd) and torch.equal(a.grad, b.grad) and torch.equal(wa.grad, wb.grad)


# ----- distillation runs

def weights(path):
    return load_checkpoint(path)["model"]


def test_training_with_alpha_zero_is_ordinary_training_bit_for_bit(tiny_data, tiny_ckpt, tmp_path):
    common = [f"--data={tiny_data}", f"--init_from={tiny_ckpt}", "--max_steps=4", "--eval_interval=4", *TINY]
    plain = run_cli("train.py", *common, f"--out_dir={tmp_path / 'plain'}")
    kd0 = run_cli("train.py", *common, f"--out_dir={tmp_path / 'kd0'}", f"--teacher={tiny_ckpt}", "--distill_alpha=0")
    assert plain.returncode == 0 and kd0.returncode == 0, kd0.stderr
    a, b = weights(tmp_path / "plain" / "last.pt"), weights(tmp_path / "kd0" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_distillation_resumes_exactly(chat_pair, tiny_data, tmp_path):
    big, small, _, _ = chat_pair
    common = [f"--data={tiny_data}", f"--init_from={small}", f"--teacher={big}", "--max_steps=6",
              "--eval_interval=3", "--dropout=0.1", *TINY]
    straight = run_cli("train.py", *common, f"--out_dir={tmp_path / 'a'}")
    first = run_cli("train.py", *common, f"--out_dir={tmp_path / 'b'}", "--stop_after=3")
    second = run_cli("train.py", *common, f"--out_dir={tmp_path / 'b'}", "--resume=true")
    assert all(r.returncode == 0 for r in (straight, first, second)), second.stderr
    a, b = weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_distillation_under_two_process_torchrun(chat_pair, tiny_data, tmp_path):
    big, small, _, _ = chat_pair
    r = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
                f"--data={tiny_data}", f"--init_from={small}", f"--teacher={big}", f"--out_dir={tmp_path}",
                "--max_steps=4", "--eval_interval=4", *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "weights identical on all 2 processes: yes" in r.stdout


def test_healing_a_pruned_chat_model_by_distillation_beats_no_healing(chat_pair, tmp_path):
    """chat_sft.py --teacher: the KD loss on the assistant tokens. Step 0's val is the pruned
    model as prune.py wrote it; the run must end well below it."""
    big, small, data, _ = chat_pair
    r = run_cli("chat_sft.py", f"--init_from={small}", f"--teacher={big}", f"--out_dir={tmp_path}",
                f"--sft_data={data}", "--max_steps=30", "--eval_interval=30", "--sft_val_fraction=0.2",
                "--eot_check=0", "--distill_alpha=0.7", *TINY)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["val"]["loss"] < summary["val_at_start"]["loss"] - 0.3, summary


def test_kd_loss_casts_each_head_once_under_autocast_not_per_chunk():
    """Under bf16 autocast every chunk's x @ W.T would cast the (V, C) head again (8 chunks: 8
    casts of each head); the loss casts both heads to the compute dtype once."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountCasts(TorchDispatchMode):
        def __init__(self, *heads):
            super().__init__()
            self.at, self.heads = {h.data_ptr() for h in heads}, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in self.at:
                self.heads += 1
            return func(*args, **(kwargs or {}))
    torch.manual_seed(0)
    x, w, y = torch.randn(800, 16, requires_grad=True), torch.randn(100, 16, requires_grad=True), torch.randint(0, 100, (800,))
    tw = torch.randn(100, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16), CountCasts(w, tw) as casts:
        loss = distill_cross_entropy(x, w, torch.randn(800, 8), tw, y, 0.5, 2.0, chunk_rows=100)
    assert torch.isfinite(loss) and casts.heads == 2, casts.heads  # student's head and teacher's, once each
