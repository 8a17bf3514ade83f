"""The eager reference of every ``kasmina`` op: the oracle for all tests and
the fallback wherever no faster backend exists.

These are plain PyTorch expressions, differentiated by autograd. They do not
validate their arguments; the public functions in ``kasmina_fast.ops`` do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: Host gradient norm below which the gradient ratio is defined as 0.
HOST_NORM_EPS = 1e-8
#: Upper bound of the parameter-normalised gradient ratio.
RATIO_CAP = 10.0


def blend(host: Tensor, seed: Tensor, alpha: Tensor) -> Tensor:
    """``lerp(host, seed, clamp(alpha, 0, 1))``; alpha 0-d or ``[B, 1, ..., 1]``."""
    return torch.lerp(host, seed, alpha.clamp(0, 1).to(host.dtype))


def blend_backward(
    grad: Tensor, host: Tensor, seed: Tensor, alpha: Tensor, output_mask: Sequence[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    """Explicit gradients of :func:`blend` (what autograd computes through it).

    ``d_host = (1 - w) g``, ``d_seed = w g`` with ``w = clamp(alpha, 0, 1)``,
    ``d_alpha = [0 <= alpha <= 1] * sum(g * (seed - host))`` over the broadcast
    dims, computed in fp32 (fp64 for fp64). Outputs not asked for in
    ``output_mask`` are empty ``[0]`` tensors.
    """
    acc = torch.float64 if host.dtype == torch.float64 else torch.float32
    w = alpha.clamp(0, 1).to(acc)
    g = grad.to(acc)
    empty = host.new_empty(0)
    d_host = torch.empty_like(host).copy_(g * (1 - w)) if output_mask[0] else empty
    d_seed = torch.empty_like(host).copy_(g * w) if output_mask[1] else empty
    d_alpha = _d_alpha(g * (seed.to(acc) - host.to(acc)), alpha) if output_mask[2] else alpha.new_empty(0)
    return d_host, d_seed, d_alpha


def _d_alpha(prod: Tensor, alpha: Tensor) -> Tensor:
    """``[0 <= alpha <= 1] * sum(prod)`` over alpha's broadcast dims, in alpha's dtype
    (clamp's gradient: 0 outside [0, 1], even a NaN one)."""
    total = prod.sum_to_size(alpha.shape) if alpha.dim() else prod.sum()
    inside = (alpha >= 0) & (alpha <= 1)
    return torch.where(inside, total, torch.zeros_like(total)).to(alpha.dtype).contiguous()


def valve(host: Tensor, seed: Tensor, alpha: Tensor, isolate: bool = False) -> Tensor:
    """``host * (1 + w * tanh(seed - host))`` with ``w = clamp(alpha, 0, 1)``; alpha 0-d
    or ``[B, 1, ..., 1]``. ``isolate``: the seed's input was ``host`` detached, so no
    gradient reaches ``host`` through ``seed - host`` (autograd here: ``host`` is
    detached in that term)."""
    w = alpha.clamp(0, 1).to(host.dtype)
    inner = host.detach() if isolate else host
    return host * (1 + w * torch.tanh(seed - inner))


def valve_backward(
    grad: Tensor,
    host: Tensor,
    seed: Tensor,
    alpha: Tensor,
    isolate: bool,
    output_mask: Sequence[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    """Explicit gradients of :func:`valve` (what autograd computes through it).

    With ``t = tanh(seed - host)``: ``d_seed = g host w (1 - t^2)``,
    ``d_host = g (1 + w t) - d_seed`` (without ``- d_seed`` when ``isolate``),
    ``d_alpha = [0 <= alpha <= 1] * sum(g host t)`` over the broadcast dims;
    computed in fp32 (fp64 for fp64). Outputs not asked for are empty ``[0]``.
    """
    acc = torch.float64 if host.dtype == torch.float64 else torch.float32
    w = alpha.clamp(0, 1).to(acc)
    g, h = grad.to(acc), host.to(acc)
    t = torch.tanh(seed.to(acc) - h)
    q = g * h * w * (1 - t * t)
    empty = host.new_empty(0)
    d_host = g * (1 + w * t) if isolate else g * (1 + w * t) - q
    d_host = torch.empty_like(host).copy_(d_host) if output_mask[0] else empty
    d_seed = torch.empty_like(host).copy_(q) if output_mask[1] else empty
    d_alpha = _d_alpha(g * h * t, alpha) if output_mask[2] else alpha.new_empty(0)
    return d_host, d_seed, d_alpha


def valve_precise(host: Tensor, seed: Tensor, alpha: Tensor) -> Tensor:
    """:func:`valve` in fp32 (fp64 for fp64) into a tensor laid out like host: the
    Triton kernels' fallback for layouts they do not walk."""
    acc = torch.float64 if host.dtype == torch.float64 else torch.float32
    return torch.empty_like(host).copy_(valve(host.to(acc), seed.to(acc), alpha))


def blend_precise(host: Tensor, seed: Tensor, alpha: Tensor) -> Tensor:
    """:func:`blend` computed in fp32 (fp64 for fp64) into a tensor laid out like
    host: the kernels' fallback for layouts they do not walk."""
    acc = torch.float64 if host.dtype == torch.float64 else torch.float32
    out = torch.lerp(host.to(acc), seed.to(acc), alpha.clamp(0, 1).to(acc))
    return torch.empty_like(host).copy_(out)


def ste(host: Tensor, seed: Tensor) -> Tensor:
    """Straight-through estimator: value ``host``, gradient ``g`` to both inputs."""
    return host + (seed - seed.detach())


def foreach_norm(tensors: Sequence[Tensor]) -> Tensor:
    """Per-tensor L2 norms as fp32 ``[N]`` (accumulated in fp64; empty tensors give 0)."""
    if len(tensors) == 0:
        return torch.zeros(0, dtype=torch.float32)
    norms = [torch.linalg.vector_norm(t.detach(), dtype=torch.float64) for t in tensors]
    return torch.stack(norms).to(torch.float32)


def gradient_stats(
    host_grads: Sequence[Tensor], seed_grads: Sequence[Tensor], host_params: int, seed_params: int
) -> Tensor:
    """fp32 ``[4]``: host norm, seed norm, parameter-normalised ratio, non-finite flag.

    ``ratio = min(10, seed / host * sqrt(host_params / seed_params))``; 0 when
    the host norm is below 1e-8; the un-normalised ``seed / host`` (still
    capped) when either parameter count is 0; NaN stays NaN. The flag is 1 when
    any gradient holds a NaN or an infinity.
    """
    device = next((t.device for t in (*host_grads, *seed_grads)), torch.device("cpu"))

    def total_sumsq(ts: Sequence[Tensor]) -> Tensor:
        acc = torch.zeros((), dtype=torch.float64, device=device)
        for t in ts:
            acc = acc + torch.linalg.vector_norm(t.detach(), dtype=torch.float64) ** 2
        return acc

    return stats_from_sums(total_sumsq(host_grads), total_sumsq(seed_grads), host_params, seed_params)


def stats_from_sums(host_ss: Tensor, seed_ss: Tensor, host_params: int, seed_params: int) -> Tensor:
    """The four numbers of :func:`gradient_stats` from the two fp64 sums of squares."""
    host, seed = host_ss.sqrt(), seed_ss.sqrt()
    ratio = seed / host
    if host_params > 0 and seed_params > 0:
        ratio = ratio * (host_params / seed_params) ** 0.5
    ratio = torch.where(host < HOST_NORM_EPS, torch.zeros_like(ratio), ratio.clamp(max=RATIO_CAP))
    nonfinite = (~torch.isfinite(host_ss + seed_ss)).to(torch.float64)
    return torch.stack([host, seed, ratio, nonfinite]).to(torch.float32)
