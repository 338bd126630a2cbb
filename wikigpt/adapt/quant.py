"""
Weight-only int8: every Linear (and the token embedding, whose rows are the output head's rows
when tied) stored as int8 with one float scale per output channel, w ~= scale * q, q in
[-127, 127]. Activations, norms and the KV cache stay in float32.

    python convert.py int8 out/chat/best.pt out/chat/int8.pt  # an int8 checkpoint, ~0.26x the file
    python chat.py --ckpt out/chat/int8.pt                # runs it (int8 weights in memory)
    python chat.py --ckpt out/chat/best.pt --dtype int8   # quantises at load

The matmul is torch's int8 weight kernel (aten._weight_int8pack_mm: bfloat16 activations times
int8 weights, scaled per output channel), so the weights stay int8 in memory; CPU only. See
bench/bench.py --only dtypes for its speed against float32 and bfloat16 on this machine.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from wikigpt.cli import UsageError


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> int8 (out, in) and float32 scales (out,): symmetric, per row."""
    scale = w.float().abs().amax(dim=1).clamp(min=1e-12) / 127
    q = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


# The kernel reads the `in` dimension in blocks and assumes whole ones: here (AVX2) widths of 8, 24
# or 40 gave values of 1e37 or NaN and 33 or 38 a segfault, 16 or 48 the right products. A pruned
# MLP or an unusual n_embd has such widths: padded with zeros to a multiple of 64 (wider CPUs' blocks).
INT8_BLOCK = 64


@torch.library.custom_op("wikigpt::int8_mm", mutates_args=())
def int8_mm(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (M, in) bf16 @ int8 qweight (out, in).T * scale (out,): torch's int8-weight kernel, as an
    opaque op, so that torch.compile calls the kernel as it is instead of lowering it (its
    lowering fails on this torch: an AssertionError inside inductor)."""
    pad = -x.shape[1] % INT8_BLOCK
    if pad:  # zeros add nothing to the products; the weight is copied each call (rare widths only)
        x, qweight = F.pad(x, (0, pad)), F.pad(qweight, (0, pad))
    return torch.ops.aten._weight_int8pack_mm(x, qweight, scale)


@int8_mm.register_fake
def _(x, qweight, scale):
    return x.new_empty(x.shape[0], qweight.shape[0])


class Int8Linear(nn.Module):
    def __init__(self, out_features: int, in_features: int, bias: bool, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(out_features, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        m = cls(linear.out_features, linear.in_features, linear.bias is not None, linear.weight.device)
        q, scale = quantize_rows(linear.weight.detach())
        m.qweight.copy_(q)
        m.scale.copy_(scale)
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach().float())
        return m

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight (out, in): for the loss path, which reads the head's matrix."""
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x):  # x: (..., in) float32
        # The kernel is fast with bfloat16 activations and slow with float32 ones, measured on
        # a 2-core AVX2 CPU for the 50304x384 head: 0.27 ms (bf16) vs 6.3 ms (fp32) per token,
        # against 5.1 ms for the plain float32 matmul; so x is rounded to bfloat16 here.
        y = int8_mm(x.reshape(-1, self.in_features).to(torch.bfloat16), self.qweight, self.scale.to(torch.bfloat16))
        y = y.view(*x.shape[:-1], self.out_features).to(x.dtype)
        return y + self.bias if self.bias is not None else y


class Int8Embedding(nn.Module):
    """Token rows in int8 with a scale per row; a lookup dequantises only the rows it reads."""

    def __init__(self, num: int, dim: int, device=None):
        super().__init__()
        self.register_buffer("qweight", torch.zeros(num, dim, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(num, device=device))

    @property
    def weight(self) -> torch.Tensor:
        return self.qweight.float() * self.scale[:, None]

    def forward(self, idx):  # (B, T) -> (B, T, C)
        return F.embedding(idx, self.qweight).float() * self.scale[idx].unsqueeze(-1)


def quantize_model(model: nn.Module, empty: bool = False) -> nn.Module:
    """Replace the embedding and every Linear by int8 modules (in place). empty=True builds the
    int8 layout only, to load an int8 checkpoint's tensors into."""
    tied = model.lm_head.weight is model.wte.weight
    emb = Int8Embedding(*model.wte.weight.shape, device=model.wte.weight.device)
    if not empty:
        q, scale = quantize_rows(model.wte.weight.detach())
        emb.qweight.copy_(q)
        emb.scale.copy_(scale)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear) and not (tied and name == "lm_head"):
            path, _, attr = name.rpartition(".")
            parent = model.get_submodule(path) if path else model
            setattr(parent, attr, Int8Linear(m.out_features, m.in_features, m.bias is not None, m.weight.device)
                    if empty else Int8Linear.from_linear(m))
    model.wte = emb
    if tied:  # the head reads the embedding's int8 rows: still one matrix
        head = Int8Linear(emb.qweight.size(0), emb.qweight.size(1), False, emb.qweight.device)
        head.qweight, head.scale = emb.qweight, emb.scale
        model.lm_head = head
    return model


def check_int8_support(device: str):
    if not device.startswith("cpu"):
        raise UsageError(f"int8 runs on the CPU (torch's int8-weight kernel), not on {device}: use "
                         "--device cpu, or on the GPU the float checkpoint (with --dtype bfloat16 or float16).")
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        raise UsageError(f"--dtype int8 needs torch's int8 weight kernel (torch >= 2.4); this is torch "
                         f"{torch.__version__}. Upgrade torch or use --dtype bfloat16.")
