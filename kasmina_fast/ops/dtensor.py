"""DTensor inputs of the ``kasmina`` ops: FSDP2's sharded gradients and
tensor-parallel activations.

Norms (``foreach_norm``, ``gradient_stats``): every rank gets the *global* result.
Each tensor's local shard gives a local sum of squares (the square of the op's
own norm of the local shard); a tensor replicated over ``r`` ranks of its mesh
counts ``1/r`` on each of them, a plain tensor in the list counts as replicated
over the whole mesh. One all-reduce (SUM) of those sums per call, both groups of
``gradient_stats`` together, then ``sqrt`` or the G2 formula
(``reference.stats_from_sums``). A ``Partial`` placement is first redistributed
to ``Replicate`` (a collective of its own). The DTensors must share one mesh
that is 1-D or spans the whole default group.

``blend``, ``valve``, their backwards and ``ste`` on DTensors: a pointwise sharding rule
(registered with DTensor's ``register_sharding``): host, seed (and the incoming
gradient) with the same placements; alpha replicated, except a per-sample alpha
of a host sharded along its batch dim, which is sharded the same way; the
outputs follow host, and d_alpha of a replicated alpha is ``Partial`` (each
rank's sum over its shard).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from kasmina_fast import reference

try:
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
except ImportError:  # pragma: no cover - a torch without distributed
    DTensor = None


def any_dtensor(*lists: Sequence[Tensor]) -> bool:
    return DTensor is not None and any(isinstance(t, DTensor) for ts in lists for t in ts)


def _local_sumsq(ts: Sequence[Tensor], norms: Callable[[list[Tensor]], Tensor], op: str):
    """fp64 ``[N]``: each tensor's weighted local sum of squares, and the mesh."""
    mesh = next(t.device_mesh for t in ts if isinstance(t, DTensor))
    local, weights = [], []
    for i, t in enumerate(ts):
        if not isinstance(t, DTensor):
            local.append(t)
            weights.append(1.0 / mesh.size())
            continue
        if t.device_mesh != mesh:
            raise ValueError(f"{op}: DTensor {i} is on another device mesh than the list's first DTensor")
        if any(p.is_partial() for p in t.placements):
            t = t.redistribute(placements=[Replicate() if p.is_partial() else p for p in t.placements])
        copies = math.prod(mesh.size(d) for d, p in enumerate(t.placements) if p.is_replicate())
        local.append(t.to_local())
        weights.append(1.0 / copies)
    n = norms(local).double()
    w = torch.tensor(weights, dtype=torch.float64)
    if n.device.type != "cpu":
        w = w.pin_memory().to(n.device, non_blocking=True)
    return n * n * w, mesh


def _all_reduce(t: Tensor, mesh, op: str) -> Tensor:
    if mesh.ndim == 1:
        group = mesh.get_group()
    elif mesh.size() == dist.get_world_size():
        group = None
    else:
        raise NotImplementedError(f"{op}: DTensors on a {mesh.ndim}-D mesh that does not span every rank")
    dist.all_reduce(t, group=group)
    return t


def foreach_norm(tensors: list[Tensor], norms: Callable[[list[Tensor]], Tensor]) -> Tensor:
    """Global L2 norms of a list holding DTensors (``norms``: the op on local tensors)."""
    sumsq, mesh = _local_sumsq(tensors, norms, "kasmina::foreach_norm")
    return _all_reduce(sumsq, mesh, "kasmina::foreach_norm").sqrt().float()


def gradient_stats(
    host_grads: list[Tensor],
    seed_grads: list[Tensor],
    host_params: int,
    seed_params: int,
    norms: Callable[[list[Tensor]], Tensor],
) -> Tensor:
    """The global ``gradient_stats`` of lists holding DTensors, with one all-reduce."""
    op = "kasmina::gradient_stats"
    sumsq, mesh = _local_sumsq([*host_grads, *seed_grads], norms, op)
    h = len(host_grads)
    sums = torch.stack([sumsq[:h].sum(), sumsq[h:].sum()])
    sums = _all_reduce(sums, mesh, op)
    return reference.stats_from_sums(sums[0], sums[1], host_params, seed_params)


def _register_pointwise_sharding() -> None:
    from torch.distributed.tensor.experimental import register_sharding

    def alpha_placement(host, alpha, p):
        per_sample = alpha.ndim > 0
        return Shard(0) if per_sample and isinstance(p, Shard) and p.dim == 0 else Replicate()

    def host_placements(host):
        return [Replicate(), *(Shard(d) for d in range(host.ndim))]

    @register_sharding(torch.ops.kasmina.blend.default)
    def _blend(host, seed, alpha):
        return [([p], [p, p, alpha_placement(host, alpha, p)]) for p in host_placements(host)]

    @register_sharding(torch.ops.kasmina.valve.default)
    def _valve(host, seed, alpha, isolate=False):
        return [([p], [p, p, alpha_placement(host, alpha, p), None]) for p in host_placements(host)]

    @register_sharding(torch.ops.kasmina.ste.default)
    def _ste(host, seed):
        return [([p], [p, p]) for p in host_placements(host)]

    def backward_rules(host, alpha, output_mask, n_flags):
        out = []
        for p in host_placements(host):
            a = alpha_placement(host, alpha, p)
            d_alpha = a if isinstance(a, Shard) or p == Replicate() else Partial()
            outs = [p if output_mask[0] else Replicate(), p if output_mask[1] else Replicate()]
            out.append(([*outs, d_alpha if output_mask[2] else Replicate()], [p, p, p, a, *[None] * n_flags]))
        return out

    @register_sharding(torch.ops.kasmina.blend_backward.default)
    def _blend_backward(grad, host, seed, alpha, output_mask):
        return backward_rules(host, alpha, output_mask, 1)

    @register_sharding(torch.ops.kasmina.valve_backward.default)
    def _valve_backward(grad, host, seed, alpha, isolate, output_mask):
        return backward_rules(host, alpha, output_mask, 2)


if DTensor is not None and hasattr(torch.ops.kasmina, "blend"):
    _register_pointwise_sharding()
