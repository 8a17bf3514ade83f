"""The fake (meta) kernels of the ``kasmina`` ops, registered when the op
library is loaded (``csrc/ops.cpp`` names this module for them).

Fakes reproduce the real outputs' shapes, dtypes and strides
(``empty_like(host)`` keeps channels_last) and run the same argument checks,
so a bad call fails at trace time with the eager message.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from kasmina_fast import _extension
from kasmina_fast.ops import _checks


def blend_fake(host: Tensor, seed: Tensor, alpha: Tensor) -> Tensor:
    _checks.check_blend(host, seed, alpha)
    return torch.empty_like(host)


def blend_backward_fake(
    grad: Tensor, host: Tensor, seed: Tensor, alpha: Tensor, output_mask: Sequence[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    _checks.check_blend_backward(grad, host, seed, alpha)
    return _backward_outputs(host, alpha, output_mask)


def _backward_outputs(
    host: Tensor, alpha: Tensor, output_mask: Sequence[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    """(d_host, d_seed, d_alpha) of a blend or valve backward; those not asked for are empty [0]."""
    d_host = torch.empty_like(host) if output_mask[0] else host.new_empty(0)
    d_seed = torch.empty_like(host) if output_mask[1] else host.new_empty(0)
    d_alpha = alpha.new_empty(alpha.shape) if output_mask[2] else alpha.new_empty(0)
    return d_host, d_seed, d_alpha


def valve_fake(host: Tensor, seed: Tensor, alpha: Tensor, isolate: bool = False) -> Tensor:
    _checks.check_blend(host, seed, alpha, "kasmina::valve")
    return torch.empty_like(host)


def valve_backward_fake(
    grad: Tensor, host: Tensor, seed: Tensor, alpha: Tensor, isolate: bool, output_mask: Sequence[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    _checks.check_blend_backward(grad, host, seed, alpha, "kasmina::valve_backward")
    return _backward_outputs(host, alpha, output_mask)


def ste_fake(host: Tensor, seed: Tensor) -> Tensor:
    _checks.check_ste(host, seed)
    return torch.empty_like(host)


def foreach_norm_fake(tensors: Sequence[Tensor]) -> Tensor:
    _checks.check_foreach_norm(tensors)
    return torch.empty(len(tensors), dtype=torch.float32, device=_checks.list_device(tensors))


def gradient_stats_fake(
    host_grads: Sequence[Tensor], seed_grads: Sequence[Tensor], host_params: int, seed_params: int
) -> Tensor:
    _checks.check_gradient_stats(host_grads, seed_grads, host_params, seed_params)
    return torch.empty(4, dtype=torch.float32, device=_checks.list_device(host_grads, seed_grads))


FAKES = {
    "blend": blend_fake,
    "blend_backward": blend_backward_fake,
    "valve": valve_fake,
    "valve_backward": valve_backward_fake,
    "ste": ste_fake,
    "foreach_norm": foreach_norm_fake,
    "gradient_stats": gradient_stats_fake,
}

if _extension.LOADED:
    for _name, _fake in FAKES.items():
        torch.library.register_fake(f"kasmina::{_name}", _fake)
