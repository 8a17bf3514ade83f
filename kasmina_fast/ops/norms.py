"""Batched gradient norms: ``foreach_norm`` and ``gradient_stats``.

Both read every element once and keep their result on the tensors' device:
nothing here synchronises with the host. They are
``torch.ops.kasmina.foreach_norm`` / ``gradient_stats`` (the eager reference
without the op library). On CUDA the CUDA C++ and Triton kernels table each
list's chunks on its first call (one upload from pinned memory, no sync) and
reuse the table while the tensors' addresses, sizes and dtypes stay the same;
make that first call before a CUDA-graph capture (a first call inside one
raises). A captured list's table is kept for the life of the process.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from kasmina_fast import _extension, reference
from kasmina_fast.ops import _checks, dtensor


def _foreach_norm_reference(tensors: Sequence[Tensor]) -> Tensor:
    _checks.check_foreach_norm(tensors)
    return reference.foreach_norm(tensors).to(_checks.list_device(tensors))


def _gradient_stats_reference(host_grads, seed_grads, host_params: int, seed_params: int) -> Tensor:
    _checks.check_gradient_stats(host_grads, seed_grads, host_params, seed_params)
    return reference.gradient_stats(host_grads, seed_grads, host_params, seed_params)


if _extension.LOADED:
    from kasmina_fast import _C

    _foreach_norm = torch.ops.kasmina.foreach_norm.default
    _gradient_stats = torch.ops.kasmina.gradient_stats.default
else:
    _C = None
    _foreach_norm = _foreach_norm_reference
    _gradient_stats = _gradient_stats_reference


def _as_list(ts: Sequence[Tensor]) -> list[Tensor]:
    """``ts`` itself when it is a list (not copied), else a list of it."""
    return ts if type(ts) is list else list(ts)


def _eager() -> bool:
    """Whether the lists may be read in C++ (``kasmina_fast._C.list_call``): the op
    library is loaded, and neither torch.compile nor a TorchFunctionMode, which must
    see the op itself, is active."""
    return (
        _C is not None
        and not torch.compiler.is_compiling()
        and not torch._C._is_torch_function_mode_enabled()
    )


def foreach_norm(tensors: Sequence[Tensor]) -> Tensor:
    """L2 norm of every tensor, as one fp32 ``[N]`` tensor on their device.

    Mixed float dtypes are fine (accumulation in at least fp32); empty tensors
    give 0; an empty list gives an empty CPU tensor.
    """
    tensors = _as_list(tensors)
    if _eager():
        out = _C.list_call("foreach_norm", tensors, None, 0, 0, False)
        if out is not None:
            return out
    if dtensor.any_dtensor(tensors):  # global norms on every rank (ops/dtensor.py)
        return dtensor.foreach_norm(tensors, _foreach_norm)
    return _foreach_norm(tensors)


def gradient_stats(
    host_grads: Sequence[Tensor], seed_grads: Sequence[Tensor], host_params: int = 0, seed_params: int = 0
) -> Tensor:
    """The G2 gate's gradient summary as fp32 ``[4]`` on the gradients' device:
    ``[host_norm, seed_norm, ratio, nonfinite]`` with
    ``ratio = min(10, seed_norm / host_norm * sqrt(host_params / seed_params))``
    (0 when ``host_norm < 1e-8``; un-normalised when a count is 0) and
    ``nonfinite = 1.0`` when any gradient holds NaN or inf.
    """
    host_grads, seed_grads = _as_list(host_grads), _as_list(seed_grads)
    host_params, seed_params = int(host_params), int(seed_params)
    if _eager():
        out = _C.list_call("gradient_stats", host_grads, seed_grads, host_params, seed_params, False)
        if out is not None:
            return out
    if dtensor.any_dtensor(host_grads, seed_grads):  # global stats on every rank (ops/dtensor.py)
        return dtensor.gradient_stats(host_grads, seed_grads, host_params, seed_params, _foreach_norm)
    return _gradient_stats(host_grads, seed_grads, host_params, seed_params)


def param_gradient_stats(
    host_params: list[Tensor], seed_params: list[Tensor], host_count: int = 0, seed_count: int = 0
) -> Tensor:
    """:func:`gradient_stats` of the ``.grad`` of two parameter lists; parameters whose
    ``.grad`` is None are skipped. The lists are read on every call, so replaced
    ``.grad`` tensors are seen. In eager mode the lists are read in C++
    (``kasmina_fast._C.list_call``); under ``torch.compile`` or a
    ``TorchFunctionMode``, which must see the op, they are read here."""
    host_params, seed_params = list(host_params), list(seed_params)
    host_count, seed_count = int(host_count), int(seed_count)
    if _eager():
        out = _C.list_call("gradient_stats", host_params, seed_params, host_count, seed_count, True)
        if out is not None:
            return out
    host, seed = _grads(host_params, "host_params"), _grads(seed_params, "seed_params")
    return gradient_stats(host, seed, host_count, seed_count)


def _grads(params: Sequence[Tensor], name: str) -> list[Tensor]:
    """The defined ``.grad`` of ``params`` (the same TypeError as the C++ reader)."""
    out = []
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(
                f"kasmina_fast.param_gradient_stats: {name}[{i}] must be a tensor, got {type(p).__name__}"
            )
        if p.grad is not None:
            out.append(p.grad)
    return out
