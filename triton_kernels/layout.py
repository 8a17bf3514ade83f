"""Layout and grid helpers shared by the launchers. ``dense_blocks`` is the rule of
csrc/layout.h (the C++ kernels'), written here for the Triton host path."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch


def is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: some permutation of the dims is contiguous, so the
    elements fill ``numel`` consecutive slots from ``data_ptr()``."""
    if t.is_contiguous():
        return True
    dims = sorted((st, s) for s, st in zip(t.shape, t.stride()) if s != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def dense_blocks(
    ref: torch.Tensor, per_sample: bool, others: Sequence[torch.Tensor]
) -> tuple[bool, int, int]:
    """``(dense, B, N)``: whether the kernels can walk ``ref`` and ``others`` as ``B``
    packed blocks of ``N`` elements (B = 1 unless ``per_sample``; then the blocks are
    the samples of dim 0, which must be outermost in memory). ``ref`` must be dense
    and each of ``others`` must share its strides exactly."""
    n = ref.numel()
    B = ref.shape[0] if per_sample else 1
    N = n // B if B > 0 else 0
    if n == 0:
        return True, B, N
    if not is_dense(ref) or any(t.stride() != ref.stride() for t in others):
        return False, B, N
    if per_sample and B > 1 and ref.stride(0) != N:
        return False, B, N
    return True, B, N


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for the launchers' grids (``triton.cdiv`` costs more host time)."""
    return -(-a // b)


def launch_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: a guard for ``t``'s device when it is
    another one."""
    if t.is_cuda and t.get_device() != torch.cuda.current_device():
        return torch.cuda.device(t.get_device())
    return contextlib.nullcontext()
