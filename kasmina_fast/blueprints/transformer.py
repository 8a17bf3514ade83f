"""Transformer seed blueprints on ``[B, T, C]`` features: all residual, identity at birth.

``mlp`` and ``attention`` take ``checkpoint=True``: activation checkpointing of the
residual branch (recomputed in the backward instead of stored), used only when
training with grad enabled; values and gradients are those of ``checkpoint=False``.
``flex_attention`` is registered where ``torch.nn.attention.flex_attention`` exists.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

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


class _Residual(nn.Module):
    """``x + branch(x)``, the branch checkpointed when ``checkpoint`` and training with grad."""

    def __init__(self, checkpoint: bool) -> None:
        super().__init__()
        self.checkpoint = bool(checkpoint)

    def branch(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if self.checkpoint and self.training and torch.is_grad_enabled():
            return x + _checkpoint(self.branch, x, use_reentrant=False)
        return x + self.branch(x)


def _heads(c: int) -> int:
    return next(h for h in (4, 2, 1) if c % h == 0)


class AttentionSeed(_Residual):
    """Causal self-attention ``x + proj(sdpa(q, k, v))``; ``proj`` zero at birth."""

    def __init__(self, c: int, checkpoint: bool = False) -> None:
        super().__init__(checkpoint)
        self.heads = _heads(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def branch(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLPSeed(_Residual):
    """``x + fc2(gelu(fc1(x)))`` with a 4x hidden layer; fc2 zero at birth."""

    def __init__(self, c: int, checkpoint: bool = False) -> None:
        super().__init__(checkpoint)
        self.fc1 = nn.Linear(c, 4 * c)
        self.fc2 = nn.Linear(4 * c, c)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def branch(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


class FlexAttentionSeed(nn.Module):
    """Causal self-attention through FlexAttention, ``x + proj(flex_attention(q, k, v))``;
    ``proj`` zero at birth. On the CPU with autograd on, where FlexAttention has no
    backward, the same attention runs through ``scaled_dot_product_attention``. Its
    causal block mask is cached per (sequence length, device), the ``MASK_CACHE``
    most recent ones; under ``torch.compile`` the mask is
    built inside the graph instead (a cache lookup would break it)."""

    MASK_CACHE = 8

    def __init__(self, c: int) -> None:
        super().__init__()
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        self._flex, self._create_mask = flex_attention, create_block_mask
        self.heads = _heads(c)
        # q, k and v from separate projections, each its own [B, H, T, D] buffer:
        # Inductor's CPU FlexAttention lowering refuses views of one buffer (torch 2.11)
        self.q, self.k, self.v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.proj = nn.Linear(c, c)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self._masks: OrderedDict[tuple[int, str], object] = OrderedDict()

    def block_mask(self, T: int, device: torch.device):
        if torch.compiler.is_compiling():
            return self._create_mask(_causal, None, None, T, T, device=device)
        key = (T, str(device))
        mask = self._masks.pop(key, None)
        if mask is None:
            mask = self._create_mask(_causal, None, None, T, T, device=device)
        self._masks[key] = mask  # most recent last
        while len(self._masks) > self.MASK_CACHE:
            self._masks.popitem(last=False)
        return mask

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        shape = (B, T, self.heads, C // self.heads)
        q, k, v = (p(x).view(shape).transpose(1, 2).contiguous() for p in (self.q, self.k, self.v))
        if x.device.type == "cpu" and torch.is_grad_enabled():
            # FlexAttention has no backward on the CPU: the same causal attention through
            # scaled_dot_product_attention, which has one
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = self._flex(q, k, v, block_mask=self.block_mask(T, x.device))
        return x + self.proj(y.transpose(1, 2).reshape(B, T, C))


@register_blueprint("transformer", "noop", lambda c: 0, "identity: no parameters")
def _noop(c: int) -> nn.Module:
    return Identity()


@register_blueprint("transformer", "norm", lambda c: 3 * c, "residual layer norm")
def _norm(c: int) -> nn.Module:
    return LayerNormSeed(c)


@register_blueprint("transformer", "lora", lambda c: 2 * LORA_RANK * c, "rank-8 low-rank adapter")
def _lora(c: int) -> nn.Module:
    return LoRASeed(c)


def _attention_params(c: int) -> int:
    return 3 * c * c + 3 * c + c * c + c


@register_blueprint("transformer", "attention", _attention_params, "causal self-attention")
def _attention(c: int, checkpoint: bool = False) -> nn.Module:
    return AttentionSeed(c, checkpoint)


@register_blueprint("transformer", "mlp", lambda c: 4 * c * c + 4 * c + 4 * c * c + c, "4x MLP")
def _mlp(c: int, checkpoint: bool = False) -> nn.Module:
    return MLPSeed(c, checkpoint)


def flex_attention_available() -> bool:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


if flex_attention_available():

    @register_blueprint("transformer", "flex_attention", _attention_params, "causal FlexAttention")
    def _flex_attention(c: int) -> nn.Module:
        return FlexAttentionSeed(c)
