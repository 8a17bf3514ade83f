"""Python autograd for the blend ops that are registered from Python (the
fallback without the C++ extension, and the Triton ops). It mirrors the C++
``BlendFunction`` in csrc/ops.cpp: alpha is always saved, host and seed only
when d_alpha may be needed, and the backward is one call of a fused op."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor


def blend_autograd(backward_op: Callable) -> tuple[Callable, Callable]:
    """``(backward, setup_context)`` for ``torch.library.register_autograd`` of a
    blend op whose fused backward is ``backward_op(grad, host, seed, alpha, mask)``."""

    def setup_context(ctx, inputs, output) -> None:
        host, seed, alpha = inputs
        keep = alpha.requires_grad
        ctx.save_for_backward(host if keep else None, seed if keep else None, alpha)

    def backward(ctx, grad: Tensor):
        host, seed, alpha = ctx.saved_tensors
        mask = list(ctx.needs_input_grad)
        # without d_alpha the kernels never read host or seed; grad stands in for them
        host = grad if host is None else host
        seed = grad if seed is None else seed
        d_host, d_seed, d_alpha = backward_op(grad, host, seed, alpha, mask)
        return (d_host if mask[0] else None, d_seed if mask[1] else None, d_alpha if mask[2] else None)

    return backward, setup_context


def ste_backward(ctx, grad: Tensor):
    """The straight-through estimator hands ``grad`` to host and seed unchanged."""
    return grad, grad
