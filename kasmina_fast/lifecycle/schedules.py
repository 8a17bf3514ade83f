"""Alpha schedules (spec: BlendAlgorithm, LinearBlend, SigmoidBlend, GatedBlend).

A schedule maps the blending progress ``t = step / blending_steps`` in [0, 1]
to the ramp value alpha(t), with alpha(0) = 0 and alpha(1) = 1. A
``GatedBlend`` also learns a per-sample gate from pooled host features; the
slot blends with ``alpha(t) * gate(x)`` through ``kasmina_fast.blend`` as a
learnable ``[B, 1, 1, 1]`` (CNN), ``[B, 1, 1]`` (transformer) or ``[B, 1]`` (dense) alpha.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kasmina_fast.lifecycle.stages import FEATURE_DIMS


class BlendAlgorithm(nn.Module):
    """Base class: ``ramp(t)`` gives alpha for progress ``t`` in [0, 1]."""

    algorithm_id: str = ""
    #: True when :meth:`per_sample` returns a learnable factor (not None)
    gated: bool = False

    def ramp(self, t: float) -> float:
        raise NotImplementedError

    def per_sample(self, host_features: Tensor) -> Tensor | None:
        """A learnable per-sample factor for alpha, or None (a plain ramp)."""
        return None

    def forward(self, host_features: Tensor) -> Tensor | None:
        """:meth:`per_sample` as the module's call, so that module hooks run (FSDP2
        gathers a sharded gate's weights in its pre-forward hook)."""
        return self.per_sample(host_features)


class LinearBlend(BlendAlgorithm):
    algorithm_id = "linear"

    def ramp(self, t: float) -> float:
        return min(1.0, max(0.0, t))


def _logistic(z: float) -> float:
    """``1 / (1 + exp(-z))`` without overflow for any finite ``z``."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class SigmoidBlend(BlendAlgorithm):
    """A logistic ramp of the given steepness, rescaled to hit 0 and 1 exactly (any
    finite steepness: the logistic is evaluated without overflow)."""

    algorithm_id = "sigmoid"

    def __init__(self, steepness: float = 10.0) -> None:
        super().__init__()
        if not (steepness > 0 and math.isfinite(steepness)):
            raise ValueError(f"SigmoidBlend: steepness must be finite and > 0, got {steepness}")
        self.steepness = float(steepness)

    def ramp(self, t: float) -> float:
        t = min(1.0, max(0.0, t))
        k = self.steepness
        lo, hi = _logistic(-k / 2), _logistic(k / 2)
        return (_logistic(k * (t - 0.5)) - lo) / (hi - lo)


class CosineBlend(BlendAlgorithm):
    """``(1 - cos(pi t)) / 2``: a smooth start and end."""

    algorithm_id = "cosine"

    def ramp(self, t: float) -> float:
        t = min(1.0, max(0.0, t))
        return 1.0 if t == 1.0 else 0.5 * (1.0 - math.cos(math.pi * t))


class GatedBlend(LinearBlend):
    """Linear ramp times a learned per-sample gate ``sigmoid(w . mean(x) + b)``.

    The gate starts at 1 (bias 6: sigmoid(6) = 0.9975), so at the end of the
    ramp the seed is blended in fully unless training closes the gate.
    """

    algorithm_id = "gated"
    gated = True

    def __init__(self, channels: int, topology: str = "cnn") -> None:
        super().__init__()
        if topology not in FEATURE_DIMS:
            raise ValueError(
                f"GatedBlend: topology must be one of {', '.join(FEATURE_DIMS)}, got {topology!r}"
            )
        self.topology = topology
        self.gate = nn.Linear(channels, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, 6.0)

    def per_sample(self, host_features: Tensor) -> Tensor:
        if self.topology == "cnn":  # [B, C, H, W] -> [B, C] -> [B, 1, 1, 1]
            pooled = host_features.mean(dim=(2, 3))
            return torch.sigmoid(self.gate(pooled)).view(-1, 1, 1, 1)
        if self.topology == "dense":  # [B, C] -> [B, 1]
            return torch.sigmoid(self.gate(host_features))
        pooled = host_features.mean(dim=1)  # [B, T, C] -> [B, C] -> [B, 1, 1]
        return torch.sigmoid(self.gate(pooled)).view(-1, 1, 1)


BLEND_ALGORITHMS: dict[str, type[BlendAlgorithm]] = {
    "linear": LinearBlend,
    "sigmoid": SigmoidBlend,
    "cosine": CosineBlend,
    "gated": GatedBlend,
}


def check_blend_algorithm(algorithm_id: str) -> None:
    if algorithm_id not in BLEND_ALGORITHMS:
        raise ValueError(
            f"unknown blend algorithm {algorithm_id!r}; available: {', '.join(sorted(BLEND_ALGORITHMS))}"
        )


def create_blend_algorithm(algorithm_id: str, channels: int, topology: str) -> BlendAlgorithm:
    """A schedule by catalog id (ValueError listing the ids for an unknown one)."""
    check_blend_algorithm(algorithm_id)
    if algorithm_id == "gated":
        return GatedBlend(channels, topology)
    return BLEND_ALGORITHMS[algorithm_id]()
