"""Triton kernels for ``kasmina::valve`` (forward and fused backward), with the
functions that run them as the ops' kernels (``valve``, ``valve_backward``:
registered at the dispatcher by ``kasmina_fast.backends`` while the Triton
backend is selected).

Math (``w = clamp(alpha, 0, 1)`` per sample, or one ``w`` for a 0-d alpha;
``t = tanh(seed - host)``):
    forward   out     = host (1 + w t)
    backward  d_seed  = g host w (1 - t^2)
              d_host  = g (1 + w t) - d_seed      (no "- d_seed" when isolate)
              d_alpha = [0 <= alpha <= 1] * sum_sample g host t
``tanh(x) = sign(x) (1 - e) / (1 + e)`` with ``e = exp(-2|x|)``: no overflow for
any x, +-1 at +-inf, NaN for NaN.
Memory traffic (dense layouts): forward reads host, seed and writes out (3
passes); backward reads g, host, seed and writes d_host, d_seed (5 passes),
plus one partial per program and blend's finalize for d_alpha.

Grid, layouts, int64 offsets and the deterministic d_alpha are blend's: the
launchers are ``blend.pointwise_forward`` / ``pointwise_backward``; other layouts
take the reference math in fp32, as the C++ kernels' strided fallback.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from kasmina_fast.triton_kernels import blend as _b

from kasmina_fast import reference
from kasmina_fast.ops import _checks

BLOCK = _b.BLOCK
NUM_WARPS = _b.NUM_WARPS


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit(do_not_specialize=["a_stride"])
def valve_forward_kernel(h_ptr, s_ptr, o_ptr, a_ptr, a_stride, N, BLOCK: tl.constexpr, ACC: tl.constexpr):
    w, _ = _b._weight(a_ptr, tl.program_id(1), a_stride, ACC)
    offs, mask = _b._tile(N, BLOCK)
    h = tl.load(h_ptr + offs, mask=mask).to(ACC)
    s = tl.load(s_ptr + offs, mask=mask).to(ACC)
    out = h * (1.0 + w * _tanh(s - h))
    tl.store(o_ptr + offs, out.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["a_stride"])
def valve_backward_kernel(
    g_ptr,
    h_ptr,
    s_ptr,
    dh_ptr,
    ds_ptr,
    a_ptr,
    a_stride,
    part_ptr,
    N,
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,
    DH: tl.constexpr,
    DS: tl.constexpr,
    DA: tl.constexpr,
    ISOLATE: tl.constexpr,
):
    w, _ = _b._weight(a_ptr, tl.program_id(1), a_stride, ACC)
    offs, mask = _b._tile(N, BLOCK)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
    h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(ACC)
    s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(ACC)
    t = _tanh(s - h)
    gh = g * h
    q = gh * w * (1.0 - t * t)
    if DH:
        dh = g * (1.0 + w * t)
        if not ISOLATE:
            dh = dh - q
        tl.store(dh_ptr + offs, dh.to(dh_ptr.dtype.element_ty), mask=mask)
    if DS:
        tl.store(ds_ptr + offs, q.to(ds_ptr.dtype.element_ty), mask=mask)
    if DA:
        part = tl.sum(gh * t, axis=0)
        tl.store(part_ptr + tl.program_id(1).to(tl.int64) * tl.num_programs(0) + tl.program_id(0), part)


def valve(host: torch.Tensor, seed: torch.Tensor, alpha: torch.Tensor, isolate: bool = False) -> torch.Tensor:
    """The kernel of ``kasmina::valve``: a new tensor laid out like ``host``."""
    _checks.check_blend(host, seed, alpha, "kasmina::valve")
    return _b.pointwise_forward(valve_forward_kernel, host, seed, alpha, reference.valve_precise)


def valve_backward(
    grad: torch.Tensor,
    host: torch.Tensor,
    seed: torch.Tensor,
    alpha: torch.Tensor,
    isolate: bool,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel of ``kasmina::valve_backward``: ``(d_host, d_seed, d_alpha)``; the
    outputs not in ``output_mask`` are empty ``[0]`` tensors."""
    _checks.check_blend_backward(grad, host, seed, alpha, "kasmina::valve_backward")
    mask = tuple(bool(m) for m in output_mask)
    return _b.pointwise_backward(
        valve_backward_kernel,
        grad,
        host,
        seed,
        alpha,
        mask,
        True,
        lambda: reference.valve_backward(grad, host, seed, alpha, isolate, mask),
        ISOLATE=bool(isolate),
    )
