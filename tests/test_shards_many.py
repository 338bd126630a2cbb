"""A dataset of more shards than the soft limit on open files (1,024 on many systems; prepare_wiki.py
--shard_tokens can cut enwiki into thousands): every mapped shard holds a file descriptor all run,
so load_dataset raises the soft limit, or says in one line why it cannot."""
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from wikigpt.prep.data import FORMAT_VERSION, ShardFile
from wikigpt.tokenizer import Tokenizer

N_SHARDS, LIMIT = 300, 128  # more shards than the soft limit the child process is given

CHILD = """
import os, resource, sys
from wikigpt.prep.data import DatasetError, load_dataset
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else hard))
try:
    ds = load_dataset(sys.argv[1])
except DatasetError as e:
    sys.exit(f"error: {e}")
with open(os.devnull) as f:  # room left for the checkpoints and logs of a run
    print(len(ds.train), sum(int(s.sum()) for s in ds.train))
"""


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """A dataset of N_SHARDS train shards of random tokens and one val shard; their token sum."""
    out = tmp_path_factory.mktemp("many")
    tok = Tokenizer.from_name("gpt2")
    tok.save(out / "tokenizer.json")
    rng, total, names = np.random.default_rng(0), 0, {"train": [], "val": []}
    for split, n in (("train", N_SHARDS), ("val", 1)):
        for i in range(n):
            tokens = rng.integers(0, tok.n_vocab, 50, dtype=np.uint16)
            total += int(tokens.sum()) if split == "train" else 0
            names[split].append(f"{split}_{i:03d}.bin")
            shard = ShardFile(out / names[split][-1], tok.n_vocab)
            shard.write(tokens)
            shard.close()
    (out / "meta.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "shards": names}))
    return out, total


def load_under_limit(folder, *limits):
    return subprocess.run([sys.executable, "-c", CHILD, str(folder), *map(str, limits)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_more_shards_than_the_soft_limit_on_open_files_load_and_read(many_shards):
    folder, total = many_shards
    r = load_under_limit(folder, LIMIT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == [str(N_SHARDS), str(total)]  # every shard mapped and read


def test_a_hard_limit_below_the_shard_count_is_one_clear_line(many_shards):
    folder, _ = many_shards
    r = load_under_limit(folder, LIMIT, LIMIT)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"has {N_SHARDS + 1} shards" in r.stderr and f"limit on open files is {LIMIT}" in r.stderr
    assert "ulimit -n" in r.stderr and "--shard_tokens" in r.stderr
