"""The ops on DTensors, with 2 gloo processes on the CPU: the norms of FSDP2-sharded
gradients (and of every placement mix) equal the single-process values on every rank,
a non-finite shard on one rank is flagged on every rank, and blend/valve/ste take sharded
activations. Everything runs in one spawn (each assertion inside the workers)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kasmina_fast import _extension
from tests.utils import end_worker

pytestmark = pytest.mark.skipif(
    not _extension.LOADED or not dist.is_available(), reason="needs the op library and torch.distributed"
)

WORLD = 2


def _close(got, want, what, rtol=2e-6):
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=1e-6, msg=what)


def _check_placements(rank, mesh):
    from torch.distributed.tensor import Partial, Replicate, Shard, distribute_tensor

    import kasmina_fast as kf
    from kasmina_fast import reference

    gen = torch.Generator().manual_seed(0)  # the same full tensors on every rank
    full = [torch.randn(6, 5, generator=gen), torch.randn(4, 7, generator=gen), torch.randn(9, generator=gen)]
    full.append(torch.randn(3, generator=gen).bfloat16())
    placements = [[Shard(0)], [Shard(1)], [Replicate()], [Shard(0)]]
    dts = [distribute_tensor(t, mesh, p) for t, p in zip(full, placements)]
    # a Partial one: each rank holds half of the value
    part = torch.randn(4, 4, generator=gen)
    dts.append(torch.distributed.tensor.DTensor.from_local(part / WORLD, mesh, [Partial()], run_check=False))
    full.append(part)
    plain = torch.randn(5, generator=gen)  # a plain tensor, the same on every rank
    ts, fulls = [*dts, plain], [*full, plain]
    _close(kf.foreach_norm(ts), reference.foreach_norm(fulls), f"rank {rank} foreach_norm")
    got = kf.gradient_stats(ts[:3], ts[3:], 1000, 10)
    _close(got, reference.gradient_stats(fulls[:3], fulls[3:], 1000, 10), f"rank {rank} gradient_stats", 4e-6)
    assert not isinstance(got, torch.distributed.tensor.DTensor)


def _check_fsdp_telemetry(rank, mesh):
    from torch.distributed.fsdp import fully_shard

    import kasmina_fast as kf
    from kasmina_fast import reference
    from kasmina_fast.lifecycle.isolation import GradientIsolationMonitor

    torch.manual_seed(0)
    host = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4))
    seed = torch.nn.Linear(4, 4)
    ref_host, ref_seed = copy.deepcopy(host), copy.deepcopy(seed)  # unsharded twins
    for m in (host[0], host[2], seed):
        fully_shard(m, mesh=mesh)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))  # the same batch on both ranks
    seed(host(x)).square().sum().backward()
    ref_seed(ref_host(x)).square().sum().backward()
    h_count = sum(p.numel() for p in ref_host.parameters())
    s_count = sum(p.numel() for p in ref_seed.parameters())
    want = reference.gradient_stats(
        [p.grad for p in ref_host.parameters()], [p.grad for p in ref_seed.parameters()], h_count, s_count
    )
    mon = GradientIsolationMonitor()
    mon.register(host, seed)
    ok, stats = mon.materialize_isolation_stats(mon.check_isolation_async())
    assert ok, stats
    assert abs(stats["seed_gradient_norm_ratio"] - want[2].item()) <= 1e-5 * max(1.0, want[2].item()), (
        stats,
        want,
    )
    grads = [p.grad for p in host.parameters()]
    assert all(isinstance(g, torch.distributed.tensor.DTensor) for g in grads)
    _close(
        kf.foreach_norm(grads), reference.foreach_norm([p.grad for p in ref_host.parameters()]), "fsdp norms"
    )
    # a non-finite gradient in one rank's shard is flagged on every rank
    if rank == 1:
        grads[0].to_local().view(-1)[0] = float("nan")
    flag = kf.gradient_stats(grads, [p.grad for p in seed.parameters()], h_count, s_count)[3]
    assert flag.item() == 1.0, f"rank {rank}"
    ok, _ = mon.materialize_isolation_stats(mon.check_isolation_async())
    assert not ok, f"rank {rank}"


def _check_pointwise(rank, mesh):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import kasmina_fast as kf
    from kasmina_fast import reference

    gen = torch.Generator().manual_seed(2)
    host, seed, gout = (torch.randn(4, 3, 6, generator=gen) for _ in range(3))
    for placement, alpha, alpha_placement in [
        (Shard(0), torch.rand(4, 1, 1, generator=gen), Shard(0)),  # per-sample alpha sharded with the batch
        (Shard(2), torch.rand(4, 1, 1, generator=gen), Replicate()),
        (Shard(1), torch.tensor(0.3), Replicate()),
        (Replicate(), torch.tensor(0.6), Replicate()),
    ]:
        h = distribute_tensor(host, mesh, [placement]).requires_grad_()
        s = distribute_tensor(seed, mesh, [placement]).requires_grad_()
        a = distribute_tensor(alpha, mesh, [alpha_placement]).requires_grad_()
        ops = [
            ("blend", kf.blend, reference.blend),
            ("valve", functools.partial(kf.valve, isolate=False), reference.valve),
            (
                "valve isolate",
                functools.partial(kf.valve, isolate=True),
                functools.partial(reference.valve, isolate=True),
            ),
        ]
        for op, fast, ref_fn in ops:
            for t in (h, s, a):
                t.grad = None
            out = fast(h, s, a)
            assert out.placements == (placement,), (op, out.placements)
            out.backward(distribute_tensor(gout, mesh, [placement]))
            rh, rs, ra = (t.clone().requires_grad_() for t in (host, seed, alpha))
            want = ref_fn(rh, rs, ra)
            want.backward(gout)
            what = f"rank {rank} {op} {placement} alpha {list(alpha.shape)}"
            _close(out.full_tensor(), want, what + " out")
            for got, ref, name in ((h, rh, "d_host"), (s, rs, "d_seed"), (a, ra, "d_alpha")):
                _close(got.grad.full_tensor(), ref.grad, f"{what} {name}", 1e-5)
        t = kf.ste(h.detach().requires_grad_(), s)
        assert t.placements == (placement,)
        _close(t.full_tensor(), host, what + " ste")


def _worker(rank, init):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (WORLD,))
        _check_placements(rank, mesh)
        _check_fsdp_telemetry(rank, mesh)
        _check_pointwise(rank, mesh)
        end_worker()
    finally:
        dist.destroy_process_group()


def test_ops_on_dtensors_with_two_ranks(tmp_path):
    mp.spawn(_worker, args=(f"file://{tmp_path / 'init'}",), nprocs=WORLD, join=True)
