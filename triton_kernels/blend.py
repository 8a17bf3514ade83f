"""Triton kernels for ``kasmina::blend`` (forward and fused backward) and the
STE copy, with their launchers.

Math (``w = clamp(alpha, 0, 1)`` per sample, or one ``w`` for a 0-d alpha):
    forward   out     = lerp(host, seed, w)      (torch.lerp's two-sided formula)
    backward  d_host  = (1 - w) g,  d_seed = w g,
              d_alpha = [0 <= alpha <= 1] * sum_sample g (seed - host)
Memory traffic (dense layouts): forward reads host, seed and writes out (3
passes); backward reads g (+ host, seed for d_alpha) and writes d_host, d_seed
(3 or 5 passes), plus one fp32 partial per program and a tiny finalize.

Grid: axis 1 is the sample, axis 0 the BLOCK-sized pieces of the sample's
packed block, so no per-element division finds the sample; offsets are
int64. Math is fp32 (fp64 for fp64 inputs). d_alpha is deterministic: each
program's ``tl.sum`` is a fixed tree and the finalize adds the partials in a
fixed order (no atomics).

The launchers take tensors whose samples are packed blocks (contiguous or
channels_last with the same strides); the op layer routes other layouts to
the reference. ``wrap`` (default: none) wraps each kernel before its launch:
``torch.library.wrap_triton`` for the ``triton_op`` registration
(kasmina_fast/ops/triton_op.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from kasmina_fast.triton_kernels.layout import cdiv

BLOCK = 4096
NUM_WARPS = 8
FINAL_BLOCK = 1024
MAX_GRID_Y = 65535


@triton.jit
def _weight(a_ptr, b, a_stride, ACC: tl.constexpr):
    a = tl.load(a_ptr + b * a_stride).to(ACC)
    w = tl.minimum(tl.maximum(a, 0.0), 1.0)
    return tl.where(a != a, a, w), a


@triton.jit
def _tile(N, BLOCK: tl.constexpr):
    """This program's int64 offsets and mask in its sample's packed block (axis 1 =
    sample, axis 0 = BLOCK-sized piece). Kept apart from alpha's load: torch's
    kernel analysis (torch.compile of a triton_op) counts every pointer argument of a
    function whose result reaches a store's address as written."""
    b = tl.program_id(1).to(tl.int64)
    offs = b * N + tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < b * N + N


# a_stride is not specialised (it is 1 or 0 or anything): fewer compiles
@triton.jit(do_not_specialize=["a_stride"])
def blend_forward_kernel(h_ptr, s_ptr, o_ptr, a_ptr, a_stride, N, BLOCK: tl.constexpr, ACC: tl.constexpr):
    w, _ = _weight(a_ptr, tl.program_id(1), a_stride, ACC)
    offs, mask = _tile(N, BLOCK)
    h = tl.load(h_ptr + offs, mask=mask).to(ACC)
    s = tl.load(s_ptr + offs, mask=mask).to(ACC)
    low = h + w * (s - h)
    high = s - (s - h) * (1.0 - w)
    out = tl.where(w < 0.5, low, high)
    tl.store(o_ptr + offs, out.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["a_stride"])
def blend_backward_kernel(
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
):
    w, _ = _weight(a_ptr, tl.program_id(1), a_stride, ACC)
    offs, mask = _tile(N, BLOCK)
    g = tl.load(g_ptr + offs, mask=mask).to(ACC)
    if DH:
        tl.store(dh_ptr + offs, (g * (1.0 - w)).to(dh_ptr.dtype.element_ty), mask=mask)
    if DS:
        tl.store(ds_ptr + offs, (g * w).to(ds_ptr.dtype.element_ty), mask=mask)
    if DA:
        h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(ACC)
        s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(ACC)
        part = tl.sum(g * (s - h), axis=0)
        tl.store(part_ptr + tl.program_id(1).to(tl.int64) * tl.num_programs(0) + tl.program_id(0), part)


@triton.jit(do_not_specialize=["a_stride", "parts"])
def d_alpha_finalize_kernel(part_ptr, parts, a_ptr, a_stride, da_ptr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    b = tl.program_id(0)
    acc = tl.zeros((BLOCK,), dtype=ACC)
    for start in range(0, parts, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(part_ptr + b.to(tl.int64) * parts + offs, mask=offs < parts, other=0.0)
    total = tl.sum(acc, axis=0)
    _, a = _weight(a_ptr, b, a_stride, ACC)
    inside = (a >= 0.0) & (a <= 1.0)
    total = tl.where(inside, total, 0.0)
    tl.store(da_ptr + b, total.to(da_ptr.dtype.element_ty))


@triton.jit
def copy_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=mask), mask=mask)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _alpha_acc(alpha: torch.Tensor, host: torch.Tensor) -> torch.Tensor:
    """alpha in the accumulation dtype (no copy when it already is)."""
    return alpha.to(torch.float64 if host.dtype == torch.float64 else torch.float32)


def _alpha_from(a: torch.Tensor, a_stride: int, lo: int) -> torch.Tensor:
    """alpha from sample ``lo`` on (a view; the kernels index it with ``a_stride``)."""
    if a.dim() == 0 or lo == 0:
        return a
    return a.as_strided((a.shape[0] - lo,), (a_stride,), a.storage_offset() + lo * a_stride)


def _sample_slices(B: int):
    """(first, end) samples of each launch: the grid's axis 1 holds at most MAX_GRID_Y.
    One launch without a loop, so that a symbolic B (torch.compile of the triton_op)
    is guarded, not specialised."""
    if B <= MAX_GRID_Y:
        return ((0, B),)
    return [(lo, min(B, lo + MAX_GRID_Y)) for lo in range(0, B, MAX_GRID_Y)]


def _wrapped(kernel, wrap):
    return kernel if wrap is None else wrap(kernel)


def blend_forward(
    host: torch.Tensor, seed: torch.Tensor, alpha: torch.Tensor, B: int, N: int, wrap=None
) -> torch.Tensor:
    """``out`` for ``B`` packed samples of ``N`` elements (B = 1 for a 0-d alpha)."""
    out = torch.empty_like(host)
    if host.numel() == 0:
        return out
    launch_forward(host, seed, out, _alpha_acc(alpha, host), B, N, wrap)
    return out


def launch_forward(
    host: torch.Tensor, seed: torch.Tensor, out: torch.Tensor, a: torch.Tensor, B: int, N: int, wrap=None
) -> None:
    """The forward launches into ``out`` (host's strides), ``a`` alpha in the
    accumulation dtype; called from C++ (csrc/python/triton_blend.cpp) too."""
    a_stride = a.stride(0) if a.dim() else 0
    kernel = _wrapped(blend_forward_kernel, wrap)
    for lo, hi in _sample_slices(B):
        off = lo * N
        grid = (cdiv(N, BLOCK), hi - lo)
        kernel[grid](
            _flat(host, off),
            _flat(seed, off),
            _flat(out, off),
            _alpha_from(a, a_stride, lo),
            a_stride,
            N,
            BLOCK=BLOCK,
            ACC=_acc(host.dtype),
            num_warps=NUM_WARPS,
        )


def _flat(t: torch.Tensor, offset: int) -> torch.Tensor:
    """The packed storage of ``t`` from element ``offset`` on, as a 1-D view (no copy).
    At offset 0 the tensor itself: a kernel only takes its data pointer, and a view
    costs host time (the usual case: fewer than 65536 samples, one launch)."""
    if offset == 0:
        return t
    return t.as_strided((t.numel() - offset,), (1,), t.storage_offset() + offset)


def blend_backward(
    grad: torch.Tensor,
    host: torch.Tensor,
    seed: torch.Tensor,
    alpha: torch.Tensor,
    mask: tuple[bool, bool, bool],
    B: int,
    N: int,
    wrap=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(d_host, d_seed, d_alpha)``; outputs not in ``mask`` are empty ``[0]`` tensors."""
    d_host = torch.empty_like(host) if mask[0] else host.new_empty(0)
    d_seed = torch.empty_like(host) if mask[1] else host.new_empty(0)
    d_alpha = alpha.new_empty(alpha.shape) if mask[2] else alpha.new_empty(0)
    if host.numel() == 0:
        if mask[2]:
            d_alpha.zero_()
        return d_host, d_seed, d_alpha
    launch_backward(grad, host, seed, d_host, d_seed, d_alpha, _alpha_acc(alpha, host), mask, B, N, wrap)
    return d_host, d_seed, d_alpha


def launch_backward(
    grad: torch.Tensor,
    host: torch.Tensor,
    seed: torch.Tensor,
    d_host: torch.Tensor,
    d_seed: torch.Tensor,
    d_alpha: torch.Tensor,
    a: torch.Tensor,
    mask: tuple[bool, bool, bool],
    B: int,
    N: int,
    wrap=None,
) -> None:
    """The backward launches into the outputs in ``mask`` (host's strides; ``d_alpha``
    in alpha's dtype and shape), ``a`` alpha in the accumulation dtype; called from
    C++ (csrc/python/triton_blend.cpp) too."""
    a_stride = a.stride(0) if a.dim() else 0
    acc = _acc(host.dtype)
    progs = cdiv(N, BLOCK)
    parts = torch.empty(B * progs if mask[2] else 1, dtype=a.dtype, device=host.device)
    kernel = _wrapped(blend_backward_kernel, wrap)
    for lo, hi in _sample_slices(B):
        off = lo * N
        kernel[(progs, hi - lo)](
            _flat(grad, off),
            _flat(host, off),
            _flat(seed, off),
            _flat(d_host, off) if mask[0] else grad,
            _flat(d_seed, off) if mask[1] else grad,
            _alpha_from(a, a_stride, lo),
            a_stride,
            parts[lo * progs :] if mask[2] and lo else parts,
            N,
            BLOCK=BLOCK,
            ACC=acc,
            DH=mask[0],
            DS=mask[1],
            DA=mask[2],
            num_warps=NUM_WARPS,
        )
    if mask[2]:
        da = d_alpha if d_alpha.dtype == a.dtype else torch.empty_like(d_alpha, dtype=a.dtype)
        _wrapped(d_alpha_finalize_kernel, wrap)[(B,)](
            parts, progs, a, a_stride, da, BLOCK=FINAL_BLOCK, ACC=acc, num_warps=4
        )
        if da is not d_alpha:
            d_alpha.copy_(da)


def copy(src: torch.Tensor, wrap=None) -> torch.Tensor:
    """A copy of a dense tensor in the same layout (the STE's forward)."""
    out = torch.empty_like(src)
    launch_copy(src, out, wrap)
    return out


def launch_copy(src: torch.Tensor, out: torch.Tensor, wrap=None) -> None:
    """``out`` (src's strides) = ``src``; called from C++ too."""
    n = src.numel()
    if n:
        _wrapped(copy_kernel, wrap)[(cdiv(n, BLOCK),)](
            _flat(src, 0), _flat(out, 0), n, BLOCK=BLOCK, num_warps=NUM_WARPS
        )
