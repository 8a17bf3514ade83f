"""Layout and grid helpers shared by the launchers."""

from __future__ import annotations

import contextlib

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


def launch_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: a guard for ``t``'s device when it is
    another one (the C++ front ends set the same guard before calling the launchers)."""
    if t.is_cuda and t.get_device() != torch.cuda.current_device():
        return torch.cuda.device(t.get_device())
    return contextlib.nullcontext()
