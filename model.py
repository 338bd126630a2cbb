"""
A GPT (decoder-only Transformer) in plain PyTorch, in one file.

Two architecture presets share one code path (GPTConfig.arch):
  gpt2    LayerNorm, GELU MLP, learned positions, biases, tied input/output embeddings
  modern  RMSNorm, rotary positions, SwiGLU (or ReLU^2) MLP, QK-norm, no biases,
          untied embeddings, zero-initialised output projections

Shapes: B batch, T time (tokens), C width (n_embd), H heads, D head size (GPTConfig.head_size:
C // H, or less for a model whose heads were pruned: then H * D < C), V vocab.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


# The MLP a new model of each preset gets. Measured on the demo (bench/bench.py --only mlp, 150 s
# each): modern + SwiGLU val bits/byte 2.150 vs ReLU^2 2.158 at the same tokens/s, and SwiGLU
# makes the preset exactly transformers' Qwen3 layout (export.py).
PRESET_MLP = {"gpt2": "gelu", "modern": "swiglu"}


@dataclass
class GPTConfig:
    vocab_size: int = 8192  # the tokenizer's; the embedding is padded to a multiple of 64
    block_size: int = 256  # longest context
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    arch: str = "modern"  # "gpt2" | "modern"
    mlp: str | None = None  # "gelu" | "relu2" | "swiglu"; None: the preset's (PRESET_MLP)
    # Set for a pruned shape (prune.py): removing heads keeps each head's size, removing MLP
    # units narrows every layer alike. 0 (what checkpoints without these keys get): the usual
    # shape, filled in below. (Older checkpoints name them head_dim and mlp_hidden:
    # wikigpt/checkpoint.py's upgrade() renames them.)
    head_size: int = 0  # D; 0: n_embd // n_head
    mlp_width: int = 0  # MLP hidden units per layer; 0: the preset's width

    def __post_init__(self):
        self.mlp = self.mlp or PRESET_MLP.get(self.arch, "swiglu")
        if not self.head_size and self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        self.head_size = self.head_size or self.n_embd // self.n_head
        # SwiGLU has three matrices; 8/3 of the width keeps its parameter count that of 4x MLPs
        self.mlp_width = self.mlp_width or (4 * self.n_embd if self.mlp != "swiglu"
                                            else int(8 * self.n_embd / 3 + 63) // 64 * 64)

    @property
    def padded_vocab(self) -> int:
        # GPU matmuls run fastest on multiples of 64 (nanoGPT measured ~25% on 50257 -> 50304)
        return (self.vocab_size + 63) // 64 * 64

    def validate(self):
        if self.arch not in ("gpt2", "modern"):
            raise ValueError(f"arch must be 'gpt2' or 'modern', got {self.arch!r}")
        if self.mlp not in ("gelu", "relu2", "swiglu"):
            raise ValueError(f"mlp must be gelu, relu2 or swiglu, got {self.mlp!r}")
        if self.head_size < 0 or self.mlp_width < 0:
            raise ValueError(f"head_size ({self.head_size}) and mlp_width ({self.mlp_width}) must be >= 0")
        if self.arch == "modern" and self.head_size % 2:
            raise ValueError(f"rotary positions need an even head size, got {self.head_size}")


# RMSNorm's epsilon, fixed: left as None, torch uses the input dtype's own (float32: 1.2e-7,
# bfloat16: 7.8e-3), so a model trained with float32 activations would normalise differently
# when run in bfloat16. export.py writes this value as Qwen3's rms_norm_eps.
RMS_EPS = torch.finfo(torch.float32).eps


def norm(cfg: GPTConfig) -> nn.Module:
    return nn.LayerNorm(cfg.n_embd) if cfg.arch == "gpt2" else nn.RMSNorm(cfg.n_embd, eps=RMS_EPS)


def rotary_tables(head_size: int, max_len: int, base: float = 10000.0):
    """cos/sin tables for rotary position embeddings, each (max_len, D/2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate pairs of channels by a position-dependent angle. x: (B, H, T, D); cos/sin: (T, D/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class KVCache:
    """Keys and values of every layer for the tokens seen so far, so that generating token
    t+1 costs one token's work instead of recomputing all t (per-token latency stays flat).
    k, v: (n_layer, B, H, max_len, D), filled up to `pos`. One idea: all rows at one position
    (one sequence, or a batch that starts and grows together: model.generate's).

    The model talks to a cache through three methods, so that other layouts can plug in
    (wikigpt/decoding/decode.py's SlotCache, the other idea: one row per request, each at its
    own position, joining and leaving the batch at any step: the engine's):
      positions(T) -> (B or 1, T) position ids of the next T tokens
      attend(layer, q, k, v) -> (B, H, T, D) attention output, after storing k, v
      advance(T) after all layers have run"""

    def __init__(self, cfg: GPTConfig, batch_size: int, device, dtype):
        shape = (cfg.n_layer, batch_size, cfg.n_head, cfg.block_size, cfg.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # tokens already cached

    def positions(self, T: int):
        if self.pos + T > self.k.size(3):
            raise ValueError(f"sequence of {self.pos + T} tokens exceeds block_size {self.k.size(3)}")
        return torch.arange(self.pos, self.pos + T, device=self.k.device)[None]  # (1, T)

    def attend(self, layer: int, q, k, v):
        """Store this step's k, v (B, H, T, D); attend q over everything cached so far."""
        t = k.size(2)
        self.k[layer, :, :, self.pos:self.pos + t] = k
        self.v[layer, :, :, self.pos:self.pos + t] = v
        k, v = self.k[layer, :, :, :self.pos + t], self.v[layer, :, :, :self.pos + t]  # (B, H, pos+T, D)
        # A new chunk starting at an empty cache is causal; one new token sees the whole cache.
        assert self.pos == 0 or t == 1, "with a cache, prefill once, then decode one token at a time"
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.pos == 0)

    def advance(self, T: int):
        self.pos += T


def context_window(ids: list[int], block_size: int) -> list[int]:
    """The sliding window, written once (model.generate, sample.py through the engine): the
    tokens to go on from. All of ids while they leave room in the context (fewer than
    block_size), else their last 3/4: one prefill of 3/4 of a block buys 1/4 of a block of
    cheap cached steps (sliding by one token would prefill the whole block every token)."""
    return ids if len(ids) < block_size else ids[-(3 * block_size // 4):]


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        bias = cfg.arch == "gpt2"
        self.layer, self.n_head, self.dropout = layer, cfg.n_head, cfg.dropout
        self.head_size = cfg.head_size
        self.qk_norm = cfg.arch == "modern"  # normalising q and k keeps attention logits tame
        inner = cfg.n_head * cfg.head_size  # H * D: C, unless heads were pruned
        self.c_attn = nn.Linear(cfg.n_embd, 3 * inner, bias=bias)
        self.c_proj = nn.Linear(inner, cfg.n_embd, bias=bias)

    def forward(self, x, rotary=None, cache: KVCache | None = None):
        B, T, C = x.shape
        HD = self.n_head * self.head_size
        q, k, v = self.c_attn(x).split(HD, dim=2)  # 3 x (B, T, H*D)
        q, k, v = (t.view(B, T, self.n_head, self.head_size).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.size(-1),), eps=RMS_EPS), F.rms_norm(k, (k.size(-1),), eps=RMS_EPS)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:
            y = cache.attend(self.layer, q, k, v)  # (B, H, T, D)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, D)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, HD))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        bias, self.kind = cfg.arch == "gpt2", cfg.mlp
        hidden = cfg.mlp_width
        self.c_fc = nn.Linear(cfg.n_embd, hidden * (2 if self.kind == "swiglu" else 1), bias=bias)
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=bias)

    def forward(self, x):
        h = self.c_fc(x)  # (B, T, hidden), twice that for SwiGLU
        if self.kind == "gelu":
            h = F.gelu(h)
        elif self.kind == "relu2":
            h = F.relu(h).square()  # ReLU^2: as cheap as ReLU, learns faster than GELU
        else:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        return self.c_proj(h)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.ln_1, self.attn = norm(cfg), Attention(cfg, layer)
        self.ln_2, self.mlp = norm(cfg), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rotary=None, cache=None):
        x = x + self.drop(self.attn(self.ln_1(x), rotary, cache))  # pre-norm residual blocks
        return x + self.drop(self.mlp(self.ln_2(x)))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        V, C = cfg.padded_vocab, cfg.n_embd
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(cfg.block_size, C) if cfg.arch == "gpt2" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.activation_checkpointing = False  # set by train.py's --activation_checkpointing
        self.ln_f = norm(cfg)
        self.lm_head = nn.Linear(C, V, bias=False)
        if cfg.arch == "gpt2":
            self.lm_head.weight = self.wte.weight  # tied: one matrix reads and writes tokens
        else:  # not parameters: derived, and kept out of checkpoints
            cos, sin = rotary_tables(cfg.head_size, cfg.block_size)
            self.register_buffer("rot_cos", cos, persistent=False)
            self.register_buffer("rot_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if cfg.arch == "gpt2":  # GPT-2: scale residual outputs by depth
                    nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))
                else:  # modern: every block starts as the identity
                    nn.init.zeros_(p)
        if cfg.arch == "modern":
            nn.init.zeros_(self.lm_head.weight)  # uniform predictions: loss at init = ln(V) exactly

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    @property
    def device(self) -> torch.device:
        return self.ln_f.weight.device

    @property
    def act_dtype(self) -> torch.dtype:
        """The dtype activations (and the KV cache) run in: the weights', or float32 for int8
        weights (wikigpt/adapt/quant.py), whose norms stay float32."""
        return self.ln_f.weight.dtype

    def n_params(self, for_flops=False) -> int:
        """Parameter count. for_flops: only weights that do matmul work per token: learned
        positions and an untied input embedding are lookups (a tied one is the output head)."""
        n = sum(p.numel() for p in self.parameters())
        if for_flops:
            if self.wpe is not None:
                n -= self.wpe.weight.numel()
            if self.lm_head.weight is not self.wte.weight:
                n -= self.wte.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6N for the matmuls (forward + backward) plus attention."""
        c = self.cfg
        return 6 * self.n_params(for_flops=True) + 12 * c.n_layer * c.n_head * c.head_size * c.block_size

    def hidden_states(self, idx, cache: KVCache | None = None):
        """Token ids (B, T) -> final normalised hidden states (B, T, C)."""
        B, T = idx.shape
        if cache is None:  # training and plain forward: positions 0..T-1
            if T > self.cfg.block_size:
                raise ValueError(f"sequence of {T} tokens exceeds block_size {self.cfg.block_size}")
            pos = torch.arange(T, device=idx.device)  # (T,)
        else:  # rows may sit at different places (the cache checks they fit: reading them here would sync)
            pos = cache.positions(T)  # (B or 1, T)
        x = self.wte(idx)  # (B, T, C)
        rotary = None
        if self.wpe is not None:
            x = x + self.wpe(pos)  # (T, C) or (B or 1, T, C), broadcast
        elif cache is None:  # sliced tables (cheap, and what torch.compile sees in training)
            rotary = (self.rot_cos[:T], self.rot_sin[:T])  # (T, D/2)
        else:
            rotary = (self.rot_cos[pos].unsqueeze(1), self.rot_sin[pos].unsqueeze(1))  # (B or 1, 1, T, D/2)
        x = self.drop(x)
        for block in self.blocks:
            if self.activation_checkpointing and self.training and cache is None:
                # keep only each block's input; its activations are recomputed in backward:
                # ~1/3 more compute for the memory of a whole model's activations (350M/1.5B)
                x = torch.utils.checkpoint.checkpoint(block, x, rotary, None, use_reentrant=False)
            else:
                x = block(x, rotary, cache)
        if cache is not None:
            cache.advance(T)
        return self.ln_f(x)

    def forward(self, idx, targets=None):
        """(logits, loss). With targets (B, T; -1 = ignore): logits of every position (B, T, V)
        and their mean cross-entropy over the counted targets. Without: the last position's
        logits only (B, 1, V), all that sampling needs, and loss None. Training calls the same
        cross-entropy fused with the output layer (wikigpt/loss.py): it never holds all the logits."""
        x = self.hidden_states(idx)  # (B, T, C)
        if targets is None:
            return self.lm_head(x[:, [-1]]).float(), None  # (B, 1, V)
        logits = self.lm_head(x).float()  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    # ------------------------------------------------------------------------------------
    # Generation

    @torch.no_grad()
    def generate(self, prompt: list[int], max_new_tokens: int, temperature=0.8, top_k=None, stop_tokens=(),
                 seed=None, use_cache=True):
        """Yield new token ids one at a time (streaming): the simplest sampler, temperature and
        top-k, for reading (sample.py --no_cache decodes with it). Stops after a stop token
        (which is yielded) or max_new_tokens; past a full context it goes on from context_window.
        Same seed -> same tokens, with or without the cache; greedy, the same tokens as the
        engine (wikigpt/decoding/engine.py: batching, top-p, repetition penalty, copying), which
        is what serves and samples by default. The cache path is the KV cache in its simplest
        form (one row, all at one position): prune.py times decoding with it and the tests
        check the engine's SlotCache against it."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed if seed is not None else torch.seed())
        block = self.cfg.block_size
        ids, cache = context_window(list(prompt), block), None
        for _ in range(max_new_tokens):
            if len(ids) > block:  # the context is full: go on from its last 3/4, cached anew
                ids, cache = context_window(ids, block), None
            if not use_cache:
                new = ids  # the whole context, every token
            elif cache is None:
                new, cache = ids, KVCache(self.cfg, 1, self.device, self.act_dtype)  # the context once...
            else:
                new = ids[-1:]  # ...then one new token at a time
            x = self.hidden_states(torch.tensor([new], device=self.device), cache)[:, -1]  # (1, C)
            logits = self.lm_head(x).float()[0]  # (V,)
            logits = logits[:self.cfg.vocab_size]  # the padding ids are never real tokens
            if temperature <= 0:
                token = int(logits.argmax())
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                    logits = logits.masked_fill(logits < kth, -float("inf"))
                token = int(torch.multinomial(F.softmax(logits, dim=-1), 1, generator=gen))
            ids.append(token)
            yield token
            if token in stop_tokens:
                return
