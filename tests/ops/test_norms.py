"""foreach_norm and gradient_stats on every CPU backend against fp64 torch.linalg.vector_norm."""

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
    cpu_backends,
    make,
    on,
    on_thread_counts,
    shapes,
    targets,
    view_of,
    with_backend,
)


def want_norms(ts):
    return torch.tensor([torch.linalg.vector_norm(t.double()).item() for t in ts], dtype=torch.float64)


def lists(device: str = "cpu"):
    """The lists every backend is checked on (tests/ops/test_cuda.py runs them on CUDA)."""
    gen = torch.Generator().manual_seed(1)

    def mk(shape, dtype=torch.float32, layout="contiguous"):
        return make(shape, dtype, layout, gen, device=device)

    return {
        "empty_list": [],
        "empty_tensors": [torch.zeros(0, device=device), torch.zeros(3, 0, device=device), mk((5,))],
        "one_element": [torch.tensor([3.0], device=device)],
        "zero_dim": [torch.tensor(-2.5, device=device)],
        "many_tiny": [mk((3,)) for _ in range(10_000)],
        "one_large": [mk((300_001,))],
        "mixed_dtypes": [
            mk((17, 3), d) for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        ],
        "views": [
            mk((6, 10), layout="view"),
            mk((4, 6, 5, 5), layout="channels_last"),
            mk((8, 9), torch.float64).t(),
            mk((70_000, 3))[::3],
        ],
        "large_values": [torch.full((10,), 1e30, device=device), torch.full((4,), 3e38, device=device)],
    }


@pytest.mark.parametrize("backend", cpu_backends("foreach_norm"))
@pytest.mark.parametrize("case", list(lists()))
def test_foreach_norm(backend, case):
    ts = lists()[case]
    with with_backend(backend):
        got = kasmina_fast.foreach_norm(ts)
    assert got.dtype == torch.float32 and got.shape == (len(ts),)
    want = want_norms(ts)
    for i in range(len(ts)):
        assert_close_rel(got[i : i + 1], want[i : i + 1].float().double(), 2e-6, f"{case}[{i}]")


@pytest.mark.parametrize("backend", cpu_backends("foreach_norm"))
def test_foreach_norm_non_finite(backend):
    ts = [torch.tensor([1.0, float("nan")]), torch.tensor([float("inf"), 1.0]), torch.ones(4)]
    with with_backend(backend):
        got = kasmina_fast.foreach_norm(ts)
    assert math.isnan(got[0]) and got[1] == float("inf") and got[2] == 2.0


def stats_want(host, seed, hp, sp):
    h = math.sqrt(sum(torch.linalg.vector_norm(t.double()).item() ** 2 for t in host))
    s = math.sqrt(sum(torch.linalg.vector_norm(t.double()).item() ** 2 for t in seed))
    if h < 1e-8:
        r = 0.0
    else:
        r = s / h * (math.sqrt(hp / sp) if hp > 0 and sp > 0 else 1.0)
        r = r if math.isnan(r) else min(r, 10.0)
    flag = 0.0 if math.isfinite(h * h + s * s) else 1.0
    return torch.tensor([h, s, r, flag], dtype=torch.float64)


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
    assert_close_rel(got, stats_want(host, seed, hp, sp).float().double(), 2e-6)


def check_gradient_stats_edges(device: str = "cpu") -> None:
    """The formula's edges through the current backend (tests/ops/test_cuda.py runs
    them on CUDA)."""

    def t(*values):
        return torch.tensor(values, device=device)

    def full(n, value):
        return torch.full((n,), value, device=device)

    empty = kasmina_fast.gradient_stats([], [], 0, 0)
    only_seed = kasmina_fast.gradient_stats([], [full(4, 1.0)], 3, 3)
    nan = kasmina_fast.gradient_stats([t(1.0, float("nan"))], [full(2, 1.0)], 1, 1)
    inf_seed = kasmina_fast.gradient_stats([full(2, 1.0)], [t(float("inf"))], 1, 1)
    huge = kasmina_fast.gradient_stats([full(4, 1e30)], [full(4, 1e30)], 1, 1)
    assert torch.equal(empty.cpu(), torch.zeros(4))
    assert torch.equal(only_seed.cpu(), torch.tensor([0.0, 2.0, 0.0, 0.0]))
    assert nan[3] == 1.0 and math.isnan(nan[0]) and math.isnan(nan[2])
    assert inf_seed[3] == 1.0 and inf_seed[1] == float("inf") and inf_seed[2] == 10.0
    # squares overflow fp32 but not the fp64 accumulator: finite, no false alarm
    assert huge[3] == 0.0 and huge[2] == 1.0 and math.isclose(huge[0].item(), 2e30, rel_tol=1e-6)


def check_more_than_2_31_elements(device: str = "cpu") -> None:
    """One bf16 tensor of 2^31 + 2^20 + 3 elements (4.3 GB) between small ones,
    through the current backend: ones, except marked values past 2^31 and at
    their 32-bit aliases, so the sums of squares are exact integers and an
    offset that wraps at 2^31 or 2^32 reads the wrong marks (or faults).
    tests/ops/test_cuda.py runs it on CUDA."""
    n = 2**31 + 2**20 + 3
    big = torch.ones(n, device=device, dtype=torch.bfloat16)
    marks = {2**31 + 12345: 64.0, n - 1: 128.0, 12345: 2.0, 2**31 - 1: 4.0, 2**31 + 5: 8.0, 5: 0.0}
    for i, v in marks.items():
        big[i] = v
    want_big = n - len(marks) + sum(v * v for v in marks.values())  # exact in fp64
    first = torch.full((7,), 3.0, device=device)
    last = torch.full((5,), 2.0, device=device, dtype=torch.float16)
    norms = kasmina_fast.foreach_norm([first, big, last]).double().cpu()
    stats = kasmina_fast.gradient_stats([first, big], [last], 1, 1).double().cpu()
    del big
    want = torch.tensor([63.0, want_big, 20.0], dtype=torch.float64).sqrt()
    torch.testing.assert_close(norms, want.float().double(), rtol=0, atol=0)
    want_stats = torch.tensor([(63.0 + want_big) ** 0.5, 20.0**0.5], dtype=torch.float64)
    torch.testing.assert_close(stats[:2], want_stats.float().double(), rtol=0, atol=0)
    assert stats[3] == 0.0


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
    assert_close_rel(want_n, want_norms(ts).float().double(), 2e-6)
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
        want = want_norms(ts).float().double()
        for i in range(len(ts)):
            assert_close_rel(norms[i : i + 1], want[i : i + 1], 2e-6, f"{backend} norm[{i}]")
        assert_close_rel(stats, stats_want(ts[:k], ts[k:], *counts).float().double(), 4e-6, backend)
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


def test_list_reader_takes_plain_tensors_only():
    """kasmina_fast._C reads lists of exact torch.Tensor in C++ (csrc/python/list_ops.cpp);
    a list with anything else (a Parameter, a non-tensor) goes the torch.ops way, same result."""
    from kasmina_fast import _extension

    if not _extension.has_kernel("foreach_norm", "CPU"):
        pytest.skip("the C++ extension is not built here")
    from kasmina_fast import _C

    ts = [torch.randn(5), torch.randn(3, 4)]
    want = torch.stack([t.double().norm() for t in ts]).float()
    torch.testing.assert_close(_C.foreach_norm_list(ts, False), want)
    torch.testing.assert_close(_C.gradient_stats_list(ts[:1], ts[1:], 0, 0, False)[:2], want)
    mixed = [torch.nn.Parameter(ts[0].clone()), ts[1]]
    assert _C.foreach_norm_list(mixed, False) is None
    assert _C.gradient_stats_list(ts, mixed, 0, 0, False) is None
    with with_backend("cpp"):
        torch.testing.assert_close(kasmina_fast.foreach_norm(mixed), want)
        torch.testing.assert_close(kasmina_fast.gradient_stats(mixed[:1], mixed[1:])[:2], want)


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
    if backend != "reference":  # (the reference runs torch functions, not the ops)
        names = [n for n in mode.ops if "norm" in n or "stats" in n]
        assert len(names) == 3, mode.ops
    for g, w in zip(got, want):
        assert torch.equal(g, w)
