"""kasmina_fast.blend on every backend and device against the fp64 reference:
values and all three gradients over dtypes x layouts x alpha kinds x shapes."""

from __future__ import annotations

import contextlib
import zlib

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import kasmina_fast
from tests.utils import (
    DTYPES,
    RTOL,
    STREAM_BYTES,
    assert_close_rel,
    cpu_backends,
    make,
    on,
    on_thread_counts,
    oracle_blend,
    run_blend,
    shapes,
    targets,
    view_of,
    view_triples,
    with_backend,
)

SHAPES = [(), (0,), (1,), (7,), (3, 5), (2, 0, 3), (2, 3, 5), (1, 1, 1, 1), (4, 3, 5, 7), (3, 8, 6, 6)]
LAYOUTS = ["contiguous", "channels_last", "view"]
ALPHAS = ["scalar", "scalar_learnable", "per_sample", "per_sample_learnable", "outside_learnable", "python"]
PER_SAMPLE = ("per_sample", "per_sample_learnable", "outside_learnable")
# every meaningful (shape, layout, alpha) case: channels_last is 4-D only, a 0-d host has no batch
CASES = [
    pytest.param(shape, layout, kind, id=f"{list(shape)}-{layout}-{kind}")
    for shape in SHAPES
    for layout in LAYOUTS
    for kind in ALPHAS
    if (layout != "channels_last" or len(shape) == 4) and (len(shape) > 0 or kind not in PER_SAMPLE)
]


def make_alpha(kind: str, shape, gen, device="cpu"):
    if kind == "python":
        return 0.37
    per_sample = kind in PER_SAMPLE
    ashape = (shape[0], *([1] * (len(shape) - 1))) if per_sample else ()
    a = torch.rand(ashape, dtype=torch.float64, generator=gen)
    if kind == "outside_learnable":
        # values below 0, inside, above 1, and exactly on both edges
        a = torch.linspace(-0.5, 1.5, a.numel(), dtype=torch.float64).reshape(ashape)
        if a.numel() >= 3:
            a.view(-1)[1], a.view(-1)[-2] = 0.0, 1.0
    return a.to(torch.float32).to(device).requires_grad_(kind.endswith("learnable"))


def check(backend, host, seed, alpha, dtype, fn=None):
    """``kasmina_fast.blend`` under ``backend`` (or ``fn(host, seed, alpha)`` called
    directly: a tensor alpha only) against the fp64 oracle."""
    gen = torch.Generator().manual_seed(7)
    gout = make(host.shape, dtype, "contiguous", gen, device=host.device)
    if host.dim() == 4 and host.is_contiguous(memory_format=torch.channels_last):
        gout = gout.contiguous(memory_format=torch.channels_last)
    a = alpha if isinstance(alpha, torch.Tensor) else torch.tensor(alpha, dtype=torch.float64)
    want = oracle_blend(host, seed, a, gout)
    with with_backend(backend) if fn is None else contextlib.nullcontext():
        got = (
            run_blend(fn or kasmina_fast.blend, host, seed, alpha, gout)
            if isinstance(alpha, torch.Tensor)
            else (run_blend(lambda h, s, _a: kasmina_fast.blend(h, s, alpha), host, seed, a, gout))
        )
    compare(backend, dtype, got, want, host, seed, gout, alpha)


def compare(backend, dtype, got, want, host, seed, gout, alpha, alpha_in=None, sums=None):
    """``got`` = (out, d_host, d_seed, d_alpha) of ``backend`` against the oracle's
    ``want``; ``host``, ``seed``, ``gout`` and ``alpha_in`` (default ``alpha``) are
    what the op was handed, ``alpha`` the leaf whose gradient ``got[3]`` is.

    ``sums``: when the leaves are bases of broadcast views, each gradient element is
    a sum over the view elements that share it, and its rounding error scales with
    the sum of their magnitudes. ``sums`` = (d_host, d_seed) of the oracle run on
    ``|gout|`` (those sums exactly); they widen the yardstick of d_host and d_seed."""
    alpha_in = alpha if alpha_in is None else alpha_in
    rtol = RTOL[dtype]
    mag_h, mag_s = sums or (None, None)
    mags = [0.0 if m is None or m.numel() == 0 else m.max().item() for m in (mag_h, mag_s)]
    for name, g, w, sc in zip(("out", "d_host", "d_seed"), got[:3], want[:3], (0.0, *mags)):
        assert g.dtype == dtype, name
        assert_close_rel(g, w, rtol, f"{backend} {name}", sc)
    # the op's contract: out = empty_like(host), layout kept
    assert got[0].stride() == torch.empty_like(host).stride(), "output layout must follow host's"
    if isinstance(alpha, torch.Tensor) and alpha.requires_grad:
        assert got[3].dtype == alpha.dtype
        # d_alpha is a sum of N products: scale the tolerance with the rounding of its inputs
        # a sum's rounding error scales with the sum of its terms' magnitudes, not
        # with the (possibly cancelled) sum itself
        terms = (gout.double() * (seed.double() - host.double())).abs().sum_to_size(alpha_in.shape)
        # an alpha broadcast over samples (stride 0) gets the sum over all of them
        shared = alpha_in.dim() > 0 and alpha_in.stride(0) == 0 and alpha_in.shape[0] > 1
        sc = (terms.sum() if shared else terms.max()).item() if terms.numel() else 0.0
        assert_close_rel(got[3], want[3], max(rtol, RTOL[torch.float32]), f"{backend} d_alpha", sc)


@pytest.mark.parametrize(("device", "backend"), targets())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "layout", "alpha_kind"), CASES)
def test_blend_matches_reference(device, backend, dtype, shape, layout, alpha_kind):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((str(dtype), layout, alpha_kind, shape)).encode()))
    host, seed = (
        make(shape, dtype, layout, gen, device=device),
        make(shape, dtype, layout, gen, device=device),
    )
    check(backend, host, seed, make_alpha(alpha_kind, shape, gen, device), dtype)


@pytest.mark.parametrize("backend", cpu_backends())
def test_mixed_layouts_and_large_blocks(backend):
    """host channels_last, seed contiguous, several chunks per sample (strided fallback + dense path)."""
    gen = torch.Generator().manual_seed(3)
    shape = (3, 16, 33, 35)  # 18480 elements per sample: more than one 16384 chunk
    host = make(shape, torch.float32, "channels_last", gen)
    for seed in (
        make(shape, torch.float32, "contiguous", gen),
        make(shape, torch.float32, "channels_last", gen),
    ):
        alpha = torch.rand(3, 1, 1, 1, generator=gen).requires_grad_()
        check(backend, host, seed, alpha, torch.float32)


@pytest.mark.parametrize("backend", cpu_backends())
@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(0, 9), min_size=1, max_size=4).map(tuple),
    dtype=st.sampled_from(DTYPES),
    per_sample=st.booleans(),
    learnable=st.booleans(),
    seed_=st.integers(0, 2**31 - 1),
)
def test_blend_property(backend, shape, dtype, per_sample, learnable, seed_):
    gen = torch.Generator().manual_seed(seed_)
    host, seed = make(shape, dtype, "contiguous", gen), make(shape, dtype, "contiguous", gen)
    ashape = (shape[0], *([1] * (len(shape) - 1))) if per_sample else ()
    alpha = (torch.rand(ashape, generator=gen) * 1.4 - 0.2).requires_grad_(learnable)
    check(backend, host, seed, alpha, dtype)


ALPHA_VIEWS = ("scalar", "per_sample", "per_sample_strided", "per_sample_expanded", "python")
#: the arguments of check_views
VIEW_CASES = dict(
    shape=shapes(),
    dtype=st.sampled_from(DTYPES),
    views=view_triples(),
    alpha_kind=st.sampled_from(ALPHA_VIEWS),
    alpha_dtype=st.sampled_from([torch.float32, torch.float64, None]),
    learnable=st.booleans(),
    seed_=st.integers(0, 2**31 - 1),
)


@pytest.mark.parametrize(("device", "backend"), on("cuda", targets()))
@settings(max_examples=12, deadline=None)
@given(**VIEW_CASES)
def test_blend_on_views_on_cuda(
    device, backend, shape, dtype, views, alpha_kind, alpha_dtype, learnable, seed_
):
    check_views(backend, device, shape, dtype, views, alpha_kind, alpha_dtype, learnable, seed_)


@pytest.mark.parametrize(("device", "backend"), on("cpu", targets()))
@settings(max_examples=40, deadline=None)
@given(**VIEW_CASES)
def test_blend_on_views(device, backend, shape, dtype, views, alpha_kind, alpha_dtype, learnable, seed_):
    """host, seed and the incoming gradient each in its own layout (``VIEWS``: dense
    but permuted, batch not outermost, strided, broadcast with stride 0, offset), and
    alpha per sample as a strided or broadcast view or in another dtype than host
    (None: host's): every backend must equal the fp64 oracle run on the same views,
    gradients reaching the base tensors through them. The kernels take what is one
    dense block per sample and leave the rest to the fallback; no layout may be
    read wrong. (On CUDA: test_blend_on_views_on_cuda, with fewer examples.)"""
    check_views(backend, device, shape, dtype, views, alpha_kind, alpha_dtype, learnable, seed_)


def check_views(backend, device, shape, dtype, views, alpha_kind, alpha_dtype, learnable, seed_, fn=None):
    """test_blend_on_views's check, of ``kasmina_fast.blend`` under ``backend`` or of
    ``fn(host, seed, alpha)`` (a tensor alpha only) called directly."""
    gen = torch.Generator().manual_seed(seed_)
    (hb, hv), (sb, sv), (gb, gv) = (view_of(shape, kind, dim) for kind, dim in views)
    H, S = make(hb, dtype, generator=gen, device=device), make(sb, dtype, generator=gen, device=device)
    gout = gv(make(gb, dtype, generator=gen, device=device))
    B, ones = shape[0], (1,) * (len(shape) - 1)
    abase, av = {
        "scalar": ((), lambda a: a),
        "per_sample": ((B, *ones), lambda a: a),
        # every other element of a longer vector, 1 element in
        "per_sample_strided": ((2 * B + 1,), lambda a: a.as_strided((B, *ones), (2, *ones), 1)),
        "per_sample_expanded": ((1, *ones), lambda a: a.expand(B, *ones)),
        "python": ((), lambda a: a),
    }[alpha_kind]
    A = torch.rand(abase, generator=gen, dtype=torch.float64) * 1.4 - 0.2
    A = A.to(alpha_dtype or dtype).to(device)
    learn = learnable and alpha_kind != "python"

    def run(op, H, S, A, gout):
        h, s = H.clone().requires_grad_(), S.clone().requires_grad_()
        a = A.clone().requires_grad_(learn)
        alpha = a.item() if alpha_kind == "python" and op is kasmina_fast.blend else av(a)
        out = op(hv(h), sv(s), alpha)
        out.backward(gout)
        return out.detach(), h.grad, s.grad, a.grad

    want = run(kasmina_fast.reference.blend, *(t.double() for t in (H, S, A, gout)))
    with with_backend(backend) if fn is None else contextlib.nullcontext():
        got = run(fn or kasmina_fast.blend, H, S, A, gout)
    # the sums of magnitudes behind each gradient element
    _, mag_h, mag_s, _ = run(kasmina_fast.reference.blend, *(t.double() for t in (H, S, A, gout.abs())))
    a = A.requires_grad_(learn)
    compare(backend, dtype, got, want, hv(H), sv(S), gout, a, av(a), sums=(mag_h, mag_s))


@pytest.mark.skipif("cpp" not in cpu_backends(), reason="needs the C++ extension")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("grads", ["all", "host", "seed", "alpha"])
def test_cpp_large_outputs_stream_correctly(dtype, grads):
    """Outputs past STREAM_BYTES go out as whole cache lines with streaming stores;
    the lines a 16384-element chunk only partly covers (every chunk here: the
    samples have an odd length) are written plainly. Forward and each gradient
    subset of the backward against the fp64 oracle."""
    size = torch.tensor([], dtype=dtype).element_size()
    N = STREAM_BYTES // size // 3 + 1001  # 3 samples: just over STREAM_BYTES in all
    gen = torch.Generator().manual_seed(9)
    host, seed = make((3, N), dtype, generator=gen), make((3, N), dtype, generator=gen)
    alpha = torch.tensor([[0.3], [0.8], [1.4]], dtype=torch.float32)
    gout = make((3, N), dtype, generator=gen)
    assert host.nbytes >= STREAM_BYTES
    h, s = (
        host.clone().requires_grad_(grads in ("all", "host")),
        seed.clone().requires_grad_(grads in ("all", "seed")),
    )
    a = alpha.clone().requires_grad_(grads in ("all", "alpha"))
    with with_backend("cpp"):
        out = kasmina_fast.blend(h, s, a)
    out.backward(gout)
    want = oracle_blend(host, seed, alpha.requires_grad_(), gout)
    assert_close_rel(out.detach(), want[0], RTOL[dtype], "out")
    for leaf, w, name in ((h, want[1], "d_host"), (s, want[2], "d_seed")):
        assert (leaf.grad is not None) == leaf.requires_grad, name
        if leaf.requires_grad:
            assert_close_rel(leaf.grad, w, RTOL[dtype], name)
    if a.requires_grad:
        sc = (gout.double() * (seed.double() - host.double())).abs().sum(1).max().item()
        assert_close_rel(a.grad, want[3], RTOL[torch.float32], "d_alpha", sc)


@pytest.mark.parametrize("backend", cpu_backends())
def test_nan_propagates(backend):
    host = torch.randn(2, 3, 4, 4)
    seed = torch.randn(2, 3, 4, 4)
    host[0, 1, 2, 3] = float("nan")
    seed[1, 0, 0, 0] = float("nan")
    alpha = torch.tensor([[[[0.25]]], [[[float("nan")]]]], requires_grad=True)
    gout = torch.randn(2, 3, 4, 4)
    with with_backend(backend):
        got = run_blend(kasmina_fast.blend, host, seed, alpha, gout)
    want = oracle_blend(host, seed, alpha, gout)
    for g, w, name in zip(got, want, ("out", "d_host", "d_seed", "d_alpha")):
        assert_close_rel(g, w, 1e-6, name)
    assert torch.isnan(got[0][0, 1, 2, 3]) and torch.isnan(got[0][1]).all()


@pytest.mark.parametrize("backend", cpu_backends())
def test_backward_is_deterministic(backend):
    gen = torch.Generator().manual_seed(11)
    host, seed = (
        make((8, 32, 24, 24), torch.float32, "channels_last", gen),
        make((8, 32, 24, 24), torch.float32),
    )
    seed = seed.contiguous(memory_format=torch.channels_last)
    alpha = torch.rand(8, 1, 1, 1, generator=gen).requires_grad_()
    gout = torch.randn(host.shape, generator=gen).contiguous(memory_format=torch.channels_last)
    with with_backend(backend):
        first = run_blend(kasmina_fast.blend, host, seed, alpha, gout)
        second = run_blend(kasmina_fast.blend, host, seed, alpha, gout)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(2, 4), (16, 64, 4, 4), (3, 40000)], ids=str)
def test_cpp_result_bits_do_not_depend_on_the_thread_count(shape):
    """The CPU kernels split the work into fixed tasks and add partial sums in task
    order; the thread count (and whether a small op runs threaded at all) only moves
    tasks between threads, so every output, d_alpha included, has the same bits."""
    if "cpp" not in cpu_backends():
        pytest.skip("the C++ extension is not built here")
    gen = torch.Generator().manual_seed(5)
    host, seed, gout = (torch.randn(shape, generator=gen) for _ in range(3))
    alpha = torch.rand(shape[0], *[1] * (len(shape) - 1), generator=gen).requires_grad_()
    with with_backend("cpp"):
        runs = on_thread_counts(lambda: run_blend(kasmina_fast.blend, host, seed, alpha, gout))
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend", cpu_backends())
def test_only_requested_gradients(backend):
    """Host frozen, alpha fixed: only the seed receives a gradient, and it is right."""
    host = torch.randn(4, 5)
    seed = torch.randn(4, 5, requires_grad=True)
    with with_backend(backend):
        out = kasmina_fast.blend(host, seed, torch.tensor(0.25))
    out.backward(torch.ones_like(out))
    assert host.grad is None
    torch.testing.assert_close(seed.grad, torch.full_like(seed, 0.25))


@pytest.mark.parametrize("backend", cpu_backends())
def test_spec_alias(backend):
    assert kasmina_fast.blend_with_isolation is kasmina_fast.blend
    host, seed = torch.randn(3, 4), torch.randn(3, 4)
    with with_backend(backend):
        torch.testing.assert_close(kasmina_fast.blend_with_isolation(host, seed, 1.0), seed)
        torch.testing.assert_close(kasmina_fast.blend(host, seed, 0.0), host)
