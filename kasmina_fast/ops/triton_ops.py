"""The Triton backend: ``kasmina::triton_blend``, ``kasmina::triton_blend_backward``
and ``kasmina::triton_ste``, custom ops around the kernels of
``kasmina_fast.triton_kernels``.

They are ``torch.library.custom_op``s (not ``triton_op``s) so that the very
same registration runs the kernels on CUDA tensors and, under
``TRITON_INTERPRET=1``, on CPU tensors (how CI tests them). Layouts the
kernels do not walk (non-dense views, mismatched strides) go to the reference
math, so the op is correct for every input. Imported only when the Triton
backend is usable (see ``kasmina_fast.triton_kernels.status``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from kasmina_fast import reference
from kasmina_fast.ops import _checks
from kasmina_fast.ops._autograd import blend_autograd, ste_backward
from kasmina_fast.triton_kernels import blend as kernels
from kasmina_fast.triton_kernels import norms
from kasmina_fast.triton_kernels.layout import is_dense


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


@torch.library.custom_op("kasmina::triton_blend", mutates_args=())
def triton_blend(host: Tensor, seed: Tensor, alpha: Tensor) -> Tensor:
    _checks.check_blend(host, seed, alpha)
    dense, B, N = _blocks(host, alpha.dim() > 0, [seed])
    if not dense:
        return reference.blend_precise(host, seed, alpha)
    return kernels.blend_forward(host, seed, alpha, B, N)


@triton_blend.register_fake
def _(host: Tensor, seed: Tensor, alpha: Tensor) -> Tensor:
    _checks.check_blend(host, seed, alpha)
    return torch.empty_like(host)


@torch.library.custom_op("kasmina::triton_blend_backward", mutates_args=())
def triton_blend_backward(
    grad: Tensor, host: Tensor, seed: Tensor, alpha: Tensor, output_mask: list[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    _checks.check_blend_backward(grad, host, seed, alpha)
    mask = tuple(bool(m) for m in output_mask)
    others = [grad] + ([seed] if mask[2] else [])
    dense, B, N = _blocks(host, alpha.dim() > 0, others)
    if not dense:
        return reference.blend_backward(grad, host, seed, alpha, mask)
    return kernels.blend_backward(grad, host, seed, alpha, mask, B, N)


@triton_blend_backward.register_fake
def _(grad, host, seed, alpha, output_mask):
    _checks.check_blend_backward(grad, host, seed, alpha)
    d_host = torch.empty_like(host) if output_mask[0] else host.new_empty(0)
    d_seed = torch.empty_like(host) if output_mask[1] else host.new_empty(0)
    d_alpha = alpha.new_empty(alpha.shape) if output_mask[2] else alpha.new_empty(0)
    return d_host, d_seed, d_alpha


_backward, _setup = blend_autograd(triton_blend_backward)
triton_blend.register_autograd(_backward, setup_context=_setup)


@torch.library.custom_op("kasmina::triton_ste", mutates_args=())
def triton_ste(host: Tensor, seed: Tensor) -> Tensor:
    _checks.check_ste(host, seed)
    if host.numel() and is_dense(host):
        return kernels.copy(host)
    return host.clone(memory_format=torch.preserve_format)


@triton_ste.register_fake
def _(host: Tensor, seed: Tensor) -> Tensor:
    _checks.check_ste(host, seed)
    return torch.empty_like(host)


triton_ste.register_autograd(ste_backward)


@torch.library.custom_op("kasmina::triton_foreach_norm", mutates_args=())
def triton_foreach_norm(tensors: list[Tensor]) -> Tensor:
    _checks.check_foreach_norm(tensors)
    return norms.norms(list(tensors), _checks.list_device(tensors))


@triton_foreach_norm.register_fake
def _(tensors):
    _checks.check_foreach_norm(tensors)
    return torch.empty(len(tensors), dtype=torch.float32, device=_checks.list_device(tensors))


@torch.library.custom_op("kasmina::triton_gradient_stats", mutates_args=())
def triton_gradient_stats(
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


@triton_gradient_stats.register_fake
def _(host_grads, seed_grads, host_params, seed_params):
    _checks.check_gradient_stats(host_grads, seed_grads, host_params, seed_params)
    return torch.empty(4, dtype=torch.float32, device=_checks.list_device(host_grads, seed_grads))
