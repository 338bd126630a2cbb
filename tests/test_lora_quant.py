"""LoRA adapters (lora.py) and int8 / bfloat16 inference (quant.py, --dtype)."""
import re

import pytest
import torch
from conftest import TINY, run_cli

from wikigpt.checkpoint import load_checkpoint, model_from_checkpoint
from wikigpt.decoding.load import load_model
from wikigpt.cli import UsageError
from wikigpt.adapt.lora import adapter_state, apply_lora, merge_lora
from model import GPT, GPTConfig

LORA = ["--lora_rank=4", "--lora_alpha=8", "--max_steps=12", "--eval_interval=6", "--lr=0.01"]


def tiny_model(**kw):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32, **kw))
    for p in model.parameters():  # a model that says something: not the zero-initialised head
        p.data.normal_(0, 0.2) if p.dim() > 1 else None
    return model.eval()


def test_a_fresh_adapter_changes_nothing_and_freezes_the_base():
    model = tiny_model()
    x = torch.randint(0, 300, (2, 16))
    before = model(x)[0]
    names = apply_lora(model, rank=4, alpha=8, dropout=0.0)
    assert len(names) == 2 * 4 + 1  # every attention and MLP matrix of 2 blocks, and the head
    assert torch.equal(model(x)[0], before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)


@pytest.mark.parametrize("rank, targets, message", [
    (0, "attn.c_attn", "lora_rank 0"), (33, "attn.c_attn", "lora_rank 33"),
    (4, "attn.nothing", "match no linear layer"), (4, "lm_head", "output head is its token embedding")])
def test_bad_lora_settings_are_clear_errors(rank, targets, message):
    with pytest.raises(UsageError, match=message):
        apply_lora(tiny_model(arch="gpt2"), rank, 8, 0.0, targets)


@pytest.fixture(scope="module")
def lora_run(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    r = run_cli("train.py", f"--data={load_checkpoint(tiny_ckpt)['train_config']['data']}",
                f"--init_from={tiny_ckpt}", f"--out_dir={out}", *TINY, *LORA)
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_lora_training_changes_only_the_adapters_and_the_file_is_small(tiny_ckpt, lora_run):
    out, stdout = lora_run
    assert re.search(r"LoRA rank 4, alpha 8 .* trainable parameters", stdout)
    ckpt = load_checkpoint(out / "best.pt")
    # adapters only: A and B of each layer, and the special tokens' rows of embedding and head
    assert all(".lora_" in k or k.endswith(".delta") for k in ckpt["model"])
    assert ckpt["model"]["wte.parametrizations.weight.0.delta"].shape[0] == 5 == len(ckpt["lora"]["token_rows"])
    assert ckpt["lora"]["base"]["path"] == str(tiny_ckpt.resolve())
    model, _ = model_from_checkpoint(ckpt)
    base, _ = model_from_checkpoint(load_checkpoint(tiny_ckpt))
    lora_b = [v for k, v in adapter_state(model).items() if k.endswith("lora_B")]
    assert any(v.abs().max() > 0 for v in lora_b)  # the adapters learned something
    frozen = {k.replace(".base.", ".").replace(".parametrizations.weight.original", ".weight"): v
              for k, v in model.state_dict().items()
              if ".lora_" not in k and not k.endswith((".delta", ".ids"))}
    assert frozen.keys() == base.state_dict().keys()
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in frozen.items())  # the base is untouched
    # no optimizer state for frozen weights: one AdamW state per adapter tensor, nothing else
    states = [s for o in load_checkpoint(out / "last.pt")["optimizer"] for s in o["state"].values()]
    assert len(states) == len(ckpt["model"]) and "optimizer" not in ckpt  # best.pt: weights only
    # r=4 on 32-wide matrices is ~17% of each adapted matrix; at the demo's size it is ~2% (bench.py)
    assert (out / "best.pt").stat().st_size < 0.25 * tiny_ckpt.stat().st_size


def test_merged_and_unmerged_models_agree_and_merge_writes_a_plain_checkpoint(lora_run, tmp_path):
    out, _ = lora_run
    model, tok = model_from_checkpoint(load_checkpoint(out / "best.pt"))
    model.eval()
    x = torch.randint(0, tok.n_vocab, (2, 20))
    with torch.no_grad():
        unmerged = model.lm_head(model.hidden_states(x))
        greedy = list(model.generate([tok.doc_sep, 5, 6], 12, temperature=0.0))
        merge_lora(model)
        merged = model.lm_head(model.hidden_states(x))
    assert (unmerged - merged).abs().max() < 1e-5
    assert list(model.generate([tok.doc_sep, 5, 6], 12, temperature=0.0)) == greedy
    r = run_cli("convert.py", "lora", out / "best.pt", tmp_path / "merged.pt")
    assert r.returncode == 0, r.stderr
    plain = load_checkpoint(tmp_path / "merged.pt")
    assert "lora" not in plain
    loaded, _, _ = load_model(tmp_path / "merged.pt", "cpu")
    assert torch.allclose(loaded.lm_head(loaded.hidden_states(x)), merged, atol=1e-6)
    r = run_cli("sample.py", "--ckpt", out / "best.pt", "--prompt", "The", "--max_new_tokens", "5", "--seed", "1")
    assert r.returncode == 0, r.stderr  # tools load an adapter checkpoint like any other


def test_lora_resume_is_exact(tiny_ckpt, lora_run, tmp_path):
    out, _ = lora_run
    data = load_checkpoint(tiny_ckpt)["train_config"]["data"]
    common = [f"--data={data}", f"--init_from={tiny_ckpt}", f"--out_dir={tmp_path}", *TINY, *LORA]
    assert run_cli("train.py", *common, "--stop_after=6").returncode == 0
    r = run_cli("train.py", *common, "--resume=true")
    assert r.returncode == 0, r.stderr
    a, b = load_checkpoint(out / "last.pt")["model"], load_checkpoint(tmp_path / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_under_two_process_torchrun_keeps_replicas_identical(tiny_ckpt, tmp_path):
    data = load_checkpoint(tiny_ckpt)["train_config"]["data"]
    r = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
                f"--data={data}", f"--init_from={tiny_ckpt}", f"--out_dir={tmp_path}", *TINY, *LORA,
                "--max_steps=4", "--eval_interval=4", "--grad_accum=2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "weights identical on all 2 processes: yes" in r.stdout


def test_lora_bad_input(tiny_ckpt, lora_run, tmp_path):
    out, _ = lora_run
    data = load_checkpoint(tiny_ckpt)["train_config"]["data"]
    r = run_cli("train.py", f"--data={data}", f"--out_dir={tmp_path / 'a'}", *TINY, "--lora_rank=4")
    assert r.returncode == 2 and "needs a model to adapt" in r.stderr
    r = run_cli("convert.py", "lora", tiny_ckpt, tmp_path / "m.pt")
    assert r.returncode == 2 and "not a LoRA checkpoint" in r.stderr and not (tmp_path / "m.pt").exists()
    # an adapter whose base changed: the hash check refuses it
    ckpt = load_checkpoint(out / "best.pt")
    moved = tmp_path / "base.pt"
    moved.write_bytes(tiny_ckpt.read_bytes() + b"\0")
    ckpt["lora"]["base"]["path"] = str(moved)
    torch.save(ckpt, tmp_path / "adapter.pt")
    r = run_cli("chat.py", "--ckpt", tmp_path / "adapter.pt", "--prompt", "hi")
    assert r.returncode == 2 and "has changed since these adapters were trained" in r.stderr
    assert "Traceback" not in r.stderr
    import convert  # merging: the error named "the checkpoint", not the adapter file
    with pytest.raises(UsageError, match=rf"^{re.escape(str(tmp_path / 'adapter.pt'))}: .*has changed since"):
        convert.merge_adapters(str(tmp_path / "adapter.pt"), tmp_path / "merged.pt")
    assert not (tmp_path / "merged.pt").exists()


# ----------------------------------------------------------------------------------------
# --dtype int8 / bfloat16

def test_int8_and_bf16_stay_close_to_fp32_and_the_cache_changes_nothing(tiny_ckpt):
    ref, tok, _ = load_model(tiny_ckpt, "cpu")
    x = torch.randint(0, tok.n_vocab, (1, 24))
    with torch.no_grad():
        want = ref.lm_head(ref.hidden_states(x))
        for dtype, tol in (("int8", 0.05), ("bfloat16", 0.1)):
            model, _, _ = load_model(tiny_ckpt, "cpu", dtype)
            got = model.lm_head(model.hidden_states(x)).float()
            assert (got - want).abs().max() < tol * max(1.0, want.abs().max().item()), dtype
            prompt = x[0, :5].tolist()
            assert list(model.generate(prompt, 12, temperature=0.0)) == \
                list(model.generate(prompt, 12, temperature=0.0, use_cache=False)), dtype


@pytest.mark.parametrize("n_embd, mlp_width", [(40, 88), (48, 38)])  # widths a pruned MLP or a chosen n_embd has
def test_int8_gives_the_float_logits_at_widths_the_kernel_does_not_take_whole(n_embd, mlp_width):
    """torch's int8 kernel reads a layer's input in blocks of 16 and gave 1e37s, NaNs or a segfault
    at other widths (prune.py --mlp_width 40: NUL bytes for text, then a crash)."""
    from wikigpt.adapt.quant import quantize_model
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=n_embd, arch="modern",
                          mlp_width=mlp_width))
    for p in model.parameters():  # (some layers start at zero)
        p.data.normal_(0, 0.3)
    x = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        want = model.lm_head(model.hidden_states(x))
        quantize_model(model)
        got = model.lm_head(model.hidden_states(x)).float()
    assert torch.isfinite(got).all()
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_int8_checkpoint_round_trips_and_is_small(tiny_ckpt, tmp_path):
    out = tmp_path / "new" / "int8.pt"  # its folder is made
    r = run_cli("convert.py", "int8", tiny_ckpt, out)
    assert r.returncode == 0, r.stderr
    ratio = float(re.search(r"\((\d\.\d+)x the", r.stderr).group(1))
    assert ratio < 0.4  # 32-wide rows: the float32 scale per row is 1/8 extra; the demo model's is 0.26x
    ckpt = load_checkpoint(out)
    assert ckpt["quant"] == "int8" and ckpt["model"]["blocks.0.attn.c_attn.qweight"].dtype == torch.int8
    a, tok, _ = load_model(out, "cpu")
    b, _, _ = load_model(tiny_ckpt, "cpu", "int8")
    x = torch.randint(0, tok.n_vocab, (1, 16))
    assert torch.equal(a.lm_head(a.hidden_states(x)), b.lm_head(b.hidden_states(x)))
    r = run_cli("sample.py", "--ckpt", out, "--prompt", "The", "--max_new_tokens", "5", "--seed", "1")
    assert r.returncode == 0, r.stderr
    r = run_cli("sample.py", "--ckpt", out, "--prompt", "The", "--dtype", "bfloat16")
    assert r.returncode == 2 and "holds int8 weights" in r.stderr
    r = run_cli("convert.py", "int8", tiny_ckpt, out)
    assert r.returncode == 2 and "exists" in r.stderr
    r = run_cli("convert.py", "int8", out, tmp_path / "twice.pt")
    assert r.returncode == 2 and "int8 weights already" in r.stderr and not (tmp_path / "twice.pt").exists()
    data = load_checkpoint(tiny_ckpt)["train_config"]["data"]  # int8 weights do not train: refused before step 0
    r = run_cli("train.py", f"--data={data}", f"--init_from={out}", f"--out_dir={tmp_path / 'run'}", *TINY)
    assert r.returncode == 2 and "init_from" in r.stderr and "holds int8 weights" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run" / "best.pt").exists()


def test_int8_on_a_device_without_the_kernel_is_a_clear_error():
    from wikigpt.adapt.quant import check_int8_support
    with pytest.raises(UsageError, match="int8 runs on the CPU"):
        check_int8_support("cuda:0")


def test_special_token_rows_train_and_merge_into_a_still_tied_gpt2_head():
    model = tiny_model(arch="gpt2")
    x = torch.randint(0, 300, (1, 12))
    apply_lora(model, rank=2, alpha=4, dropout=0.0, token_rows=[3, 7])
    deltas = [p for n, p in model.named_parameters() if n.endswith(".delta")]
    assert len(deltas) == 1  # tied: the embedding and the head share one set of row deltas
    deltas[0].data.normal_()
    for name, p in model.named_parameters():
        if name.endswith("lora_B"):
            p.data.normal_()
    with torch.no_grad():
        before = model(x)[0]
        merge_lora(model)
        after = model(x)[0]
    assert torch.allclose(before, after, atol=1e-5)
    assert model.lm_head.weight is model.wte.weight
