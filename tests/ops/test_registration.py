"""The torch.library registration: the seven public names and their schemas,
opcheck and gradcheck under every backend (valve's opchecks: test_valve.py), and
the eager-reference fallback used when the op library is absent."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import kasmina_fast
from kasmina_fast import _extension
from tests.utils import cpu_backends, with_backend

#: The public ops and their schemas, as csrc/ops.cpp defines them (the one definition).
SCHEMAS = {
    "blend": "blend(Tensor host, Tensor seed, Tensor alpha) -> Tensor",
    "blend_backward": (
        "blend_backward(Tensor grad, Tensor host, Tensor seed, Tensor alpha, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)"
    ),
    "valve": "valve(Tensor host, Tensor seed, Tensor alpha, bool isolate=False) -> Tensor",
    "valve_backward": (
        "valve_backward(Tensor grad, Tensor host, Tensor seed, Tensor alpha, bool isolate, "
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor)"
    ),
    "ste": "ste(Tensor host, Tensor seed) -> Tensor",
    "foreach_norm": "foreach_norm(Tensor[] tensors) -> Tensor",
    "gradient_stats": (
        "gradient_stats(Tensor[] host_grads, Tensor[] seed_grads, int host_params, int seed_params) -> Tensor"
    ),
}

needs_library = pytest.mark.skipif(not _extension.LOADED, reason="the op library is not built here")


@needs_library
def test_the_namespace_holds_the_public_ops_only():
    """One name per op: every backend runs under these seven, none adds its own."""
    for name in kasmina_fast.available():
        with with_backend(name):
            names = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("kasmina::")}
            assert names == {f"kasmina::{n}" for n in SCHEMAS}, name


@needs_library
@pytest.mark.parametrize("name", list(SCHEMAS))
def test_schema_is_the_documented_one(name):
    op = getattr(torch.ops.kasmina, name).default
    assert str(op._schema) == f"kasmina::{SCHEMAS[name]}"


@needs_library
def test_norm_ops_are_cudagraph_unsafe_for_inductor():
    """The norm ops carry the cudagraph_unsafe tag (csrc/ops.cpp says why), the others not."""
    tagged = {n for n in SCHEMAS if torch.Tag.cudagraph_unsafe in getattr(torch.ops.kasmina, n).default.tags}
    assert tagged == {"foreach_norm", "gradient_stats"}


def blend_samples():
    cl = torch.channels_last
    yield torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), torch.tensor(0.3)
    yield (
        torch.randn(4, 3, 5, 5, requires_grad=True).to(memory_format=cl),
        torch.randn(4, 3, 5, 5, requires_grad=True).to(memory_format=cl),
        torch.rand(4, 1, 1, 1, requires_grad=True),
    )
    yield (
        torch.randn(6, 7, dtype=torch.float64, requires_grad=True),
        torch.randn(6, 7, dtype=torch.float64, requires_grad=True),
        torch.tensor(1.4, dtype=torch.float64, requires_grad=True),
    )
    yield torch.randn(3, 2, dtype=torch.bfloat16), torch.randn(3, 2, dtype=torch.bfloat16), torch.rand(3, 1)
    yield torch.randn(0, 3), torch.randn(0, 3), torch.rand(0, 1, requires_grad=True)


@pytest.mark.parametrize("i", range(5))
@pytest.mark.parametrize("backend", cpu_backends())
def test_opcheck_blend(backend, i):
    args = list(blend_samples())[i]
    with with_backend(backend):
        torch.library.opcheck(torch.ops.kasmina.blend.default, args)


@pytest.mark.parametrize(
    "mask", [(True, True, True), (True, True, False), (False, True, False), (False, False, True)]
)
@pytest.mark.parametrize("backend", cpu_backends())
def test_opcheck_blend_backward(backend, mask):
    g, h, s = (torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last) for _ in range(3))
    with with_backend(backend):
        torch.library.opcheck(
            torch.ops.kasmina.blend_backward.default, (g, h, s, torch.rand(4, 1, 1, 1), list(mask))
        )


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("backend", cpu_backends())
def test_opcheck_ste(backend, requires_grad):
    h = torch.randn(2, 3, 4, 4, requires_grad=requires_grad).to(memory_format=torch.channels_last)
    s = torch.randn(2, 3, 4, 4, requires_grad=requires_grad)
    with with_backend(backend):
        torch.library.opcheck(torch.ops.kasmina.ste.default, (h, s))


@pytest.mark.parametrize(
    "tensors",
    [[], [torch.randn(3, 4), torch.randn(5, dtype=torch.bfloat16), torch.zeros(0)], [torch.randn(2, 3).t()]],
)
@pytest.mark.parametrize("backend", cpu_backends())
def test_opcheck_foreach_norm(backend, tensors):
    with with_backend(backend):
        torch.library.opcheck(torch.ops.kasmina.foreach_norm.default, (tensors,))


@pytest.mark.parametrize("lists", [([], []), ([torch.randn(3, 4)], [torch.randn(7)]), ([], [torch.randn(2)])])
@pytest.mark.parametrize("backend", cpu_backends())
def test_opcheck_gradient_stats(backend, lists):
    with with_backend(backend):
        torch.library.opcheck(torch.ops.kasmina.gradient_stats.default, (*lists, 100, 10))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("op", ["blend", "valve"])
def test_gradcheck(op, backend, per_sample, layout):
    """gradcheck in fp64 of blend and of the joint (not isolated) valve, which is the
    true derivative of its value; alpha inside (0, 1) and clamped (d_alpha 0)."""
    fn = getattr(kasmina_fast, op)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    h = torch.randn(3, 2, 3, 4, dtype=torch.float64).to(memory_format=fmt).requires_grad_()
    s = torch.randn(3, 2, 3, 4, dtype=torch.float64).to(memory_format=fmt).requires_grad_()
    # keep alpha away from the clamp's kinks at 0 and 1, where the derivative jumps
    a = (
        torch.tensor([0.2, 0.55, 0.8], dtype=torch.float64).view(3, 1, 1, 1)
        if per_sample
        else torch.tensor(0.4, dtype=torch.float64)
    )
    a.requires_grad_()
    with with_backend(backend):
        assert torch.autograd.gradcheck(fn, (h, s, a))
        a_out = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)  # clamped: d_alpha is 0
        assert torch.autograd.gradcheck(fn, (h, s, a_out))


@pytest.mark.parametrize("backend", cpu_backends())
def test_gradcheck_ste(backend):
    """d/d_host is the true derivative (gradcheck); d/d_seed is the estimator's
    identity by definition (the value does not depend on seed, so numerical
    differentiation would say 0): checked exactly instead."""
    h = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    s = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    with with_backend(backend):
        assert torch.autograd.gradcheck(lambda host: kasmina_fast.ste(host, s.detach()), (h,))
        g = torch.randn(3, 4, dtype=torch.float64)
        d_h, d_s = torch.autograd.grad(kasmina_fast.ste(h, s), (h, s), g)
    assert torch.equal(d_h, g) and torch.equal(d_s, g)


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )


def test_without_the_library_the_functions_are_the_reference():
    """KASMINA_FAST_NO_EXTENSION=1: the package imports, says why no backend is available,
    defines no op, and its functions compute the reference with the same checks."""
    proc = run_python(
        """
        import torch, kasmina_fast
        from kasmina_fast import reference
        assert kasmina_fast.available() == [], kasmina_fast.available()
        st = kasmina_fast.backends.status()
        assert all("KASMINA_FAST_NO_EXTENSION" in why for why in st.values()), st
        assert not hasattr(torch.ops.kasmina, "blend")
        assert kasmina_fast.backends.active() == {"cpu": "reference", "cuda": "reference"}
        h = torch.randn(4, 3, 5, 5, requires_grad=True)
        s = torch.randn(4, 3, 5, 5, requires_grad=True)
        a = torch.rand(4, 1, 1, 1, requires_grad=True)
        out = kasmina_fast.blend(h, s, a)
        torch.testing.assert_close(out, reference.blend(h, s, a))
        out.sum().backward()
        torch.testing.assert_close(a.grad, (s - h).detach().sum((1, 2, 3), keepdim=True))
        torch.testing.assert_close(kasmina_fast.ste(h, s), h)
        ts = [h.detach(), s.detach()]
        torch.testing.assert_close(kasmina_fast.foreach_norm(ts), reference.foreach_norm(ts))
        torch.testing.assert_close(
            kasmina_fast.gradient_stats(ts[:1], ts[1:], 3, 1), reference.gradient_stats(ts[:1], ts[1:], 3, 1)
        )
        try:
            kasmina_fast.blend(h, s[:2], a)
        except ValueError as e:
            assert "kasmina::blend: seed must have the shape of host" in str(e)
        else:
            raise AssertionError("bad input must be refused")
        for name in ("cpp", "triton"):
            try:
                with kasmina_fast.use_backend(name):
                    pass
            except RuntimeError as e:
                assert "not available" in str(e)
            else:
                raise AssertionError(name + " must be refused")
        print("OK")
        """,
        KASMINA_FAST_NO_EXTENSION="1",
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


@needs_library
def test_auto_runs_the_library_kernels():
    assert "cpp" in kasmina_fast.available()
    assert _extension.has_kernel("blend", "CPU") and _extension.has_kernel("blend", "Autograd")
    assert kasmina_fast.backends.active()["cpu"] == "cpp"
