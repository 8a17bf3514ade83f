"""foreach_norm and gradient_stats on every CPU backend against the reference (fp64 sums)."""

from __future__ import annotations

import math
import os

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import kasmina_fast
from tests.utils import (
    DTYPES,
    VIEWS,
    assert_close_rel,
    check_gradient_stats_edges,
    check_more_than_2_31_elements,
    cpu_backends,
    make,
    norm_lists,
    on,
    on_thread_counts,
    oracle_norms,
    oracle_stats,
    shapes,
    targets,
    view_of,
    with_backend,
)


@pytest.mark.parametrize("backend", cpu_backends("foreach_norm"))
@pytest.mark.parametrize("case", list(norm_lists()))
def test_foreach_norm(backend, case):
    ts = norm_lists()[case]
    with with_backend(backend):
        got = kasmina_fast.foreach_norm(ts)
    assert got.dtype == torch.float32 and got.shape == (len(ts),)
    want = oracle_norms(ts)
    for i in range(len(ts)):
        assert_close_rel(got[i : i + 1], want[i : i + 1], 2e-6, f"{case}[{i}]")


@pytest.mark.parametrize("backend", cpu_backends("foreach_norm"))
def test_foreach_norm_non_finite(backend):
    ts = [torch.tensor([1.0, float("nan")]), torch.tensor([float("inf"), 1.0]), torch.ones(4)]
    with with_backend(backend):
        got = kasmina_fast.foreach_norm(ts)
    assert math.isnan(got[0]) and got[1] == float("inf") and got[2] == 2.0


@pytest.mark.parametrize("backend", cpu_backends("gradient_stats"))
@pytest.mark.parametrize(
    ("host_scale", "seed_scale", "hp", "sp"),
    [
        (1.0, 0.1, 1000, 10),  # normalised ratio 0.1 * 10 = 1, under the cap
        (1.0, 1.0, 10_000, 1),  # 1 * 100 -> capped at 10
        (1e-10, 1.0, 10, 10),  # host norm < 1e-8 -> 0
        (1.0, 0.5, 0, 10),  # missing count -> raw ratio
        (1.0, 0.5, 10, 0),
        (0.0, 0.0, 5, 5),  # all zero
    ],
)
def test_gradient_stats_formula(backend, host_scale, seed_scale, hp, sp):
    gen = torch.Generator().manual_seed(2)
    host = [
        make((30, 7), torch.float32, generator=gen) * host_scale,
        make((5,), torch.bfloat16, generator=gen) * host_scale,
    ]
    seed = [make((9,), torch.float32, generator=gen) * seed_scale]
    with with_backend(backend):
        got = kasmina_fast.gradient_stats(host, seed, hp, sp)
    assert got.dtype == torch.float32 and got.shape == (4,)
    assert_close_rel(got, oracle_stats(host, seed, hp, sp), 2e-6)


@pytest.mark.skipif(
    os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") < 12 * 2**30, reason="needs 12 GiB of memory"
)
@pytest.mark.skipif("cpp" not in cpu_backends("gradient_stats"), reason="needs the C++ extension")
def test_norms_of_more_than_2_31_elements_cpp():
    """The C++ CPU kernels' 64-bit offsets (3-4 s; the fp64 reference would need 17 GB)."""
    with with_backend("cpp"):
        check_more_than_2_31_elements()


@pytest.mark.parametrize("backend", cpu_backends("gradient_stats"))
def test_gradient_stats_edges(backend):
    with with_backend(backend):
        check_gradient_stats_edges()


@pytest.mark.parametrize("backend", cpu_backends("gradient_stats"))
def test_norms_take_any_sequence(backend):
    """Lists are used as they are (not copied); tuples and iterators are listed first."""
    gen = torch.Generator().manual_seed(5)
    ts = [make((n,), torch.float32, "contiguous", gen) for n in (3, 40, 1)]
    with with_backend(backend):
        want_n = kasmina_fast.foreach_norm(ts)
        want_s = kasmina_fast.gradient_stats(ts[:2], ts[2:], 10, 3)
        assert torch.equal(kasmina_fast.foreach_norm(tuple(ts)), want_n)
        assert torch.equal(kasmina_fast.foreach_norm(iter(ts)), want_n)
        assert torch.equal(kasmina_fast.gradient_stats(tuple(ts[:2]), iter(ts[2:]), 10, 3), want_s)
    assert_close_rel(want_n, oracle_norms(ts), 2e-6)
    assert len(ts) == 3


NORM_VIEW_CASES = dict(
    specs=st.lists(
        st.tuples(shapes(min_rank=0), st.sampled_from(DTYPES), st.sampled_from(VIEWS), st.integers(0, 3)),
        max_size=12,
    ),
    windows=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200)), max_size=3),
    split=st.integers(0, 15),
    counts=st.tuples(st.sampled_from([0, 1, 1000]), st.sampled_from([0, 3, 10**9])),
    seed_=st.integers(0, 2**31 - 1),
)


@pytest.mark.parametrize(("device", "backend"), on("cuda", targets("gradient_stats")))
@settings(max_examples=12, deadline=None)
@given(**NORM_VIEW_CASES)
def test_norms_of_views_on_cuda(device, backend, specs, windows, split, counts, seed_):
    check_norm_views(device, backend, specs, windows, split, counts, seed_)


@pytest.mark.parametrize(("device", "backend"), on("cpu", targets("gradient_stats")))
@settings(max_examples=30, deadline=None)
@given(**NORM_VIEW_CASES)
def test_norms_of_views(device, backend, specs, windows, split, counts, seed_):
    """Lists of views in any layout (tests/utils.py ``VIEWS``: permuted, batch not
    outermost, strided, broadcast with stride 0, offset), mixed dtypes, and windows
    into one shared buffer that overlap each other: every norm equals fp64
    ``vector_norm`` of the view as it reads (a broadcast element counts as often as
    it appears). Called again after the values change in place, at the same
    addresses, the results follow the new values (a cached chunk table keeps
    addresses and sizes, never values). (On CUDA: test_norms_of_views_on_cuda, with
    fewer examples.)"""
    check_norm_views(device, backend, specs, windows, split, counts, seed_)


def check_norm_views(device, backend, specs, windows, split, counts, seed_):
    gen = torch.Generator().manual_seed(seed_)
    bases, ts = [], []
    for shape, dtype, kind, dim in specs:
        base_shape, view = view_of(shape, kind, dim)
        bases.append(make(base_shape, dtype, generator=gen, device=device))
        ts.append(view(bases[-1]))
    shared = make((256,), torch.float32, generator=gen, device=device)
    bases.append(shared)
    ts += [shared[min(a, b) : max(a, b)] for a, b in windows]
    k = split % (len(ts) + 1)
    for _ in range(2):
        with with_backend(backend):
            norms = kasmina_fast.foreach_norm(ts)
            stats = kasmina_fast.gradient_stats(ts[:k], ts[k:], *counts)
        assert norms.dtype == torch.float32 and norms.shape == (len(ts),)
        want = oracle_norms(ts)
        for i in range(len(ts)):
            assert_close_rel(norms[i : i + 1], want[i : i + 1], 2e-6, f"{backend} norm[{i}]")
        assert_close_rel(stats, oracle_stats(ts[:k], ts[k:], *counts), 4e-6, backend)
        for b in bases:
            b.mul_(-1.5)


@pytest.mark.parametrize("backend", cpu_backends("gradient_stats"))
def test_norms_deterministic(backend):
    gen = torch.Generator().manual_seed(4)
    ts = [make((100_003,), torch.float32, generator=gen) for _ in range(5)]
    with with_backend(backend):
        a = kasmina_fast.foreach_norm(ts)
        b = kasmina_fast.foreach_norm(ts)
        c = kasmina_fast.gradient_stats(ts[:2], ts[2:], 7, 3)
        d = kasmina_fast.gradient_stats(ts[:2], ts[2:], 7, 3)
    assert torch.equal(a, b) and torch.equal(c, d)


@pytest.mark.parametrize("sizes", [[16] * 4, [16] * 1000, [7168] * 14, [100_000, 3, 70_000]], ids=len)
def test_cpp_norm_bits_do_not_depend_on_the_thread_count(sizes):
    """Fixed chunks, partials added in chunk order: same bits on 1, 2 or 3 threads,
    threaded or not."""
    if "cpp" not in cpu_backends("foreach_norm"):
        pytest.skip("the C++ extension is not built here")
    gen = torch.Generator().manual_seed(3)
    ts = [torch.randn(n, generator=gen) for n in sizes]
    with with_backend("cpp"):
        runs = on_thread_counts(
            lambda: (kasmina_fast.foreach_norm(ts), kasmina_fast.gradient_stats(ts[:1], ts[1:], 9, 4))
        )
    for norms, stats in runs[1:]:
        assert torch.equal(norms, runs[0][0]) and torch.equal(stats, runs[0][1])


@pytest.mark.parametrize("backend", cpu_backends("foreach_norm"))
def test_a_torch_function_mode_sees_the_norm_ops(backend):
    """Under a TorchFunctionMode the wrappers (and param_gradient_stats) take the
    torch.ops way, so the mode sees the op, as it sees every torch function."""
    from torch.overrides import TorchFunctionMode

    from kasmina_fast.ops import param_gradient_stats

    class Record(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.ops.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    ts = [torch.randn(5), torch.randn(3, 4), torch.randn(2)]
    params = [torch.nn.Parameter(t.clone()) for t in ts]
    for p, t in zip(params, ts):
        p.grad = t.clone()
    with with_backend(backend):
        want = (
            kasmina_fast.foreach_norm(ts),
            kasmina_fast.gradient_stats(ts[:1], ts[1:], 4, 2),
            param_gradient_stats(params[:1], params[1:], 4, 2),
        )
        with Record() as mode:
            got = (
                kasmina_fast.foreach_norm(ts),
                kasmina_fast.gradient_stats(ts[:1], ts[1:], 4, 2),
                param_gradient_stats(params[:1], params[1:], 4, 2),
            )
    names = [n for n in mode.ops if "norm" in n or "stats" in n]
    assert len(names) == 3, mode.ops
    for g, w in zip(got, want):
        assert torch.equal(g, w)


# ---- lists that span several devices -----------------------------------------------------------


def _spread_lists():
    """Gradient-like lists of every float dtype (the groups that stand in for devices
    below), sizes from empty to past a chunk."""
    gen = torch.Generator().manual_seed(8)
    dtypes = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    ts = [make((n,), dtypes[i % 4], generator=gen) for i, n in enumerate((5, 0, 70_001, 3, 9, 1, 4099, 2))]
    return ts[:5], ts[5:]


def test_per_device_results_combine_to_the_one_call_numbers():
    """The combination a split model gets (one op call per device, the results joined
    on the first tensor's device), with dtypes standing in for devices on the CPU:
    equal to the numbers of one call over everything. The real two-device run is
    test_lists_spanning_cpu_and_cuda."""
    from kasmina_fast.ops import norms

    host, seed = _spread_lists()
    by_dtype = norms._device_groups(host, seed, key=lambda t: t.dtype)
    assert by_dtype is not None and len(by_dtype) == 4
    got = norms._gradient_stats_by_device(host, seed, 1000, 10, by_dtype)
    torch.testing.assert_close(got, kasmina_fast.gradient_stats(host, seed, 1000, 10), rtol=1e-6, atol=0)
    everything = host + seed
    got = norms._foreach_norm_by_device(everything, norms._device_groups(everything, key=lambda t: t.dtype))
    torch.testing.assert_close(got, kasmina_fast.foreach_norm(everything), rtol=0, atol=0)
    # a non-finite gradient on one "device" only, and a device that holds host gradients only
    bad = [t.clone() for t in seed]
    bad[1] = torch.tensor([float("inf")], dtype=bad[1].dtype)
    got = norms._gradient_stats_by_device(
        host, bad, 1000, 10, norms._device_groups(host, bad, key=lambda t: t.dtype)
    )
    assert got[3] == 1.0 and got[1] == float("inf")
    # one device: no split; a meta tensor among real ones: the op's device error
    assert norms._device_groups(host, seed) is None
    assert norms._device_groups(host, [*seed, seed[0].to("meta")]) is None


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a second device: a CUDA device besides the CPU"
)
def test_lists_spanning_cpu_and_cuda():
    """A model split across the CPU and a GPU: foreach_norm, gradient_stats,
    param_gradient_stats and the isolation monitor give the one-device numbers
    instead of raising."""
    from kasmina_fast.lifecycle.isolation import GradientIsolationMonitor

    host, seed = _spread_lists()
    want_stats = kasmina_fast.gradient_stats(host, seed, 1000, 10)
    want_norms = kasmina_fast.foreach_norm(host + seed)
    split_host = [t.cuda() if i % 2 else t for i, t in enumerate(host)]
    split_seed = [t.cuda() for t in seed]
    got = kasmina_fast.gradient_stats(split_host, split_seed, 1000, 10)
    assert got.device == split_host[0].device
    torch.testing.assert_close(got, want_stats, rtol=1e-6, atol=0)
    torch.testing.assert_close(kasmina_fast.foreach_norm(split_host + split_seed), want_norms, rtol=0, atol=0)
    params = [torch.nn.Parameter(torch.zeros_like(t)) for t in split_host + split_seed]
    for p, t in zip(params, split_host + split_seed):
        p.grad = t
    got = kasmina_fast.ops.param_gradient_stats(params[: len(host)], params[len(host) :], 1000, 10)
    torch.testing.assert_close(got.cpu(), want_stats, rtol=1e-6, atol=0)
    host_mod, seed_mod = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4).cuda()
    monitor = GradientIsolationMonitor()
    monitor.register(host_mod, seed_mod)
    (host_mod(torch.randn(2, 4)).sum() + seed_mod(torch.randn(2, 4, device="cuda")).sum()).backward()
    _, stats = monitor.materialize_isolation_stats(monitor.check_isolation_async())

    def norm(module):
        return torch.cat([p.grad.double().flatten().cpu() for p in module.parameters()]).norm().item()

    assert math.isclose(stats["host_grad_norm"], norm(host_mod), rel_tol=1e-6)
    assert math.isclose(stats["seed_grad_norm"], norm(seed_mod), rel_tol=1e-6)
