"""Triton kernels for ``kasmina::blend`` (forward and fused backward) and
``kasmina::ste`` (a copy), with the functions that run them as the ops'
kernels (``blend``, ``blend_backward``, ``ste``: registered at the dispatcher
by ``kasmina_fast.backends`` while the Triton backend is selected).

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

The kernels walk tensors whose samples are packed blocks (``layout.dense_blocks``:
contiguous or channels_last, every operand with the same strides); other
layouts take the reference math in fp32, as the C++ kernels' strided fallback.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from kasmina_fast.triton_kernels.layout import cdiv, dense_blocks, is_dense, launch_guard

from kasmina_fast import reference
from kasmina_fast.ops import _checks

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
    sample, axis 0 = BLOCK-sized piece)."""
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
    """alpha in the accumulation dtype (no copy, and no call, when it already is)."""
    acc = torch.float64 if host.dtype == torch.float64 else torch.float32
    return alpha if alpha.dtype == acc else alpha.to(acc)


def _alpha_from(a: torch.Tensor, a_stride: int, lo: int) -> torch.Tensor:
    """alpha from sample ``lo`` on (a view; the kernels index it with ``a_stride``)."""
    if a.dim() == 0 or lo == 0:
        return a
    return a.as_strided((a.shape[0] - lo,), (a_stride,), a.storage_offset() + lo * a_stride)


def _sample_slices(B: int):
    """(first, end) samples of each launch: the grid's axis 1 holds at most MAX_GRID_Y."""
    if B <= MAX_GRID_Y:
        return ((0, B),)
    return [(lo, min(B, lo + MAX_GRID_Y)) for lo in range(0, B, MAX_GRID_Y)]


def _flat(t: torch.Tensor, offset: int) -> torch.Tensor:
    """The packed storage of ``t`` from element ``offset`` on, as a 1-D view (no copy).
    At offset 0 the tensor itself: a kernel only takes its data pointer."""
    if offset == 0:
        return t
    return t.as_strided((t.numel() - offset,), (1,), t.storage_offset() + offset)


def pointwise_forward(
    kernel, host: torch.Tensor, seed: torch.Tensor, alpha: torch.Tensor, fallback
) -> torch.Tensor:
    """Launch a forward ``kernel`` of blend's signature (blend's, valve's) over host and
    seed: a new tensor laid out like host; ``fallback(host, seed, alpha)`` for layouts
    the kernels do not walk."""
    out = torch.empty_like(host)
    dense, B, N = dense_blocks(host, alpha.dim() > 0, (seed, out))
    if not dense:
        return fallback(host, seed, alpha)
    if host.numel() == 0:
        return out
    a = _alpha_acc(alpha, host)
    a_stride = a.stride(0) if a.dim() else 0
    with launch_guard(host):
        for lo, hi in _sample_slices(B):
            off = lo * N
            kernel[(cdiv(N, BLOCK), hi - lo)](
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
    return out


def pointwise_backward(
    kernel,
    grad: torch.Tensor,
    host: torch.Tensor,
    seed: torch.Tensor,
    alpha: torch.Tensor,
    mask: tuple[bool, bool, bool],
    reads_inputs: bool,
    fallback,
    **constexprs,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch a backward ``kernel`` of blend's signature (blend's; valve's, with its
    ``constexprs``) and the d_alpha finalize: ``(d_host, d_seed, d_alpha)``, empty
    ``[0]`` where ``mask`` does not ask. ``reads_inputs``: the kernel reads host and
    seed for every output (valve), not only for d_alpha (blend). ``fallback()`` for
    layouts the kernels do not walk."""
    # d_host and d_seed follow g's layout; host and seed are read when needed
    others = (grad, seed) if mask[2] or reads_inputs else (grad,)
    dense, B, N = dense_blocks(host, alpha.dim() > 0, others)
    if not dense:
        return fallback()
    d_host = torch.empty_like(host) if mask[0] else host.new_empty(0)
    d_seed = torch.empty_like(host) if mask[1] else host.new_empty(0)
    d_alpha = alpha.new_empty(alpha.shape) if mask[2] else alpha.new_empty(0)
    if host.numel() == 0 or not any(mask):
        if mask[2]:
            d_alpha.zero_()
        return d_host, d_seed, d_alpha
    a = _alpha_acc(alpha, host)
    a_stride = a.stride(0) if a.dim() else 0
    acc = _acc(host.dtype)
    progs = cdiv(N, BLOCK)
    parts = torch.empty(B * progs if mask[2] else 1, dtype=a.dtype, device=host.device)
    with launch_guard(host):
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
                **constexprs,
            )
        if mask[2]:
            finalize_d_alpha(parts, progs, a, a_stride, d_alpha, acc)
    return d_host, d_seed, d_alpha


def blend(host: torch.Tensor, seed: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The kernel of ``kasmina::blend``: a new tensor laid out like ``host``."""
    _checks.check_blend(host, seed, alpha)
    return pointwise_forward(blend_forward_kernel, host, seed, alpha, reference.blend_precise)


def blend_backward(
    grad: torch.Tensor, host: torch.Tensor, seed: torch.Tensor, alpha: torch.Tensor, output_mask: list[bool]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel of ``kasmina::blend_backward``: ``(d_host, d_seed, d_alpha)``; the
    outputs not in ``output_mask`` are empty ``[0]`` tensors."""
    _checks.check_blend_backward(grad, host, seed, alpha)
    mask = tuple(bool(m) for m in output_mask)
    return pointwise_backward(
        blend_backward_kernel,
        grad,
        host,
        seed,
        alpha,
        mask,
        False,
        lambda: reference.blend_backward(grad, host, seed, alpha, mask),
    )


def finalize_d_alpha(
    parts: torch.Tensor, progs: int, a: torch.Tensor, a_stride: int, d_alpha: torch.Tensor, acc
) -> None:
    """d_alpha from the ``progs`` partials per sample (blend's and valve's backward):
    their fixed-order sum where alpha is inside [0, 1], else 0, in d_alpha's dtype."""
    da = d_alpha if d_alpha.dtype == a.dtype else torch.empty_like(d_alpha, dtype=a.dtype)
    d_alpha_finalize_kernel[(d_alpha.numel(),)](
        parts, progs, a, a_stride, da, BLOCK=FINAL_BLOCK, ACC=acc, num_warps=4
    )
    if da is not d_alpha:
        d_alpha.copy_(da)


def ste(host: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """The kernel of ``kasmina::ste``: a copy of ``host`` in its layout (seed is checked, never read)."""
    _checks.check_ste(host, seed)
    n = host.numel()
    if n == 0 or not is_dense(host):
        return host.clone(memory_format=torch.preserve_format)
    out = torch.empty_like(host)
    with launch_guard(host):
        copy_kernel[(cdiv(n, BLOCK),)](host, out, n, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out
