"""Dense seed blueprints on ``[B, C]`` features (an MLP's hidden layer, a classifier
head's input, a tabular model, a policy network): the transformer blueprints that
act on each feature vector alone, residual and identity at birth."""

from __future__ import annotations

from torch import nn

from kasmina_fast.blueprints.cnn import Identity
from kasmina_fast.blueprints.registry import register_blueprint
from kasmina_fast.blueprints.transformer import LORA_RANK, LayerNormSeed, LoRASeed, MLPSeed


@register_blueprint("dense", "noop", lambda c: 0, "identity: no parameters")
def _noop(c: int) -> nn.Module:
    return Identity()


@register_blueprint("dense", "norm", lambda c: 3 * c, "residual layer norm")
def _norm(c: int) -> nn.Module:
    return LayerNormSeed(c)


@register_blueprint("dense", "lora", lambda c: 2 * LORA_RANK * c, "rank-8 low-rank adapter")
def _lora(c: int) -> nn.Module:
    return LoRASeed(c)


@register_blueprint("dense", "mlp", lambda c: 4 * c * c + 4 * c + 4 * c * c + c, "4x MLP")
def _mlp(c: int, checkpoint: bool = False) -> nn.Module:
    return MLPSeed(c, checkpoint)
