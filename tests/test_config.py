"""Settings a run cannot honour are refused up front, in one line that names the setting: the
ranges TrainConfig.validate checks, and the sizes the data must meet (wikigpt/batches.py)."""
import numpy as np
import pytest

from wikigpt.batches import PretrainBatches, val_windows
from wikigpt.cli import UsageError, load_config
from wikigpt.config import TrainConfig


@pytest.mark.parametrize("setting, message", [
    ("seed=-1", "seed must be >= 0 and finite, got -1"),  # was a numpy traceback in the data order
    ("seed=4294967296", r"seed must be below 2\*\*32"),  # torch.manual_seed refuses 2**64 and more
    ("grad_clip=-1", "grad_clip must be >= 0"),  # clip_grad_norm_ would reverse the gradients
    ("patience=-1", "patience must be >= 0"),  # these three stopped the run at step 0, rc 0
    ("stop_after=-3", "stop_after must be >= 0"),
    ("max_time=-1", "max_time must be >= 0"),
    ("max_time=nan", "max_time must be >= 0 and finite, got nan"),  # nan would never stop the run
    ("warmup_steps=-5", "warmup_steps must be >= 0"),
    ("min_lr_frac=5", r"min_lr_frac must be in \[0, 1\]"),
    ("decay_frac=0", r"decay_frac must be in \(0, 1\]"),  # wsd divides by it
    ("decay_frac=2", r"decay_frac must be in \(0, 1\]"),
    ("weight_decay=nan", "weight_decay must be >= 0 and finite, got nan"),
    ("weight_decay=inf", "weight_decay must be >= 0 and finite, got inf"),
    ("lr=inf", "lr must be > 0 and finite"),
    ("beta2=1.5", r"beta2 must be in \[0, 1\)"),
    ("mlp=geglu", "mlp must be auto, gelu, relu2 or swiglu, got 'geglu'"),
    ("n_embd=66", r"n_embd / n_head must be even with arch=modern .*got 11 \(e.g. --n_embd=72\)"),  # was model.py's traceback
])
def test_out_of_range_settings_are_refused_by_name(setting, message):
    with pytest.raises(UsageError, match="config: " + message):
        load_config(TrainConfig, [f"--{setting}"])


def test_zero_stays_off_and_the_range_ends_are_accepted():
    cfg = TrainConfig(seed=0, grad_clip=0.0, patience=0, stop_after=0, max_time=0.0, warmup_steps=0,
                      min_lr_frac=1.0, decay_frac=1.0, weight_decay=0.0)
    cfg.validate()
    TrainConfig(min_lr_frac=0.0, beta1=0.0).validate()
    TrainConfig(arch="gpt2", n_embd=66).validate()  # learned positions: any head size


def test_shards_shorter_than_a_window_are_named_as_the_cause():
    shards = [np.arange(250, dtype=np.uint16)] * 1200  # 300,000 tokens, but no shard holds 257
    with pytest.raises(UsageError, match=r"holds 0 windows of block_size 256, too few for 4: every shard is shorter "
                                         r"than a window, which never crosses shards.*larger shards \(--shard_tokens"):
        PretrainBatches(shards, block_size=256, batch_size=4, seed=0)
    with pytest.raises(UsageError, match=r"holds 3 windows of block_size 200, too few for 4"):
        PretrainBatches(shards[:3], block_size=200, batch_size=4, seed=0)  # 750 tokens, one window a shard


def test_eval_tokens_below_block_size_blames_eval_tokens_not_the_split():
    val = [np.arange(1000, dtype=np.uint16)]
    with pytest.raises(UsageError, match=r"eval_tokens \(16\) must be at least block_size \(32\)"):
        val_windows(val, block_size=32, n_tokens=16)
    x, y = val_windows(val, block_size=32, n_tokens=32)  # the least that makes a window
    assert x.shape == (1, 32) and y[0, -1] == 32
    with pytest.raises(UsageError, match=r"the val split \(20 tokens\) is shorter than block_size 32"):
        val_windows([np.arange(20, dtype=np.uint16)], block_size=32, n_tokens=512)

