"""The torch.library registration: schemas, opcheck, gradcheck, and the
pure-Python fallback used when the C++ extension is absent."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import kasmina_fast
from kasmina_fast import _extension
from kasmina_fast.ops.schemas import CUDAGRAPH_UNSAFE, SCHEMAS
from tests.utils import cpu_backends, with_backend


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_schema_is_the_documented_one(name):
    op = getattr(torch.ops.kasmina, name).default
    assert str(op._schema) == f"kasmina::{SCHEMAS[name]}"


def test_norm_ops_are_cudagraph_unsafe_for_inductor():
    """The norm ops and their Triton twins carry the cudagraph_unsafe tag, the others
    not (ops/schemas.py says why); the extension's definitions (or the Python ones)."""
    names = [*SCHEMAS, *(f"triton_{n}" for n in ("blend", "ste", *CUDAGRAPH_UNSAFE))]
    names = [n for n in names if hasattr(torch.ops.kasmina, n)]  # (no triton_ ops without Triton)
    tagged = {n for n in names if torch.Tag.cudagraph_unsafe in getattr(torch.ops.kasmina, n).default.tags}
    assert tagged == {*CUDAGRAPH_UNSAFE, *(f"triton_{n}" for n in CUDAGRAPH_UNSAFE)} & set(names)


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
def test_opcheck_blend(i):
    args = list(blend_samples())[i]
    torch.library.opcheck(torch.ops.kasmina.blend.default, args)


@pytest.mark.parametrize(
    "mask", [(True, True, True), (True, True, False), (False, True, False), (False, False, True)]
)
def test_opcheck_blend_backward(mask):
    g, h, s = (torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last) for _ in range(3))
    torch.library.opcheck(
        torch.ops.kasmina.blend_backward.default, (g, h, s, torch.rand(4, 1, 1, 1), list(mask))
    )


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_ste(requires_grad):
    h = torch.randn(2, 3, 4, 4, requires_grad=requires_grad).to(memory_format=torch.channels_last)
    s = torch.randn(2, 3, 4, 4, requires_grad=requires_grad)
    torch.library.opcheck(torch.ops.kasmina.ste.default, (h, s))


@pytest.mark.parametrize(
    "tensors",
    [[], [torch.randn(3, 4), torch.randn(5, dtype=torch.bfloat16), torch.zeros(0)], [torch.randn(2, 3).t()]],
)
def test_opcheck_foreach_norm(tensors):
    torch.library.opcheck(torch.ops.kasmina.foreach_norm.default, (tensors,))


@pytest.mark.parametrize("lists", [([], []), ([torch.randn(3, 4)], [torch.randn(7)]), ([], [torch.randn(2)])])
def test_opcheck_gradient_stats(lists):
    torch.library.opcheck(torch.ops.kasmina.gradient_stats.default, (*lists, 100, 10))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_blend(backend, per_sample, layout):
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
        assert torch.autograd.gradcheck(kasmina_fast.blend, (h, s, a))
        a_out = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)  # clamped: d_alpha is 0
        assert torch.autograd.gradcheck(kasmina_fast.blend, (h, s, a_out))


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


def test_without_extension_falls_back_to_reference():
    """KASMINA_FAST_NO_EXTENSION=1: the package imports, says so, and the ops still work."""
    proc = run_python(
        """
        import torch, kasmina_fast
        av = kasmina_fast.available()
        assert av[0] == "reference" and "cpp" not in av and "cuda" not in av, av
        st = kasmina_fast.backends.status()
        assert "KASMINA_FAST_NO_EXTENSION" in st["cpp"], st
        h = torch.randn(4, 3, 5, 5, requires_grad=True)
        s = torch.randn(4, 3, 5, 5, requires_grad=True)
        a = torch.rand(4, 1, 1, 1, requires_grad=True)
        for args in [(h, s, a), (h.detach(), s.detach(), torch.tensor(0.5))]:
            torch.library.opcheck(torch.ops.kasmina.blend.default, args)
        torch.library.opcheck(torch.ops.kasmina.ste.default, (h, s))
        torch.library.opcheck(torch.ops.kasmina.foreach_norm.default, ([h.detach(), s.detach()],))
        torch.library.opcheck(torch.ops.kasmina.foreach_norm.default, ([],))
        torch.library.opcheck(torch.ops.kasmina.gradient_stats.default, ([h.detach()], [], 3, 1))
        from kasmina_fast.ops.schemas import CUDAGRAPH_UNSAFE
        for name in ("blend", "ste", *CUDAGRAPH_UNSAFE):  # the same tags as csrc/ops.cpp gives
            tags = getattr(torch.ops.kasmina, name).default.tags
            assert (torch.Tag.cudagraph_unsafe in tags) == (name in CUDAGRAPH_UNSAFE), name
        out = torch.ops.kasmina.blend(h, s, a)
        out.sum().backward()
        torch.testing.assert_close(a.grad, (s - h).detach().sum((1, 2, 3), keepdim=True))
        try:
            with kasmina_fast.use_backend("cpp"):
                pass
        except RuntimeError as e:
            assert "not available" in str(e)
        else:
            raise AssertionError("cpp must be refused")
        print("OK")
        """,
        KASMINA_FAST_NO_EXTENSION="1",
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.skipif(not _extension.LOADED, reason="the C++ extension is not built in this environment")
def test_extension_is_loaded_and_used():
    assert "cpp" in kasmina_fast.available()
    assert _extension.has_kernel("blend", "CPU") and _extension.has_kernel("blend", "Autograd")
    # auto routes CPU tensors to the C++ kernel, not to the reference expression
    assert kasmina_fast.backends.CPU.blend is torch.ops.kasmina.blend.default
