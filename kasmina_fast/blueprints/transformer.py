"""Transformer seed blueprints on ``[B, T, C]`` features: all residual, identity at birth."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kasmina_fast.blueprints.cnn import Identity
from kasmina_fast.blueprints.registry import register_blueprint

LORA_RANK = 8


class LayerNormSeed(nn.Module):
    """``x + scale * LayerNorm(x)``; scale zero at birth."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.scale = nn.Parameter(torch.zeros(c))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.scale * self.norm(x)


class LoRASeed(nn.Module):
    """``x + up(down(x))`` of rank 8; ``up`` zero at birth."""

    def __init__(self, c: int, rank: int = LORA_RANK) -> None:
        super().__init__()
        self.down = nn.Linear(c, rank, bias=False)
        self.up = nn.Linear(rank, c, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(self.down(x))


class AttentionSeed(nn.Module):
    """Causal self-attention ``x + proj(sdpa(q, k, v))``; ``proj`` zero at birth."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.heads = next(h for h in (4, 2, 1) if c % h == 0)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLPSeed(nn.Module):
    """``x + fc2(gelu(fc1(x)))`` with a 4x hidden layer; fc2 zero at birth."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c, 4 * c)
        self.fc2 = nn.Linear(4 * c, c)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(F.gelu(self.fc1(x)))


@register_blueprint("transformer", "noop", lambda c: 0, "identity: no parameters")
def _noop(c: int) -> nn.Module:
    return Identity()


@register_blueprint("transformer", "norm", lambda c: 3 * c, "residual layer norm")
def _norm(c: int) -> nn.Module:
    return LayerNormSeed(c)


@register_blueprint("transformer", "lora", lambda c: 2 * LORA_RANK * c, "rank-8 low-rank adapter")
def _lora(c: int) -> nn.Module:
    return LoRASeed(c)


@register_blueprint(
    "transformer", "attention", lambda c: 3 * c * c + 3 * c + c * c + c, "causal self-attention"
)
def _attention(c: int) -> nn.Module:
    return AttentionSeed(c)


@register_blueprint("transformer", "mlp", lambda c: 4 * c * c + 4 * c + 4 * c * c + c, "4x MLP")
def _mlp(c: int) -> nn.Module:
    return MLPSeed(c)
