"""``kasmina_fast.valve``: the valve blend of a seed into its host.

``out = host * (1 + w * tanh(seed - host))`` with ``w = clamp(alpha, 0, 1)``: the
identity at alpha 0 and wherever the seed adds nothing (``seed == host``), and
within ``[1 - w, 1 + w]`` times the host everywhere, so a seed can only scale
its host's features, never replace them. ``seed`` is the output of a seed whose
input had ``host``'s values; ``isolate=True`` says that input was detached, and
no gradient then reaches ``host`` through ``seed - host``.

Gradients, with ``t = tanh(seed - host)``: seed ``g host w (1 - t^2)``; host
``g (1 + w t)``, minus the seed's unless ``isolate``; alpha, when it requires
grad, ``sum(g host t)`` over the broadcast dims (0 where alpha was clamped).
alpha is a 0-d tensor, a per-sample ``[B, 1, ..., 1]`` tensor or a Python
number, as for :func:`kasmina_fast.blend` (a 0-d tensor never recompiles).

The call is ``torch.ops.kasmina.valve``; the dispatcher picks the kernel
(``kasmina_fast.backends``). Without the op library it is the eager reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kasmina_fast import _extension, reference
from kasmina_fast.ops import _checks
from kasmina_fast.ops.blend import as_alpha


def _reference(host: Tensor, seed: Tensor, alpha: Tensor, isolate: bool = False) -> Tensor:
    _checks.check_blend(host, seed, alpha, "kasmina::valve")
    return reference.valve(host, seed, alpha, isolate)


_valve = torch.ops.kasmina.valve.default if _extension.LOADED else _reference


def valve(host: Tensor, seed: Tensor, alpha: Tensor | float, isolate: bool = False) -> Tensor:
    """Blend ``seed`` into ``host`` through a valve: ``host * (1 + w * tanh(seed - host))``.

    Args:
        host: host features, any shape, float16/bfloat16/float32/float64.
        seed: the seed's output (its input had host's values), same shape, dtype
            and device as ``host``.
        alpha: a 0-d tensor, a per-sample ``[B, 1, ..., 1]`` tensor (any float
            dtype, on host's device) or a Python number; clamped to ``[0, 1]``.
        isolate: the seed's input was ``host`` detached: ``host`` gets no gradient
            through ``seed - host``.

    Returns:
        A new tensor with host's shape, dtype and layout.

    Raises:
        ValueError: naming the op and the argument, on any mismatch.
    """
    if not isinstance(alpha, Tensor):
        alpha = as_alpha(alpha, host, "kasmina::valve")
    return _valve(host, seed, alpha, bool(isolate))
