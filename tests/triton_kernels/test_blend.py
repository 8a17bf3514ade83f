"""triton_kernels/blend.py kernels, called directly: more samples than one launch's grid holds
(axis 1 is capped at 65535) are split into several launches; each must start at
its own samples, alphas and d_alpha partials; and the d_alpha finalize adds
more partials than its block holds (a 0-d learnable alpha on a 16M-element
tensor has 4096). Run in the interpreter with the cap and the blocks lowered,
against the fp64 reference."""

from __future__ import annotations

import os

import pytest
import torch

from kasmina_fast import reference

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or torch.cuda.is_available(),
    reason="interpreter test (the GPU tests cover the real launches)",
)


@pytest.fixture
def kernels(monkeypatch):
    from kasmina_fast.triton_kernels import blend

    monkeypatch.setattr(blend, "MAX_GRID_Y", 3)
    monkeypatch.setattr(blend, "BLOCK", 16)  # several programs per sample too
    monkeypatch.setattr(blend, "FINAL_BLOCK", 2)  # the finalize loops over the partials
    return blend


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_sample_slices(kernels, layout):
    gen = torch.Generator().manual_seed(0)
    B = 8  # slices of 3, 3, 2 samples

    def rand(*shape):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64).float()
        return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t

    host, seed, grad = rand(B, 3, 4, 5), rand(B, 3, 4, 5), rand(B, 3, 4, 5)
    alpha = torch.tensor([-0.5, 0.0, 0.2, 0.5, 0.7, 1.0, 1.5, 0.9]).view(B, 1, 1, 1)
    out = kernels.blend(host, seed, alpha)
    torch.testing.assert_close(out, reference.blend(host, seed, alpha))
    got = kernels.blend_backward(grad, host, seed, alpha, [True, True, True])
    want = reference.blend_backward(
        grad.double(), host.double(), seed.double(), alpha.double(), (True, True, True)
    )
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.to(g.dtype), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 16, 33, 16 * 7 + 3])
def test_zero_dim_alpha_over_many_partials(kernels, n):
    """A 0-d learnable alpha: one block of n elements, cdiv(n, 16) partials, added
    FINAL_BLOCK = 2 at a time."""
    gen = torch.Generator().manual_seed(n)
    host, seed, grad = (torch.randn(n, generator=gen) for _ in range(3))
    for a in (0.3, 1.0, 1.5):
        alpha = torch.tensor(a)
        got = kernels.blend_backward(grad, host, seed, alpha, [True, True, True])
        want = reference.blend_backward(
            grad.double(), host.double(), seed.double(), alpha.double(), (True, True, True)
        )
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w.to(g.dtype), rtol=1e-5, atol=1e-5)
