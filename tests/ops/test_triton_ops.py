"""The Triton custom ops (kasmina_fast/ops/triton_ops.py) pass torch.library.opcheck
(schema, fake kernel, autograd registration, dispatch): on CPU tensors in the
interpreter here; the CUDA runs are in tests/ops/test_cuda.py."""

from __future__ import annotations

import os

import pytest
import torch

import kasmina_fast
from tests.ops.test_registration import blend_samples, run_python

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or "triton" not in kasmina_fast.available(),
    reason="the Triton ops run on CPU tensors only in the interpreter",
)

NAMES = ("triton_blend", "triton_blend_backward", "triton_ste")


@pytest.mark.parametrize("i", range(5))
def test_opcheck_triton_blend(i):
    torch.library.opcheck(torch.ops.kasmina.triton_blend.default, list(blend_samples())[i])


@pytest.mark.parametrize("mask", [(True, True, True), (True, True, False), (False, False, True)])
def test_opcheck_triton_blend_backward(mask):
    g, h, s = (torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last) for _ in range(3))
    args = (g, h, s, torch.rand(4, 1, 1, 1), list(mask))
    torch.library.opcheck(torch.ops.kasmina.triton_blend_backward.default, args)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_triton_ste(requires_grad):
    h = torch.randn(2, 3, 4, 4, requires_grad=requires_grad).to(memory_format=torch.channels_last)
    s = torch.randn(2, 3, 4, 4, requires_grad=requires_grad)
    torch.library.opcheck(torch.ops.kasmina.triton_ste.default, (h, s))


def test_opcheck_triton_norms():
    ts = [torch.randn(3, 4), torch.randn(5, dtype=torch.bfloat16), torch.zeros(0), torch.randn(2, 3).t()]
    torch.library.opcheck(torch.ops.kasmina.triton_foreach_norm.default, (ts,))
    torch.library.opcheck(torch.ops.kasmina.triton_gradient_stats.default, (ts[:2], ts[2:], 100, 10))


def test_without_extension_the_triton_ops_are_custom_ops():
    """KASMINA_FAST_NO_EXTENSION=1: the Triton blend/STE ops are Python custom ops with
    Python autograd, and still match the reference and pass opcheck."""
    proc = run_python(
        """
        import torch, kasmina_fast
        from kasmina_fast import reference
        from kasmina_fast.ops import triton_ops
        assert "triton" in kasmina_fast.available() and "cpp" not in kasmina_fast.available()
        assert not hasattr(triton_ops, "_lib")  # the custom-op branch
        h = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
        s = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
        a = torch.rand(4, 1, 1, 1, dtype=torch.float64, requires_grad=True)
        torch.library.opcheck(torch.ops.kasmina.triton_blend.default, (h, s, a))
        torch.library.opcheck(torch.ops.kasmina.triton_ste.default, (h, s))
        with kasmina_fast.use_backend("triton"):
            out = kasmina_fast.blend(h, s, a)
            grads = torch.autograd.grad(out.square().sum(), (h, s, a))
        want = torch.autograd.grad(reference.blend(h, s, a).square().sum(), (h, s, a))
        for g, w in zip(grads, want):
            torch.testing.assert_close(g, w)
        for name in ("triton_blend", "triton_blend_backward", "triton_ste"):
            print(getattr(torch.ops.kasmina, name).default._schema)
        print("OK")
        """,
        KASMINA_FAST_NO_EXTENSION="1",
        TRITON_INTERPRET="1",
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
    # the C++ schemas (csrc/ops.cpp) are the ones the custom ops infer
    schemas = [str(getattr(torch.ops.kasmina, name).default._schema) for name in NAMES]
    assert proc.stdout.splitlines()[:3] == schemas


def test_with_extension_autograd_is_cpp():
    from kasmina_fast import _extension

    if not _extension.LOADED:
        pytest.skip("the C++ extension is not built here")
    h, s = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    a = torch.rand(3, 1, requires_grad=True)
    out = torch.ops.kasmina.triton_blend(h, s, a)
    assert type(out.grad_fn).__name__ == "CppFunction"  # not a Python autograd.Function
    assert type(torch.ops.kasmina.triton_ste(h, s).grad_fn).__name__ == "CppFunction"
