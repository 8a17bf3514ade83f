"""``TransformerHost``: a small GPT (pre-LN blocks, causal SDPA, weight-tied
head) with a point for a slot after every block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kasmina_fast.hosts.base import SegmentedHost, thirds


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"TransformerHost: n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class TransformerBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class TransformerHost(SegmentedHost):
    """Segments ``layer1`` ... ``layerN`` (after each block), every one an injection
    point ``n_embd`` wide; ``early``, ``mid`` and ``late`` name the points after
    blocks ``N // 3``, ``2 * (N // 3)`` and ``N`` (the spec's system's boundaries;
    with 2 blocks only ``late`` exists)."""

    topology = "transformer"

    def __init__(
        self,
        vocab_size: int = 256,
        n_embd: int = 64,
        n_head: int = 4,
        n_layer: int = 4,
        block_size: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if n_layer < 2:
            raise ValueError(f"TransformerHost: n_layer must be >= 2, got {n_layer}")
        self.block_size = block_size
        self.tok = nn.Embedding(vocab_size, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.stages = nn.ModuleList(TransformerBlock(n_embd, n_head, dropout) for _ in range(n_layer))
        names = [f"layer{i + 1}" for i in range(n_layer)]
        self._init_segments(names, [n_embd] * n_layer, thirds(n_layer, "layer"))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.head.weight = self.tok.weight  # weight tying

    def _enter(self, idx: Tensor) -> Tensor:
        T = idx.shape[1]
        if T > self.block_size:
            raise ValueError(f"TransformerHost: input length {T} exceeds block_size {self.block_size}")
        pos = torch.arange(T, device=idx.device)
        return self.drop(self.tok(idx) + self.pos(pos))

    def _exit(self, x: Tensor) -> Tensor:
        return self.head(self.ln_f(x))
