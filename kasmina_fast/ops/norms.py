"""Batched gradient norms: ``foreach_norm`` and ``gradient_stats``.

Both read every element once and keep their result on the tensors' device:
nothing here synchronises with the host. They are
``torch.ops.kasmina.foreach_norm`` / ``gradient_stats`` (the eager reference
without the op library). On CUDA the CUDA C++ and Triton kernels table each
list's chunks on its first call (one upload from pinned memory, no sync) and
reuse the table while the tensors' addresses, sizes and dtypes stay the same;
make that first call before a CUDA-graph capture (a first call inside one
raises). A captured list's table is kept for the life of the process.

A list may span several devices (a model split across devices): the public
functions here then run the op once per device and combine the results on the
first tensor's device (per-tensor norms as they are; for ``gradient_stats``, the
squares of each device's two norms, summed in fp64, and whether any device
flagged a non-finite gradient). The op itself takes one device per call.
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


def _device_groups(*lists: Sequence[Tensor], key=None) -> list[list[list[int]]] | None:
    """For lists spanning several devices: per device (in order of first appearance),
    the indices of each list's tensors on it. None when one device holds them all, or
    when one of them is a meta tensor (the op then raises its device error).
    ``key`` (default: the device) is how tensors are grouped: the tests stand CPU
    groups in for devices with it."""
    if not all(isinstance(t, Tensor) for ts in lists for t in ts):
        return None  # the op raises its error
    key = key or (lambda t: t.device)
    keys = [[key(t) for t in ts] for ts in lists]
    found = list(dict.fromkeys(k for ks in keys for k in ks))
    if len(found) < 2 or any(isinstance(k, torch.device) and k.type == "meta" for k in found):
        return None
    return [[[i for i, k in enumerate(ks) if k == d] for ks in keys] for d in found]


def _foreach_norm_by_device(tensors: list[Tensor], groups) -> Tensor:
    device = tensors[0].device
    out = torch.empty(len(tensors), dtype=torch.float32, device=device)
    for (idx,) in groups:
        norms = foreach_norm([tensors[i] for i in idx]).to(device)
        out[torch.tensor(idx, device=device)] = norms
    return out


def _gradient_stats_by_device(host, seed, host_params: int, seed_params: int, groups) -> Tensor:
    device = (host or seed)[0].device
    host_ss = torch.zeros((), dtype=torch.float64, device=device)
    seed_ss, flag = host_ss.clone(), host_ss.clone()
    for hi, si in groups:
        part = gradient_stats([host[i] for i in hi], [seed[i] for i in si]).to(device, torch.float64)
        host_ss, seed_ss = host_ss + part[0] ** 2, seed_ss + part[1] ** 2
        flag = torch.maximum(flag, part[3])
    out = reference.stats_from_sums(host_ss, seed_ss, host_params, seed_params)
    out[3] = flag  # the devices' own flags (a norm past fp32's range is no NaN or inf)
    return out


def foreach_norm(tensors: Sequence[Tensor]) -> Tensor:
    """L2 norm of every tensor, as one fp32 ``[N]`` tensor on their device (the first
    tensor's, when they span several).

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
    groups = _device_groups(tensors)
    if groups is not None:
        return _foreach_norm_by_device(tensors, groups)
    return _foreach_norm(tensors)


def gradient_stats(
    host_grads: Sequence[Tensor], seed_grads: Sequence[Tensor], host_params: int = 0, seed_params: int = 0
) -> Tensor:
    """The G2 gate's gradient summary as fp32 ``[4]`` on the gradients' device (the
    first gradient's, when they span several):
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
    groups = _device_groups(host_grads, seed_grads)
    if groups is not None:
        return _gradient_stats_by_device(host_grads, seed_grads, host_params, seed_params, groups)
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
