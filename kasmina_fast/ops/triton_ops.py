"""The Triton backend: ``kasmina::triton_blend``, ``kasmina::triton_blend_backward``,
``kasmina::triton_ste``, ``kasmina::triton_foreach_norm`` and
``kasmina::triton_gradient_stats`` around the kernels of
``kasmina_fast.triton_kernels``.

With the C++ extension, the blend and STE ops are defined in C++ with C++
autograd (csrc/ops.cpp), and their CPU and CUDA kernels are C++ too
(csrc/python/triton_blend.cpp): checks, layout test, outputs and fallback in
C++, then one call of ``triton_kernels.blend``'s launchers; an eager step runs
no Python autograd.Function and no Python kernel (bench/RESULTS.md has the
host times). Without the extension the ops are ``torch.library.custom_op``s
with Python autograd and the Python kernels below. The norm ops (no autograd)
are likewise defined in C++, which does their host work and calls
``triton_kernels.norms``' launchers with the chunk tables
(csrc/python/triton_norms.cpp); without the extension they are
``custom_op``s that do it in Python. All of them
are plain ops, not ``triton_op``s, so that the very same registration runs the
kernels on CUDA tensors and, under ``TRITON_INTERPRET=1``, on CPU tensors (how
CI tests them). Layouts the kernels do not walk (non-dense views, mismatched
strides) go to the reference math, so the op is correct for every input.
Imported only when the Triton backend is usable (see
``kasmina_fast.triton_kernels.status``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from kasmina_fast import _extension, reference
from kasmina_fast.ops import _checks, registration
from kasmina_fast.ops._autograd import blend_autograd, ste_backward
from kasmina_fast.triton_kernels import blend as kernels
from kasmina_fast.triton_kernels import norms
from kasmina_fast.triton_kernels.layout import is_dense, launch_guard


def _blocks(ref: Tensor, per_sample: bool, others: Sequence[Tensor]) -> tuple[bool, int, int]:
    """(dense, B, N) exactly as csrc/layout.h's dense_blocks."""
    n = ref.numel()
    B = ref.shape[0] if per_sample else 1
    N = n // B if B > 0 else 0
    if n == 0:
        return True, B, N
    if not ref.is_contiguous() and not is_dense(ref):
        return False, B, N
    if any(t.stride() != ref.stride() for t in others):
        return False, B, N
    if per_sample and B > 1 and ref.stride(0) != N:
        return False, B, N
    return True, B, N


# The Python bodies of the ops: used without the extension, and (with ``wrap`` =
# ``torch.library.wrap_triton``) by the triton_op registration in ops/triton_op.py.
# Their schemas are csrc/ops.cpp's.
BLEND_SCHEMA = "(Tensor host, Tensor seed, Tensor alpha) -> Tensor"
BLEND_BACKWARD_SCHEMA = (
    "(Tensor grad, Tensor host, Tensor seed, Tensor alpha, bool[] output_mask) -> (Tensor, Tensor, Tensor)"
)
STE_SCHEMA = "(Tensor host, Tensor seed) -> Tensor"


def blend_body(host: Tensor, seed: Tensor, alpha: Tensor, wrap=None) -> Tensor:
    _checks.check_blend(host, seed, alpha)
    dense, B, N = _blocks(host, alpha.dim() > 0, [seed])
    if not dense:
        return reference.blend_precise(host, seed, alpha)
    with launch_guard(host):
        return kernels.blend_forward(host, seed, alpha, B, N, wrap)


def blend_backward_body(
    grad: Tensor, host: Tensor, seed: Tensor, alpha: Tensor, output_mask: list[bool], wrap=None
) -> tuple[Tensor, Tensor, Tensor]:
    _checks.check_blend_backward(grad, host, seed, alpha)
    mask = tuple(bool(m) for m in output_mask)
    others = [grad] + ([seed] if mask[2] else [])
    dense, B, N = _blocks(host, alpha.dim() > 0, others)
    if not dense:
        return reference.blend_backward(grad, host, seed, alpha, mask)
    with launch_guard(host):
        return kernels.blend_backward(grad, host, seed, alpha, mask, B, N, wrap)


def ste_body(host: Tensor, seed: Tensor, wrap=None) -> Tensor:
    _checks.check_ste(host, seed)
    if host.numel() and is_dense(host):
        with launch_guard(host):
            return kernels.copy(host, wrap)
    return host.clone(memory_format=torch.preserve_format)


if _extension.has_kernel("triton_blend", "CPU"):
    # The C++ extension defines the ops, their autograd (csrc/ops.cpp) and their
    # CPU/CUDA kernels, which do the host work and call these launchers
    # (csrc/python/triton_blend.cpp; the fakes are in registration.py).
    from kasmina_fast import _C

    _C.set_triton_blend_launcher(kernels.launch_forward, kernels.launch_backward, kernels.launch_copy)
    triton_blend = torch.ops.kasmina.triton_blend.default
    triton_blend_backward = torch.ops.kasmina.triton_blend_backward.default
    triton_ste = torch.ops.kasmina.triton_ste.default
else:
    # Without the extension: the same ops as Python custom ops, with Python autograd.
    # (explicit schemas: the bodies' extra ``wrap`` argument is not part of the op)
    triton_blend = torch.library.custom_op(
        "kasmina::triton_blend", blend_body, mutates_args=(), schema=BLEND_SCHEMA
    )
    triton_blend.register_fake(registration.blend_fake)
    triton_blend_backward = torch.library.custom_op(
        "kasmina::triton_blend_backward", blend_backward_body, mutates_args=(), schema=BLEND_BACKWARD_SCHEMA
    )
    triton_blend_backward.register_fake(registration.blend_backward_fake)
    _backward, _setup = blend_autograd(triton_blend_backward)
    triton_blend.register_autograd(_backward, setup_context=_setup)
    triton_ste = torch.library.custom_op("kasmina::triton_ste", ste_body, mutates_args=(), schema=STE_SCHEMA)
    triton_ste.register_fake(registration.ste_fake)
    triton_ste.register_autograd(ste_backward)
    triton_blend, triton_blend_backward, triton_ste = (
        op._opoverload for op in (triton_blend, triton_blend_backward, triton_ste)
    )


def _foreach_norm(tensors: list[Tensor]) -> Tensor:
    _checks.check_foreach_norm(tensors)
    return norms.norms(list(tensors), _checks.list_device(tensors))


def _gradient_stats(
    host_grads: list[Tensor], seed_grads: list[Tensor], host_params: int, seed_params: int
) -> Tensor:
    _checks.check_gradient_stats(host_grads, seed_grads, host_params, seed_params)
    device = _checks.list_device(host_grads, seed_grads)
    return norms.gradient_stats(
        list(host_grads),
        list(seed_grads),
        host_params,
        seed_params,
        device,
        eps=reference.HOST_NORM_EPS,
        cap=reference.RATIO_CAP,
    )


if _extension.has_kernel("triton_foreach_norm", "CPU"):
    # The C++ library defines the norm ops and does their host work (checks, dense
    # copies, the cached chunk table: csrc/python/triton_norms.cpp); it calls these
    # launchers with the tables. The fakes are in registration.py.
    from kasmina_fast import _C

    _C.set_triton_norm_launcher(
        norms.BLOCK,
        norms.launch_norms,
        functools.partial(norms.launch_stats, eps=reference.HOST_NORM_EPS, cap=reference.RATIO_CAP),
    )
    triton_foreach_norm = torch.ops.kasmina.triton_foreach_norm.default
    triton_gradient_stats = torch.ops.kasmina.triton_gradient_stats.default
else:
    # Without the extension: Python custom ops that build the chunk table in Python
    # (cudagraph_unsafe for Inductor, like every norm op: ops/schemas.py).
    unsafe = (torch.Tag.cudagraph_unsafe,)
    triton_foreach_norm = torch.library.custom_op(
        "kasmina::triton_foreach_norm", _foreach_norm, mutates_args=(), tags=unsafe
    )
    triton_foreach_norm.register_fake(registration.foreach_norm_fake)
    # (an explicit schema: the annotation `int` would be inferred as SymInt, unlike csrc/ops.cpp)
    triton_gradient_stats = torch.library.custom_op(
        "kasmina::triton_gradient_stats",
        _gradient_stats,
        mutates_args=(),
        schema="(Tensor[] host_grads, Tensor[] seed_grads, int host_params, int seed_params) -> Tensor",
        tags=unsafe,
    )
    triton_gradient_stats.register_fake(registration.gradient_stats_fake)
    triton_foreach_norm, triton_gradient_stats = (
        op._opoverload for op in (triton_foreach_norm, triton_gradient_stats)
    )
