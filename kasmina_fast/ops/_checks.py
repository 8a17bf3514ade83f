"""Argument validation for the ``kasmina`` ops, in Python.

The same checks, with the same messages, are compiled into the C++ kernels
(``csrc/checks.h``); this module serves the Python kernels (Triton), the fake
kernels and the functions without the op library, so that a bad call raises
the same ``ValueError`` on every backend and at trace time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def list_device(*lists: Sequence[torch.Tensor]) -> torch.device:
    """The device of the first tensor of the lists (CPU when they are all empty)."""
    return next((t.device for ts in lists for t in ts), torch.device("cpu"))


def check_float(t: torch.Tensor, op: str, arg: str) -> None:
    if t.dtype not in _SUPPORTED:
        raise ValueError(
            f"{op}: {arg} must be float16, bfloat16, float32 or float64, got {dtype_name(t.dtype)}"
        )


def check_pair(host: torch.Tensor, seed: torch.Tensor, op: str) -> None:
    check_float(host, op, "host")
    if seed.dtype != host.dtype:
        raise ValueError(
            f"{op}: seed must have the dtype of host, got seed {dtype_name(seed.dtype)} "
            f"and host {dtype_name(host.dtype)}"
        )
    if seed.shape != host.shape:
        raise ValueError(
            f"{op}: seed must have the shape of host, got seed {_shape(seed)} and host {_shape(host)}"
        )
    if seed.device != host.device:
        raise ValueError(
            f"{op}: seed must be on the device of host, got seed {seed.device} and host {host.device}"
        )


def check_alpha(host: torch.Tensor, alpha: torch.Tensor, op: str) -> None:
    check_float(alpha, op, "alpha")
    if alpha.device != host.device:
        raise ValueError(
            f"{op}: alpha must be on the device of host, got alpha {alpha.device} and host {host.device}"
        )
    if alpha.dim() == 0:
        return
    per_sample = (
        host.dim() >= 1
        and alpha.dim() == host.dim()
        and alpha.shape[0] == host.shape[0]
        and all(s == 1 for s in alpha.shape[1:])
    )
    if not per_sample:
        raise ValueError(
            f"{op}: alpha must be 0-d or per-sample [B, 1, ..., 1] matching host {_shape(host)}, "
            f"got alpha {_shape(alpha)}"
        )


def check_blend(
    host: torch.Tensor, seed: torch.Tensor, alpha: torch.Tensor, op: str = "kasmina::blend"
) -> None:
    check_pair(host, seed, op)
    check_alpha(host, alpha, op)


def check_blend_backward(
    grad: torch.Tensor,
    host: torch.Tensor,
    seed: torch.Tensor,
    alpha: torch.Tensor,
    op: str = "kasmina::blend_backward",
) -> None:
    """The backward of blend or valve (``op``): the forward's checks, and grad like host."""
    check_blend(host, seed, alpha, op)
    if grad.shape != host.shape or grad.dtype != host.dtype or grad.device != host.device:
        raise ValueError(
            f"{op}: grad must match host in shape, dtype and device, got grad {_shape(grad)} "
            f"{dtype_name(grad.dtype)} and host {_shape(host)} {dtype_name(host.dtype)}"
        )


def check_ste(host: torch.Tensor, seed: torch.Tensor) -> None:
    check_pair(host, seed, "kasmina::ste")


def _check_list(ts: Sequence[torch.Tensor], op: str, name: str, device, first: str) -> None:
    # one cheap test per tensor; the message (naming the index) only for the one that fails
    for i, t in enumerate(ts):
        if isinstance(t, torch.Tensor) and t.dtype in _SUPPORTED and (device is None or t.device == device):
            continue
        arg = f"{name}[{i}]"
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{op}: {arg} must be a Tensor, got {type(t).__name__}")
        check_float(t, op, arg)
        raise ValueError(f"{op}: {arg} is on {t.device} but {first} is on {device}")


def check_foreach_norm(tensors: Sequence[torch.Tensor]) -> None:
    device = tensors[0].device if len(tensors) and isinstance(tensors[0], torch.Tensor) else None
    _check_list(tensors, "kasmina::foreach_norm", "tensors", device, "tensors[0]")


def check_gradient_stats(
    host_grads: Sequence[torch.Tensor], seed_grads: Sequence[torch.Tensor], host_params: int, seed_params: int
) -> None:
    op = "kasmina::gradient_stats"
    if host_params < 0:
        raise ValueError(f"{op}: host_params must be >= 0, got {host_params}")
    if seed_params < 0:
        raise ValueError(f"{op}: seed_params must be >= 0, got {seed_params}")
    firsts = [t for t in (*host_grads[:1], *seed_grads[:1]) if isinstance(t, torch.Tensor)]
    device = firsts[0].device if firsts else None
    first = "host_grads[0]" if len(host_grads) else "seed_grads[0]"
    _check_list(host_grads, op, "host_grads", device, first)
    _check_list(seed_grads, op, "seed_grads", device, first)
