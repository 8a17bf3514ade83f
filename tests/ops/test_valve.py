"""kasmina_fast.valve on every backend and device against the fp64 reference: values
and all three gradients over dtypes x layouts x alpha kinds x shapes x isolate; the
contract's identities and bound; views; determinism; opcheck and gradcheck."""

from __future__ import annotations

import zlib

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import kasmina_fast
from kasmina_fast import _extension, reference
from tests.utils import (
    DTYPES,
    RTOL,
    STREAM_BYTES,
    assert_close_rel,
    cpu_backends,
    make,
    on,
    on_thread_counts,
    shapes,
    targets,
    view_of,
    view_triples,
    with_backend,
)

SHAPES = [(), (0,), (1,), (7,), (2, 0, 3), (2, 3, 5), (1, 1, 1, 1), (4, 3, 5, 7), (3, 8, 6, 6)]
LAYOUTS = ["contiguous", "channels_last", "view"]
ALPHAS = ["scalar", "scalar_learnable", "per_sample_learnable", "outside_learnable", "python"]
PER_SAMPLE = ("per_sample_learnable", "outside_learnable")
CASES = [
    pytest.param(shape, layout, kind, id=f"{list(shape)}-{layout}-{kind}")
    for shape in SHAPES
    for layout in LAYOUTS
    for kind in ALPHAS
    if (layout != "channels_last" or len(shape) == 4)
    and (layout != "view" or len(shape) >= 2)
    and (len(shape) > 0 or kind not in PER_SAMPLE)
]


def make_alpha(kind: str, shape, gen, device="cpu"):
    if kind == "python":
        return 0.37
    ashape = (shape[0], *([1] * (len(shape) - 1))) if kind in PER_SAMPLE else ()
    a = torch.rand(ashape, dtype=torch.float64, generator=gen)
    if kind == "outside_learnable":
        # below 0, inside, above 1, and exactly on both edges
        a = torch.linspace(-0.5, 1.5, a.numel(), dtype=torch.float64).reshape(ashape)
        if a.numel() >= 3:
            a.view(-1)[1], a.view(-1)[-2] = 0.0, 1.0
    return a.to(torch.float32).to(device).requires_grad_(kind.endswith("learnable"))


def run_valve(fn, host, seed, alpha, gout, isolate):
    """Forward + backward of ``fn(host, seed, alpha, isolate)`` on fresh leaves (alpha a
    tensor or a number); returns out and the three gradients (None where not asked)."""
    h = host.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    s = seed.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    a = alpha
    if isinstance(alpha, torch.Tensor):
        a = alpha.detach().clone().requires_grad_(alpha.requires_grad)
    out = fn(h, s, a, isolate)
    out.backward(gout)
    return out.detach(), h.grad, s.grad, (a.grad if isinstance(a, torch.Tensor) and a.requires_grad else None)


def check(backend, host, seed, alpha, gout, isolate, dtype):
    """``kasmina_fast.valve`` under ``backend`` against ``reference.valve`` in fp64 on the
    same (rounded) inputs. Yardsticks, the magnitudes of the terms: ``|host|`` for
    the value, ``|g| (1 + |host|)`` for a gradient element, the sum of ``|g host t|``
    over a sample for d_alpha."""
    a64 = (
        alpha.detach().double().requires_grad_(alpha.requires_grad)
        if isinstance(alpha, torch.Tensor)
        else torch.tensor(alpha, dtype=torch.float64)
    )
    h64, s64, g64 = (t.detach().double() for t in (host, seed, gout))
    want = run_valve(reference.valve, h64, s64, a64, g64, isolate)
    with with_backend(backend):
        got = run_valve(kasmina_fast.valve, host, seed, alpha, gout, isolate)
    rtol = RTOL[dtype]
    # out = h + h w t: where the two terms cancel (w = 1, t near -1) the error is one
    # rounding of the terms, |h|, not of the small result
    yard_out = h64.abs().max().item() if h64.numel() else 0.0
    yard = (g64.abs() * (1 + h64.abs())).max().item() if g64.numel() else 0.0
    for name, g, w, sc in zip(("out", "d_host", "d_seed"), got[:3], want[:3], (yard_out, yard, yard)):
        assert g.dtype == dtype, name
        assert_close_rel(g, w, rtol, f"{backend} {name}", sc)
    assert got[0].stride() == torch.empty_like(host).stride(), "output layout must follow host's"
    if want[3] is not None:
        assert got[3].dtype == alpha.dtype
        t = torch.tanh(s64 - h64)
        terms = (g64 * h64 * t).abs()
        terms = terms.sum_to_size(alpha.shape) if alpha.dim() else terms.sum()
        sc = terms.max().item() if terms.numel() else 0.0
        assert_close_rel(got[3], want[3], max(rtol, RTOL[torch.float32]), f"{backend} d_alpha", sc)


@pytest.mark.parametrize(("device", "backend"), targets("valve"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("isolate", [False, True], ids=["joint", "isolate"])
@pytest.mark.parametrize(("shape", "layout", "alpha_kind"), CASES)
def test_valve_matches_reference(device, backend, dtype, isolate, shape, layout, alpha_kind):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((str(dtype), layout, alpha_kind, shape)).encode()))
    host, seed, gout = (make(shape, dtype, layout, gen, device=device) for _ in range(3))
    check(backend, host, seed, make_alpha(alpha_kind, shape, gen, device), gout, isolate, dtype)


@pytest.mark.parametrize("backend", cpu_backends("valve"))
@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(0, 9), min_size=1, max_size=4).map(tuple),
    dtype=st.sampled_from(DTYPES),
    per_sample=st.booleans(),
    learnable=st.booleans(),
    isolate=st.booleans(),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
    seed_=st.integers(0, 2**31 - 1),
)
def test_valve_property(backend, shape, dtype, per_sample, learnable, isolate, scale, seed_):
    """Random shapes, alphas in [-0.2, 1.2] and residuals from tiny (tanh near 0) to
    large (tanh saturated at +-1)."""
    gen = torch.Generator().manual_seed(seed_)
    host = make(shape, dtype, generator=gen)
    seed = make(shape, dtype, generator=gen, scale=scale)
    gout = make(shape, dtype, generator=gen)
    ashape = (shape[0], *([1] * (len(shape) - 1))) if per_sample else ()
    alpha = (torch.rand(ashape, generator=gen) * 1.4 - 0.2).requires_grad_(learnable)
    check(backend, host, seed, alpha, gout, isolate, dtype)


@pytest.mark.parametrize(("device", "backend"), on("cpu", targets("valve")))
@settings(max_examples=30, deadline=None)
@given(
    shape=shapes(min_rank=2),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.bfloat16]),
    views=view_triples(),
    per_sample=st.booleans(),
    isolate=st.booleans(),
    seed_=st.integers(0, 2**31 - 1),
)
def test_valve_on_views(device, backend, shape, dtype, views, per_sample, isolate, seed_):
    """host, seed and the incoming gradient each in its own layout (tests/utils.VIEWS):
    the kernels take what is one dense block per sample, the fallback the rest, and
    the gradients reach the base tensors through the views."""
    gen = torch.Generator().manual_seed(seed_)
    (hb, hv), (sb, sv), (gb, gv) = (view_of(shape, kind, dim) for kind, dim in views)
    H, S = make(hb, dtype, generator=gen, device=device), make(sb, dtype, generator=gen, device=device)
    gout = gv(make(gb, dtype, generator=gen, device=device))
    ashape = (shape[0], *([1] * (len(shape) - 1))) if per_sample else ()
    A = (torch.rand(ashape, generator=gen, dtype=torch.float64) * 1.4 - 0.2).float().to(device)

    def run(op, H, S, A, gout):
        h, s, a = (t.clone().requires_grad_() for t in (H, S, A))
        out = op(hv(h), sv(s), a, isolate)
        out.backward(gout)
        return out.detach(), h.grad, s.grad, a.grad

    want = run(reference.valve, *(t.double() for t in (H, S, A, gout)))
    with with_backend(backend):
        got = run(kasmina_fast.valve, H, S, A, gout)
    # a base element's gradient adds every view element that shares it (expanded views)
    mags = run(reference.valve, *(t.double().abs() for t in (H, S, A, gout)))
    rtol = RTOL[dtype]
    assert_close_rel(got[0], want[0], rtol, f"{backend} out")
    for i, name in ((1, "d_host"), (2, "d_seed")):
        sc = (mags[i].abs().max().item() + want[i].abs().max().item()) * 4 if want[i].numel() else 0.0
        assert_close_rel(got[i], want[i], rtol, f"{backend} {name}", sc)
    sc = mags[3].abs().max().item() + want[3].abs().max().item() if want[3].numel() else 0.0
    assert_close_rel(got[3], want[3], max(rtol, RTOL[torch.float32]), f"{backend} d_alpha", 4 * sc)


@pytest.mark.parametrize("backend", cpu_backends("valve"))
@settings(max_examples=20, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    alpha=st.floats(-1.0, 2.0),
    scale=st.sampled_from([1e-3, 1.0, 100.0]),
    seed_=st.integers(0, 2**31 - 1),
)
def test_valve_identities_and_bound(backend, dtype, alpha, scale, seed_):
    """Exactly host at alpha <= 0 and where seed == host; within [1 - w, 1 + w] times
    host everywhere (w = clamp(alpha, 0, 1)), up to one rounding of the output."""
    gen = torch.Generator().manual_seed(seed_)
    host = make((3, 37), dtype, generator=gen)
    seed = make((3, 37), dtype, generator=gen, scale=scale)
    with with_backend(backend):
        assert torch.equal(kasmina_fast.valve(host, seed, min(alpha, 0.0)), host)
        assert torch.equal(kasmina_fast.valve(host, host.clone(), alpha), host)
        out = kasmina_fast.valve(host, seed, alpha).double()
    w = min(max(alpha, 0.0), 1.0)
    h = host.double()
    lo, hi = torch.minimum(h * (1 - w), h * (1 + w)), torch.maximum(h * (1 - w), h * (1 + w))
    slack = h.abs() * (2 * torch.finfo(dtype).eps)
    assert bool(((out >= lo - slack) & (out <= hi + slack)).all())


@pytest.mark.parametrize("backend", cpu_backends("valve"))
def test_isolate_changes_only_the_host_gradient(backend):
    """isolate drops the host's term through ``seed - host``: d_host differs by exactly
    d_seed, d_seed and d_alpha do not change, and the value is the same."""
    gen = torch.Generator().manual_seed(4)
    host, seed, gout = (torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    alpha = torch.rand(4, 1, 1, 1, generator=gen, dtype=torch.float64).requires_grad_()
    with with_backend(backend):
        joint = run_valve(kasmina_fast.valve, host, seed, alpha, gout, False)
        iso = run_valve(kasmina_fast.valve, host, seed, alpha, gout, True)
    assert torch.equal(joint[0], iso[0]) and torch.equal(joint[2], iso[2]) and torch.equal(joint[3], iso[3])
    torch.testing.assert_close(iso[1] - joint[1], joint[2], rtol=1e-12, atol=1e-12)
    assert (joint[2].abs() > 1e-3).any()  # the difference is not vacuous


@pytest.mark.parametrize("backend", cpu_backends("valve"))
def test_isolated_seed_matches_a_detached_seed_input(backend):
    """The contract's use: ``seed = f(host.detach())`` with isolate=True gives host the
    same gradient as autograd through the reference with the detached input."""
    torch.manual_seed(0)
    f = torch.nn.Linear(6, 6).double()
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(0.7, dtype=torch.float64)
    grads = []
    for fn in (reference.valve, kasmina_fast.valve):
        x.grad = None
        with with_backend(backend):
            y = fn(x, f(x.detach()), alpha, True)
        y.square().sum().backward()
        grads.append(x.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", cpu_backends("valve"))
def test_nan_propagates(backend):
    host, seed, gout = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    host[0, 1, 2] = float("nan")
    seed[1, 0, 0] = float("inf")
    alpha = torch.tensor([[[0.25]], [[float("nan")]]], requires_grad=True)
    want = run_valve(reference.valve, host.double(), seed.double(), alpha.double(), gout.double(), False)
    with with_backend(backend):
        got = run_valve(kasmina_fast.valve, host, seed, alpha, gout, False)
    for g, w, name in zip(got, want, ("out", "d_host", "d_seed", "d_alpha")):
        assert_close_rel(g, w, 1e-6, name)
    assert torch.isnan(got[0][0, 1, 2]) and torch.isnan(got[0][1]).all()


@pytest.mark.parametrize("backend", cpu_backends("valve"))
def test_backward_is_deterministic(backend):
    gen = torch.Generator().manual_seed(11)
    shape = (8, 32, 12, 12)
    host, seed, gout = (
        torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last) for _ in range(3)
    )
    alpha = torch.rand(8, 1, 1, 1, generator=gen).requires_grad_()
    with with_backend(backend):
        first = run_valve(kasmina_fast.valve, host, seed, alpha, gout, False)
        second = run_valve(kasmina_fast.valve, host, seed, alpha, gout, False)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.skipif("cpp" not in cpu_backends(), reason="needs the C++ extension")
@pytest.mark.parametrize("shape", [(2, 4), (3, 40000)], ids=str)
def test_cpp_result_bits_do_not_depend_on_the_thread_count(shape):
    gen = torch.Generator().manual_seed(5)
    host, seed, gout = (torch.randn(shape, generator=gen) for _ in range(3))
    alpha = torch.rand(shape[0], 1, generator=gen).requires_grad_()
    with with_backend("cpp"):
        runs = on_thread_counts(lambda: run_valve(kasmina_fast.valve, host, seed, alpha, gout, True))
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


@pytest.mark.skipif("cpp" not in cpu_backends(), reason="needs the C++ extension")
@pytest.mark.parametrize("grads", ["all", "host", "seed", "alpha"])
def test_cpp_large_outputs_stream_correctly(grads):
    """Outputs past STREAM_BYTES go out with streaming stores (whole lines) and plain
    stores at the chunks' partial lines (odd sample lengths)."""
    N = STREAM_BYTES // 4 // 3 + 1001
    gen = torch.Generator().manual_seed(9)
    host, seed, gout = (torch.randn(3, N, generator=gen) for _ in range(3))
    alpha = torch.tensor([[0.3], [0.8], [1.4]]).requires_grad_(grads in ("all", "alpha"))
    h = host.clone().requires_grad_(grads in ("all", "host"))
    s = seed.clone().requires_grad_(grads in ("all", "seed"))
    with with_backend("cpp"):
        out = kasmina_fast.valve(h, s, alpha)
    out.backward(gout)
    want = run_valve(reference.valve, host.double(), seed.double(), alpha.double(), gout.double(), False)
    assert_close_rel(out.detach(), want[0], RTOL[torch.float32], "out")
    for leaf, w, name in ((h, want[1], "d_host"), (s, want[2], "d_seed")):
        assert (leaf.grad is not None) == leaf.requires_grad, name
        if leaf.requires_grad:
            assert_close_rel(leaf.grad, w, RTOL[torch.float32], name, 5.0)
    if alpha.requires_grad:
        sc = (gout.double() * host.double()).abs().sum(1).max().item()
        assert_close_rel(alpha.grad, want[3], RTOL[torch.float32], "d_alpha", sc)


# ---- the op's registration -------------------------------------------------------------------

needs_library = pytest.mark.skipif(not _extension.LOADED, reason="the op library is not built here")


def valve_samples():
    cl = torch.channels_last
    yield torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), torch.tensor(0.3), False
    yield (
        torch.randn(4, 3, 5, 5, requires_grad=True).to(memory_format=cl),
        torch.randn(4, 3, 5, 5, requires_grad=True).to(memory_format=cl),
        torch.rand(4, 1, 1, 1, requires_grad=True),
        True,
    )
    yield (
        torch.randn(6, 7, dtype=torch.float64, requires_grad=True),
        torch.randn(6, 7, dtype=torch.float64, requires_grad=True),
        torch.tensor(1.4, dtype=torch.float64, requires_grad=True),
        False,
    )
    yield (
        torch.randn(3, 2, dtype=torch.bfloat16),
        torch.randn(3, 2, dtype=torch.bfloat16),
        torch.rand(3, 1),
        True,
    )
    yield torch.randn(0, 3), torch.randn(0, 3), torch.rand(0, 1, requires_grad=True), False


@needs_library
@pytest.mark.parametrize("i", range(5))
@pytest.mark.parametrize("backend", cpu_backends("valve"))
def test_opcheck_valve(backend, i):
    args = list(valve_samples())[i]
    with with_backend(backend):
        torch.library.opcheck(torch.ops.kasmina.valve.default, args)


@needs_library
@pytest.mark.parametrize("isolate", [False, True])
@pytest.mark.parametrize(
    "mask", [(True, True, True), (True, False, False), (False, True, False), (False, False, True)]
)
@pytest.mark.parametrize("backend", cpu_backends("valve"))
def test_opcheck_valve_backward(backend, mask, isolate):
    g, h, s = (torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last) for _ in range(3))
    with with_backend(backend):
        torch.library.opcheck(
            torch.ops.kasmina.valve_backward.default, (g, h, s, torch.rand(4, 1, 1, 1), isolate, list(mask))
        )


def test_valve_backward_checks_grad():
    if not _extension.LOADED:
        pytest.skip("the op library is not built here")
    with pytest.raises(ValueError, match="kasmina::valve_backward: grad must match host"):
        h = torch.randn(4, 3)
        torch.ops.kasmina.valve_backward(torch.randn(3), h, h, torch.tensor(0.5), False, [True, True, False])


# ---- the C++ kernels' tanh --------------------------------------------------------------------


def _tanh_ulps() -> float:
    """The worst error, in units in the last place of fp32, of the C++ kernels' tanh
    over [-20, 20] and the edges, read through the op: one element per sample, host
    and the incoming gradient 1, so that ``d_alpha[b] = tanh(seed[b] - 1)`` in fp32."""
    x = torch.cat([torch.linspace(-20, 20, 400_001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 0.5, 43.0])])
    seed = (x + 1).float().unsqueeze(1)
    host = torch.ones_like(seed)
    alpha = torch.full((seed.shape[0], 1), 0.5, requires_grad=True)
    with with_backend("cpp"):
        kasmina_fast.valve(host, seed, alpha).backward(torch.ones_like(seed))
    got = alpha.grad.double().squeeze(1)
    want = torch.tanh((seed - host).double().squeeze(1))  # the fp32 difference, as the kernel has it
    ulp = torch.finfo(torch.float32).eps * torch.clamp(want.abs().float().double(), min=2**-126) / 2
    return ((got - want).abs() / ulp).max().item()


@pytest.mark.skipif("cpp" not in cpu_backends(), reason="needs the C++ extension")
def test_cpp_tanh_is_within_a_few_ulp():
    assert _tanh_ulps() <= 4.0


@pytest.mark.skipif("cpp" not in cpu_backends(), reason="needs the C++ extension")
def test_cpp_baseline_loops_match_the_reference(tmp_path):
    """The baseline loops (what a CPU without AVX2 runs; KASMINA_FAST_CPU_BASELINE=1
    forces them here): the tanh bound and a forward + backward against the reference."""
    import os
    import subprocess
    import sys

    code = (
        "import torch, kasmina_fast\n"
        "from tests.ops.test_valve import _tanh_ulps, check, make\n"
        "assert _tanh_ulps() <= 4.0, _tanh_ulps()\n"
        "g = torch.Generator().manual_seed(1)\n"
        "for dt in (torch.float32, torch.bfloat16, torch.float64):\n"
        "    h, s, go = (make((3, 8, 5, 7), dt, 'channels_last', g) for _ in range(3))\n"
        "    a = torch.rand(3, 1, 1, 1, generator=g).requires_grad_()\n"
        "    check('cpp', h, s, a, go, False, dt)\n"
        "print('OK')\n"
    )
    env = dict(os.environ, KASMINA_FAST_CPU_BASELINE="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
