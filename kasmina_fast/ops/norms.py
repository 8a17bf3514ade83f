"""Batched gradient norms: ``foreach_norm`` and ``gradient_stats``.

Both read every element once and keep their result on the tensors' device:
nothing here synchronises with the host. On CUDA the ``cuda`` and ``triton``
backends table each list's chunks on its first call (one upload from pinned
memory, no sync) and reuse the table while the tensors' addresses, sizes and
dtypes stay the same; make that first call before a CUDA-graph capture (a
first call inside one raises). A captured list's table is kept for the life of
the process (csrc/norm_plan.h).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from kasmina_fast import _extension, backends, reference
from kasmina_fast.ops import _checks


def _foreach_norm_reference(tensors: Sequence[Tensor]) -> Tensor:
    _checks.check_foreach_norm(tensors)
    return reference.foreach_norm(tensors)


def _gradient_stats_reference(host_grads, seed_grads, host_params: int, seed_params: int) -> Tensor:
    _checks.check_gradient_stats(host_grads, seed_grads, host_params, seed_params)
    return reference.gradient_stats(host_grads, seed_grads, host_params, seed_params)


_foreach_native = torch.ops.kasmina.foreach_norm.default
_stats_native = torch.ops.kasmina.gradient_stats.default

_foreach_impls = {"reference": _foreach_norm_reference, "cpp": _foreach_native, "cuda": _foreach_native}
_stats_impls = {"reference": _gradient_stats_reference, "cpp": _stats_native, "cuda": _stats_native}
if backends.triton_usable():
    from kasmina_fast.ops import triton_ops

    _foreach_impls["triton"] = triton_ops.triton_foreach_norm
    _stats_impls["triton"] = triton_ops.triton_gradient_stats
backends.register("foreach_norm", _foreach_impls)
backends.register("gradient_stats", _stats_impls)


# Routes whose op is in the C++ extension: the wrappers below hand their Python
# lists to kasmina_fast._C (csrc/python/list_ops.cpp, and param_gradient_stats.cpp
# for parameter lists), which reads them in C++ (a torch.ops call converts 1000
# tensors in ~85 us; bench/RESULTS.md). Not while compiling, nor under a
# TorchFunctionMode: both must see the op, which only the torch.ops call shows
# them. The value says whether the op is the triton_ one. Empty without the
# module part.
_list_reader_ops: dict = {}
if _extension.LOADED:
    try:
        from kasmina_fast import _C
    except ImportError:  # pragma: no cover - a build without the module part
        _C = None
    if _C is not None and hasattr(_C, "gradient_stats_list"):
        _list_reader_ops = {_foreach_native: False, _stats_native: False}
        if "triton" in _stats_impls and _extension.has_kernel("triton_gradient_stats", "CPU"):
            _list_reader_ops |= {_foreach_impls["triton"]: True, _stats_impls["triton"]: True}


def _list_reader(route) -> bool | None:
    """Whether ``route``'s lists are read in C++ (the value of ``_list_reader_ops``),
    or None: not an extension op, or a TorchFunctionMode is on (it must see the op)."""
    if torch._C._is_torch_function_mode_enabled():
        return None
    return _list_reader_ops.get(route)


def _as_list(ts: Sequence[Tensor]) -> list[Tensor]:
    """``ts`` itself when it is a list (not copied: 1.3 us of a 1000-tensor call), else a list of it."""
    return ts if type(ts) is list else list(ts)


def _on_cuda(*lists: Sequence[Tensor]) -> bool:
    for ts in lists:
        if len(ts):
            return ts[0].is_cuda
    return False


def foreach_norm(tensors: Sequence[Tensor]) -> Tensor:
    """L2 norm of every tensor, as one fp32 ``[N]`` tensor on their device.

    Mixed float dtypes are fine (accumulation in at least fp32); empty tensors
    give 0; an empty list gives an empty CPU tensor.
    """
    tensors = _as_list(tensors)
    route = (backends.CUDA if _on_cuda(tensors) else backends.CPU).foreach_norm
    triton = _list_reader(route)
    if triton is not None and not torch.compiler.is_compiling():
        out = _C.foreach_norm_list(tensors, triton)
        if out is not None:
            return out
    return route(tensors)


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
    route = (backends.CUDA if _on_cuda(host_grads, seed_grads) else backends.CPU).gradient_stats
    triton = _list_reader(route)
    if triton is not None and not torch.compiler.is_compiling():
        out = _C.gradient_stats_list(host_grads, seed_grads, host_params, seed_params, triton)
        if out is not None:
            return out
    return route(host_grads, seed_grads, host_params, seed_params)


def param_gradient_stats(
    host_params: list[Tensor], seed_params: list[Tensor], host_count: int = 0, seed_count: int = 0
) -> Tensor:
    """:func:`gradient_stats` of the ``.grad`` of two parameter lists; parameters whose
    ``.grad`` is None are skipped. Same result as building the two gradient lists in
    Python, but when the route for their device is an op of the C++ extension (``cpp``
    on CPU, ``cuda`` on CUDA, ``triton``) the lists are read in C++: 31 us instead of
    155 us of host time for 1000 parameters on 2 CPU cores (bench/RESULTS.md). The lists are read on every
    call, so replaced ``.grad`` tensors are seen. The device is the first parameter's."""
    host_params, seed_params = list(host_params), list(seed_params)
    host_count, seed_count = int(host_count), int(seed_count)
    first = host_params[0] if host_params else seed_params[0] if seed_params else None
    on_cuda = isinstance(first, Tensor) and first.is_cuda
    route = (backends.CUDA if on_cuda else backends.CPU).gradient_stats
    triton = _list_reader(route)
    if triton is not None:
        return _C.param_gradient_stats(host_params, seed_params, host_count, seed_count, triton)
    host, seed = _grads(host_params, "host_params"), _grads(seed_params, "seed_params")
    return route(host, seed, host_count, seed_count)


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
