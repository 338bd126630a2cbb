"""model.py: shapes, loss at init, learning, generation, and the config's names; wikigpt/loss.py:
the fused and per-token losses against F.cross_entropy."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig, KVCache
from wikigpt.checkpoint import upgrade
from wikigpt.loss import NextTokenLoss, linear_cross_entropy, token_losses


def tiny(arch, **kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32, arch=arch, **kw))


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_shapes_and_loss_at_init_is_ln_vocab(arch):
    model = tiny(arch)
    assert model.cfg.padded_vocab == 320  # padded to a multiple of 64
    idx = torch.randint(0, 300, (3, 16))
    logits, loss = model(idx)
    assert logits.shape == (3, 1, 320) and loss is None  # last position's logits
    targets = torch.randint(0, 300, (3, 16))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 16, 320)
    assert abs(loss.item() - math.log(300)) < 0.1, loss


def test_modern_preset_has_no_biases_and_untied_embeddings():
    names = [n for n, _ in tiny("modern").named_parameters()]
    assert not any(n.endswith("bias") for n in names)
    assert "wpe.weight" not in names and "lm_head.weight" in names
    gpt2 = tiny("gpt2")
    assert gpt2.lm_head.weight is gpt2.wte.weight


def test_swiglu_mlp_runs():
    model = tiny("modern", mlp="swiglu")
    idx = torch.randint(0, 300, (2, 8))
    model(idx, idx)[1].backward()


def test_an_old_config_with_head_dim_and_mlp_hidden_loads_as_head_size_and_mlp_width():
    """Checkpoints written before one name per quantity store head_dim and mlp_hidden (0: the
    usual shape); upgrade() renames them, and the model has the same shape either way."""
    old = {"vocab_size": 300, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0,
           "arch": "modern", "mlp": "swiglu", "head_dim": 0, "mlp_hidden": 0}
    cfg = GPTConfig(**upgrade({"model_config": dict(old)})["model_config"])
    assert (cfg.head_size, cfg.mlp_width) == (16, 128) and cfg == tiny("modern").cfg
    pruned = GPTConfig(**upgrade({"model_config": {**old, "head_dim": 8, "mlp_hidden": 40}})["model_config"])
    assert (pruned.head_size, pruned.mlp_width) == (8, 40)
    assert GPT(pruned).blocks[0].mlp.c_proj.weight.shape == (32, 40)


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_the_training_loss_is_forwards_cross_entropy(arch):
    """NextTokenLoss (the fused loss the training step calls) gives forward's plain
    F.cross_entropy and its gradients, within float32 rounding (1e-5)."""
    model = tiny(arch)
    x, y = torch.randint(0, 300, (2, 16)), torch.randint(0, 300, (2, 16))
    y[0, ::3] = -1
    fused = NextTokenLoss(model)(x, y)
    fused.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    _, plain = model(x, y)
    plain.backward()
    assert torch.allclose(fused, plain, atol=1e-5)
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(grads, model.parameters()))


def test_per_token_losses_are_cross_entropys_and_zero_where_ignored():
    model = tiny("modern")
    x, y = torch.randint(0, 300, (2, 16)), torch.randint(0, 300, (2, 16))
    y[1, :5] = -1
    with torch.no_grad():
        losses = token_losses(model.hidden_states(x), model.lm_head.weight, y, chunk_rows=7)
        logits, mean = model(x, y)
    plain = F.cross_entropy(logits.view(-1, 320), y.view(-1), ignore_index=-1, reduction="none").view(2, 16)
    assert losses.shape == (2, 16) and torch.all(losses[1, :5] == 0)
    assert torch.allclose(losses, plain, atol=1e-6)
    assert torch.allclose(losses.sum() / (y != -1).sum(), mean, atol=1e-6)


def test_fused_cross_entropy_matches_plain_with_ignored_targets():
    torch.manual_seed(0)
    x = torch.randn(70, 16, requires_grad=True)
    w = torch.randn(128, 16, requires_grad=True)
    t = torch.randint(0, 128, (70,))
    t[::3] = -1
    fused = linear_cross_entropy(x, w, t, chunk_rows=16)
    (fused * 2).backward()  # a scaled upstream gradient must flow through
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    plain = F.cross_entropy(x @ w.t(), t, ignore_index=-1)
    (plain * 2).backward()
    assert torch.allclose(fused, plain, atol=1e-5)
    assert torch.allclose(gx, x.grad, atol=1e-5) and torch.allclose(gw, w.grad, atol=1e-5)


def test_all_ignored_targets_give_zero_loss_not_nan():
    x = torch.randn(4, 8, requires_grad=True)
    loss = linear_cross_entropy(x, torch.randn(16, 8), torch.full((4,), -1))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_tiny_model_overfits_one_batch(arch):
    model = tiny(arch)
    idx = torch.randint(0, 300, (2, 32))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1, loss.item()


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generation_with_and_without_cache_gives_the_same_tokens(arch, temperature):
    model = tiny(arch).eval()
    prompt = [5, 17, 42, 9]
    kw = dict(temperature=temperature, top_k=50, seed=7)
    cached = list(model.generate(prompt, 25, use_cache=True, **kw))
    uncached = list(model.generate(prompt, 25, use_cache=False, **kw))
    assert cached == uncached and len(cached) == 25
    assert all(0 <= t < 300 for t in cached)  # never a padding id


def test_kv_cache_logits_match_full_forward():
    model = tiny("modern").eval()
    idx = torch.randint(0, 300, (1, 12))
    cache = KVCache(model.cfg, 1, "cpu", torch.float32)
    model.hidden_states(idx[:, :8], cache)
    steps = [model.lm_head(model.hidden_states(idx[:, i:i + 1], cache)[:, -1]) for i in range(8, 12)]
    full = [model(idx[:, :i + 1])[0][:, -1] for i in range(8, 12)]
    for a, b in zip(steps, full):
        assert torch.allclose(a, b, atol=1e-5)


def test_generation_stops_at_a_stop_token_and_seed_reproduces():
    model = tiny("modern").eval()
    first = list(model.generate([1, 2, 3], 20, temperature=1.0, seed=3))
    again = list(model.generate([1, 2, 3], 20, temperature=1.0, seed=3))
    assert first == again
    stop = first[4]
    stopped = list(model.generate([1, 2, 3], 20, temperature=1.0, seed=3, stop_tokens={stop}))
    assert stopped == first[:first.index(stop) + 1]


def test_top_k_1_is_greedy():
    model = tiny("gpt2").eval()
    greedy = list(model.generate([4, 5], 10, temperature=0.0))
    top1 = list(model.generate([4, 5], 10, temperature=1.5, top_k=1, seed=1))
    assert greedy == top1


def test_generation_past_the_context_keeps_going():
    model = tiny("modern").eval()
    out = list(model.generate(list(range(30)), 40, temperature=1.0, seed=0))
    assert len(out) == 40


def test_rms_norm_has_one_epsilon_whatever_the_activation_dtype():
    """Training runs the residual stream in float32; inference may run in bfloat16. With torch's
    default eps (the input dtype's: 7.8e-3 in bfloat16) a vector of small values (mean square
    1e-4) would shrink ~9x in bfloat16; with one explicit eps both agree within bfloat16's
    rounding (2e-2 relative)."""
    from model import RMS_EPS, norm
    cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32, arch="modern")
    ln = norm(cfg)
    x = torch.randn(4, 32) * 1e-2  # (B, C), mean square ~1e-4
    ref = ln(x)
    low = copy.deepcopy(ln).to(torch.bfloat16)(x.to(torch.bfloat16)).float()
    torch.testing.assert_close(low, ref, rtol=2e-2, atol=2e-2)
    # torch 2.13 computes a bfloat16 RMSNorm in float32 and agrees either way; other versions use
    # the dtype's eps when none is given: so every norm names its own (float32's, as trained on CPU)
    assert RMS_EPS == torch.finfo(torch.float32).eps
    assert all(m.eps == RMS_EPS for m in GPT(cfg).modules() if isinstance(m, torch.nn.RMSNorm))

    attn = GPT(cfg).eval().blocks[0].attn  # the attention's q/k norm too: small q and k
    with torch.no_grad():
        attn.c_attn.weight.mul_(0.1)  # q and k of mean square ~1e-4
        attn.c_proj.weight.normal_(0, 0.2)  # zero at init: the output would say nothing
        x = torch.randn(2, 16, 32)  # (B, T, C)
        ref, low = attn(x), copy.deepcopy(attn).to(torch.bfloat16)(x.to(torch.bfloat16)).float()
    assert (low - ref).abs().max() < 0.05 * ref.abs().max(), ((low - ref).abs().max(), ref.abs().max())


def test_fused_loss_gradients_in_float16_match_float32_under_a_grad_scaler():
    """fp16 GPUs (T4, V100) train with fp16 autocast and GradScaler. A micro-batch of 16 x 1024
    tokens gives each row 1/16384 of the gradient, and with a head at its init scale (std 0.02)
    a row's input gradient is ~1e-6: scaled in fp16 it lands among fp16's subnormals (or 0)
    before the scaler's factor arrives in backward. The fused loss scales in fp32, so its fp16
    gradients match the fp32 ones within 0.3 % of their norm (measured 0.03 %; 1.2 % before)."""
    torch.manual_seed(0)
    N, C, V = 16384, 16, 48
    x32 = torch.randn(N, C)  # (N, C): the final norm's output, float32 under autocast
    w32 = torch.randn(V, C) * 0.02  # (V, C): the head, at GPT-2's init scale
    targets = torch.randint(0, V, (N,))
    targets[::7] = -1  # some rows ignored, as SFT's masks do

    def grads(dtype):
        x, w = x32.clone().requires_grad_(), w32.clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = linear_cross_entropy(x, w, targets, chunk_rows=8192)
        (loss * 65536.0).backward()  # what GradScaler does before backward
        return loss.detach(), x.grad / 65536.0, w.grad / 65536.0
    loss16, gx16, gw16 = grads(torch.float16)
    loss32, gx32, gw32 = grads(torch.float32)
    torch.testing.assert_close(loss16, loss32, rtol=1e-2, atol=0)
    assert (gx16 - gx32).norm() < 3e-3 * gx32.norm(), (gx16 - gx32).norm() / gx32.norm()
    assert (gw16 - gw32).norm() < 3e-3 * gw32.norm(), (gw16 - gw32).norm() / gw32.norm()
    # and the fp32 path is the plain cross-entropy's
    x, w = x32.clone().requires_grad_(), w32.clone().requires_grad_()
    F.cross_entropy(x @ w.t(), targets, ignore_index=-1).backward()
    torch.testing.assert_close(gx32, x.grad, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(gw32, w.grad, rtol=1e-4, atol=1e-7)
