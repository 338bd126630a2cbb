"""Muon's orthogonalisation: batched by shape, and divided among processes under torchrun
(each process does its share, one all-gather per shape), with every process ending with the
updates one process alone would compute."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wikigpt import optim

SHAPES = [(32, 16)] * 5 + [(16, 48)] * 3  # two shapes, batches that do not divide by 2


def updates(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g) for s in SHAPES]


def test_a_batch_of_same_shape_matrices_is_orthogonalised_as_each_alone():
    mats = updates()[:5]
    batched = optim.zeropower_newton_schulz(torch.stack(mats))  # (5, 32, 16)
    for m, b in zip(mats, batched):
        torch.testing.assert_close(b, optim.zeropower_newton_schulz(m), rtol=1e-4, atol=1e-5)
        s = torch.linalg.svdvals(b)
        assert s.min() > 0.5 and s.max() < 1.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, sharded: bool, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        done = []  # matrices this process put through Newton-Schulz
        real = optim.zeropower_newton_schulz

        def counting(G, steps=5):
            done.append(G.size(0) if G.dim() == 3 else 1)
            return real(G, steps)
        optim.zeropower_newton_schulz = counting
        ups = updates()
        params = [torch.zeros_like(u) for u in ups]
        if sharded:  # FSDP's layout: each process holds some rows of each matrix (DTensors)
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.tensor import Shard, distribute_tensor
            mesh = init_device_mesh("cpu", (world,))
            ups = [distribute_tensor(u, mesh, [Shard(0)]) for u in ups]
            params = [distribute_tensor(p, mesh, [Shard(0)]) for p in params]
        result = optim.orthogonalise(list(zip(params, ups)))
        full = [o.full_tensor() if sharded else o for _, o in result]
        torch.save({"full": full, "done": sum(done)}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("sharded", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_share_the_newton_schulz_work_and_get_one_processes_result(sharded, tmp_path):
    # results come back in files: an mp.Manager's socket path fails under a TMPDIR over ~72 characters
    mp.spawn(worker, args=(2, free_port(), sharded, str(tmp_path)), nprocs=2, join=True)
    out = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in (0, 1)]
    alone = [optim.zeropower_newton_schulz(u) for u in updates()]
    for rank in (0, 1):
        got, worked = out[rank]["full"], out[rank]["done"]
        assert worked == 3 + 2  # ceil(5/2) of the first shape + ceil(3/2) of the second, not all 8
        for g, a in zip(got, alone):
            torch.testing.assert_close(g, a, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(out[0]["full"], out[1]["full"]))  # the same bits everywhere


# ----------------------------------------------------------------------------------------
# fp16: GradScaler hands Muon the scale and the overflow flag, on the device

def scaled_step(unscale_first: bool, overflow: bool, seed: int = 0):
    """One train.py-style fp16 step of Muon under GradScaler ("cpu" stands in for CUDA: the
    same code path). Returns (weight before, weight after, momentum, .item() calls in step)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(16, 8, generator=g))
    before = w.detach().clone()
    opt, scaler = optim.Muon([w], lr=0.1), torch.amp.GradScaler("cpu", init_scale=1024.0)
    target = torch.randn(16, 8, generator=g)
    loss = ((w - target) ** 2).sum() * (float("inf") if overflow else 1.0)
    scaler.scale(loss).backward()
    if unscale_first:  # train.py with grad_clip: unscale_, clip, then step
        scaler.unscale_(opt)
    items, real_item = [], torch.Tensor.item
    torch.Tensor.item = lambda self: items.append(1) or real_item(self)  # .item() is a host sync on CUDA
    try:
        scaler.step(opt)
        scaler.update()
    finally:
        torch.Tensor.item = real_item
    return before, w.detach(), opt.state[w].get("momentum"), len(items), scaler.get_scale()


@pytest.mark.parametrize("unscale_first", [False, True])
def test_muon_under_grad_scaler_steps_without_a_host_sync_and_as_unscaled(unscale_first):
    """GradScaler read found_inf back to the host before every step of an optimizer that does
    not take the scale itself (one sync per fp16 training step: bench/gpu_check.sh's fp16 row
    failed on every GPU). Muon takes it: no .item(), and the same step as without fp16's scaling."""
    before, after, momentum, syncs, _ = scaled_step(unscale_first, overflow=False)
    assert syncs == 0
    w = torch.nn.Parameter(before.clone())
    g = torch.Generator().manual_seed(0)
    torch.randn(16, 8, generator=g)  # the weight's draw, then the target's, as in scaled_step
    target = torch.randn(16, 8, generator=g)
    plain = optim.Muon([w], lr=0.1)
    ((w - target) ** 2).sum().backward()
    plain.step()
    # scaling by 1024 (a power of two) and back is exact; Newton-Schulz then sees the same input
    torch.testing.assert_close(after, w.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(momentum, plain.state[w]["momentum"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("unscale_first", [False, True])
def test_an_overflowed_fp16_step_leaves_weights_and_momentum_untouched(unscale_first):
    before, after, momentum, syncs, scale = scaled_step(unscale_first, overflow=True)
    assert syncs == 0 and scale == 512.0  # the scaler halves its scale after an overflow
    assert torch.equal(after, before)
    assert torch.equal(momentum, torch.zeros_like(momentum))  # no inf / nan carried into later steps
