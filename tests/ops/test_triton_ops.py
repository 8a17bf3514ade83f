"""The Triton custom ops (kasmina_fast/ops/triton_ops.py) pass torch.library.opcheck
(schema, fake kernel, autograd registration, dispatch): on CPU tensors in the
interpreter here; the CUDA runs are in tests/ops/test_cuda.py."""

from __future__ import annotations

import os

import pytest
import torch

import kasmina_fast  # noqa: F401  (registers the ops)
from tests.ops.test_registration import blend_samples

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or not hasattr(torch.ops.kasmina, "triton_blend"),
    reason="the Triton ops run on CPU tensors only in the interpreter",
)


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
