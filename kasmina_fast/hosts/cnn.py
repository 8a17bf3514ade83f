"""``CNNHost`` (spec 2.1): conv blocks that double the channels, a point
for a slot after every block, channels_last by default."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kasmina_fast.hosts.base import SegmentedHost, thirds


class ConvBlock(nn.Sequential):
    """3x3 conv -> batch norm -> ReLU (-> 2x2 max pool)."""

    def __init__(self, cin: int, cout: int, pool: bool) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        ]
        if pool:
            layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)


class CNNHost(SegmentedHost):
    """Conv blocks; block ``i`` (0-based) outputs ``base_channels * 2**i`` channels.

    Segments: ``early``, ``mid``, ``late`` (after block 1, 2, 3) for 3 blocks,
    the spec's names; ``block1`` ... ``blockN`` for any other depth, where
    ``early``/``mid``/``late`` name the points after blocks ``N // 3``,
    ``2 * (N // 3)`` and ``N`` too (where that is a block). Every segment is an injection point. Pooling
    on the first ``pool_layers`` blocks (all by default). The input is converted
    to ``memory_format`` once, on entry.
    """

    topology = "cnn"

    def __init__(
        self,
        num_classes: int = 10,
        n_blocks: int = 3,
        base_channels: int = 32,
        pool_layers: int | None = None,
        memory_format: torch.memory_format = torch.channels_last,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if n_blocks < 2:
            raise ValueError(f"CNNHost: n_blocks must be >= 2, got {n_blocks}")
        pool_layers = n_blocks if pool_layers is None else pool_layers
        if not 0 <= pool_layers <= n_blocks:
            raise ValueError(f"CNNHost: pool_layers must be in [0, {n_blocks}], got {pool_layers}")
        self.memory_format = memory_format
        channels = [base_channels * 2**i for i in range(n_blocks)]
        ins = [in_channels, *channels[:-1]]
        self.stages = nn.ModuleList(ConvBlock(ins[i], channels[i], i < pool_layers) for i in range(n_blocks))
        if n_blocks == 3:
            self._init_segments(["early", "mid", "late"], channels)
        else:
            self._init_segments(
                [f"block{i + 1}" for i in range(n_blocks)], channels, thirds(n_blocks, "block")
            )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], num_classes))

    def _enter(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=self.memory_format)

    def _exit(self, x: Tensor) -> Tensor:
        return self.head(x)
