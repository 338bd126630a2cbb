"""The peak FLOP/s that MFU is stated against (wikigpt/run/throughput.py), measured on a CPU
whose matmul speed the test decides: on a clock that only the products advance."""
from types import SimpleNamespace

import pytest
import torch

from wikigpt.run import throughput


def fake_cpu(monkeypatch, flops: float):
    """Square products that take 2 n^3 / flops seconds of a fake clock; returns (clock, sizes)."""
    clock, sizes = [0.0], []

    def matmul(a, b):
        sizes.append(a.shape[0])
        clock[0] += 2 * a.shape[0] ** 3 / flops
        return a

    monkeypatch.setattr(torch.Tensor, "__matmul__", matmul)
    monkeypatch.setattr(throughput, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    return clock, sizes


def test_a_dtype_the_cpu_is_slow_at_is_measured_in_a_second_not_minutes(monkeypatch):
    clock, sizes = fake_cpu(monkeypatch, 0.4e9)  # float16 here: 43 s per 2048^3 product, 4.5 min in all
    assert throughput.measure_matmul_flops("cpu", torch.float16) == pytest.approx(0.4e9)
    assert clock[0] < 1.5 and max(sizes) < 2048


def test_a_fast_dtype_is_still_measured_at_full_size(monkeypatch):
    clock, sizes = fake_cpu(monkeypatch, 90e9)  # float32 here: 0.19 s per 2048^3 product
    assert throughput.measure_matmul_flops("cpu", torch.float32) == pytest.approx(90e9)
    assert sizes[-6:] == [2048] * 6  # the best of 5 after its warm-up
