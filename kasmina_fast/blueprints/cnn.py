"""CNN seed blueprints on ``[B, C, H, W]`` features: all residual, identity at birth."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kasmina_fast.blueprints.registry import register_blueprint


class Identity(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


class NormSeed(nn.Module):
    """``x + scale * GroupNorm(x)``, scale per channel, zero at birth.

    The group norm is written out (a view into groups, mean, variance) rather
    than ``nn.GroupNorm``: torch 2.13's CPU GroupNorm backward crashes
    (segfault) on a channels_last input that does not require grad, which is
    exactly what an isolated seed sees. The view keeps channels_last.
    """

    def __init__(self, c: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups = _groups(c)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.scale = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        g = x.reshape(B, self.groups, C // self.groups, H, W)
        mean = g.mean(dim=(2, 3, 4), keepdim=True)
        var = g.var(dim=(2, 3, 4), unbiased=False, keepdim=True)
        n = ((g - mean) * torch.rsqrt(var + self.eps)).reshape(B, C, H, W)
        n = n * self.weight.view(1, C, 1, 1) + self.bias.view(1, C, 1, 1)
        return x + self.scale * n


class SqueezeExciteSeed(nn.Module):
    """Channel attention: ``x * (1 + tanh(fc2(relu(fc1(mean(x))))))``; fc2 zero at birth."""

    def __init__(self, c: int) -> None:
        super().__init__()
        hidden = max(1, c // 4)
        self.fc1 = nn.Linear(c, hidden)
        self.fc2 = nn.Linear(hidden, c)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        s = torch.tanh(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * (1 + s[:, :, None, None])


class DepthwiseSeed(nn.Module):
    """``x + pw(relu(dw3x3(x)))``; the pointwise conv is zero at birth."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.pw = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.pw.weight)
        nn.init.zeros_(self.pw.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pw(torch.relu(self.dw(x)))


class ConvSeed(nn.Module):
    """``x + conv_k(relu(conv_j(x)))`` with a bottleneck; the last conv is zero at birth."""

    def __init__(self, c: int, hidden: int, k1: int, k2: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, hidden, k1, padding=k1 // 2)
        self.conv2 = nn.Conv2d(hidden, c, k2, padding=k2 // 2)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


def _groups(c: int) -> int:
    for g in (8, 4, 2):
        if c % g == 0:
            return g
    return 1


@register_blueprint("cnn", "noop", lambda c: 0, "identity: no parameters")
def _noop(c: int) -> nn.Module:
    return Identity()


@register_blueprint("cnn", "norm", lambda c: 3 * c, "residual group norm")
def _norm(c: int) -> nn.Module:
    return NormSeed(c)


@register_blueprint(
    "cnn",
    "attention",
    lambda c: c * max(1, c // 4) + max(1, c // 4) + max(1, c // 4) * c + c,
    "squeeze-excite",
)
def _attention(c: int) -> nn.Module:
    return SqueezeExciteSeed(c)


@register_blueprint("cnn", "depthwise", lambda c: 9 * c + c + c * c + c, "depthwise 3x3 + pointwise")
def _depthwise(c: int) -> nn.Module:
    return DepthwiseSeed(c)


@register_blueprint(
    "cnn",
    "conv_light",
    lambda c: c * max(1, c // 4) + max(1, c // 4) + 9 * max(1, c // 4) * c + c,
    "1x1 -> 3x3",
)
def _conv_light(c: int) -> nn.Module:
    return ConvSeed(c, max(1, c // 4), 1, 3)


@register_blueprint("cnn", "conv_heavy", lambda c: 2 * (9 * c * c + c), "3x3 -> 3x3")
def _conv_heavy(c: int) -> nn.Module:
    return ConvSeed(c, c, 3, 3)
