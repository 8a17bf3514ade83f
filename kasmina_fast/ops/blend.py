"""``kasmina_fast.blend``: alpha blending of a seed into its host.

``out = lerp(host, seed, clamp(alpha, 0, 1))`` with alpha a 0-d tensor, a
per-sample ``[B, 1, ..., 1]`` tensor, or a Python number (turned into a 0-d
tensor on host's device). Under ``torch.compile`` a 0-d tensor alpha never
recompiles when its value changes; a Python float recompiles once, on its
second distinct value, and is dynamic after that. Gradients flow to host
``(1 - w) g``, seed ``w g`` and, when alpha requires grad, alpha
``sum(g (seed - host))`` over the broadcast dims (0 where alpha was clamped).

The call is ``torch.ops.kasmina.blend``; the dispatcher picks the kernel
(``kasmina_fast.backends``). Without the op library it is the eager reference.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from kasmina_fast import _extension, reference
from kasmina_fast.ops import _checks


def _reference(host: Tensor, seed: Tensor, alpha: Tensor) -> Tensor:
    _checks.check_blend(host, seed, alpha)
    return reference.blend(host, seed, alpha)


_blend = torch.ops.kasmina.blend.default if _extension.LOADED else _reference


def as_alpha(alpha: float, host: Tensor, op: str) -> Tensor:
    """A Python number as a 0-d alpha on host's device (fp32, fp64 for fp64 hosts).
    Under ``torch.compile`` the number stays a graph input."""
    if not isinstance(alpha, numbers.Real):
        raise ValueError(f"{op}: alpha must be a Tensor or a real number, got {type(alpha).__name__}")
    dtype = torch.float64 if host.dtype == torch.float64 else torch.float32
    if torch.compiler.is_compiling():
        # traced as a graph input (one recompile, then dynamic); full() would
        # bake the value in and recompile for every new alpha
        return torch.zeros((), dtype=dtype, device=host.device) + alpha
    return torch.full((), alpha, dtype=dtype, device=host.device)


def blend(host: Tensor, seed: Tensor, alpha: Tensor | float) -> Tensor:
    """Blend ``seed`` into ``host``: ``lerp(host, seed, clamp(alpha, 0, 1))``.

    Args:
        host: host features, any shape, float16/bfloat16/float32/float64.
        seed: seed features, same shape, dtype and device as ``host``.
        alpha: a 0-d tensor, a per-sample ``[B, 1, ..., 1]`` tensor (any
            float dtype, on host's device) or a Python number.

    Returns:
        A new tensor with host's shape, dtype and layout.

    Raises:
        ValueError: naming the op and the argument, on any mismatch.
    """
    if not isinstance(alpha, Tensor):
        alpha = as_alpha(alpha, host, "kasmina::blend")
    return _blend(host, seed, alpha)


#: The specification's name for :func:`blend`.
blend_with_isolation = blend
