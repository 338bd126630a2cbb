"""The dependency floors keep out versions with known security or complexity defects, and the
installed tokenizer library encodes one long word in linear time (a request can be one word)."""
import re
import time

from packaging.version import Version

from conftest import ROOT


def floors() -> dict[str, Version]:
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", line.strip())
        if m:
            out[m[1].lower()] = Version(m[2])
    return out


def test_requirements_floor_torch_past_the_weights_only_bypass_and_tiktoken_past_quadratic_merges():
    got = floors()
    assert got["torch"] >= Version("2.6"), got["torch"]  # CVE-2025-32434; FSDP2 and DTensor public
    assert got["tiktoken"] >= Version("0.13"), got["tiktoken"]  # linear merges of one long word
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r'TORCH\s*\?=\s*"torch>=2\.6"', makefile), "make's default torch must keep the floor"


def test_one_long_word_encodes_in_linear_time():
    """Quadratic merging (tiktoken before 0.13) takes ~16x as long for 4x the characters; linear
    ~4x. The bound, 8x, sits between the two with room for a noisy machine."""
    from wikigpt.tokenizer import Tokenizer

    enc = Tokenizer({"kind": "gpt2"}).enc

    def seconds(n: int) -> float:
        word = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(n))  # no space, no repeat run
        best = float("inf")
        for _ in range(3):
            t = time.thread_time()  # this thread's CPU time: a loaded machine's preemptions are not counted
            enc.encode_ordinary(word)
            best = min(best, time.thread_time() - t)
        return best
    small, large = seconds(10_000), seconds(40_000)
    assert large < 8 * small + 0.01, (small, large)


def test_the_index_engine_is_tantivy_with_its_floor_and_its_reason_documented():
    """bm25s held the whole index in RAM (~4 KB a passage: ~250 GB for enwiki); tantivy builds in
    bounded memory and serves from disk. One engine, listed with why."""
    got = floors()
    assert got["tantivy"] >= Version("0.27") and "bm25s" not in got, got
    import tantivy

    assert Version(tantivy.__version__.split(",")[0].split()[-1].lstrip("v")) >= got["tantivy"]
    assert "| tantivy |" in (ROOT / "docs" / "dependencies.md").read_text()
