"""Layout and grid helpers shared by the launchers."""

from __future__ import annotations

import torch


def is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: some permutation of the dims is contiguous, so the
    elements fill ``numel`` consecutive slots from ``data_ptr()`` (as csrc/layout.h)."""
    dims = sorted((st, s) for s, st in zip(t.shape, t.stride()) if s != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for the launchers' grids. (``triton.cdiv`` is a constexpr function in
    Triton 3.7: about 2 us a call from host code, against 0.05 us for this.)"""
    return -(-a // b)
