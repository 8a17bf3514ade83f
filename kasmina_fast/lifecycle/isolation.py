"""Gradient telemetry for the G2 gate: ``GradientIsolationMonitor`` (spec 2.1).

``check_isolation_async()`` launches the fused ``gradient_stats`` op (the
registered parameters' ``.grad`` read in C++ where the route allows, see
``ops.norms.param_gradient_stats``) and returns device tensors without any
host sync; ``materialize_isolation_stats``
performs the only device-to-host transfer (four numbers, non-blocking into
pinned memory, then one event wait).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from kasmina_fast.ops.norms import param_gradient_stats


def _params(source: nn.Module | Iterable[nn.Parameter] | None) -> list[nn.Parameter]:
    if source is None:
        return []
    params = source.parameters() if isinstance(source, nn.Module) else source
    return [p for p in params if p.requires_grad]


class GradientIsolationMonitor:
    """Host and seed gradient norms and their parameter-normalised ratio."""

    def __init__(self) -> None:
        self.host_params: list[nn.Parameter] = []
        self.seed_params: list[nn.Parameter] = []
        self.host_param_count = 0
        self.seed_param_count = 0

    def register(
        self,
        host_module: nn.Module | Iterable[nn.Parameter] | None,
        seed_module: nn.Module | Iterable[nn.Parameter] | None,
    ) -> None:
        """Parameters (and counts for the normalisation) come from the modules themselves
        (or from explicit parameter lists, e.g. a host without its slots)."""
        self.host_params = _params(host_module)
        self.seed_params = _params(seed_module)
        self.host_param_count = sum(p.numel() for p in self.host_params)
        self.seed_param_count = sum(p.numel() for p in self.seed_params)

    def reset(self) -> None:
        self.__init__()

    def check_isolation_async(self) -> dict[str, Tensor]:
        """``{"stats": fp32 [4]}`` on the gradients' device; no host sync.
        Parameters whose ``.grad`` is None are skipped; empty groups give zeros."""
        stats = param_gradient_stats(
            self.host_params, self.seed_params, self.host_param_count, self.seed_param_count
        )
        return {"stats": stats}

    def materialize_isolation_stats(self, async_stats: dict[str, Tensor]) -> tuple[bool, dict[str, Any]]:
        """The one sync: ``(ok, {host_grad_norm, seed_grad_norm, seed_gradient_norm_ratio, nonfinite})``.
        ``ok`` is False when any gradient held NaN or inf."""
        stats = async_stats["stats"]
        if stats.is_cuda:
            host = torch.empty(4, dtype=stats.dtype, pin_memory=True)
            host.copy_(stats, non_blocking=True)
            event = torch.cuda.Event()
            # on the stream that ran the copy: the current one of the stats' device,
            # which need not be the current device
            event.record(torch.cuda.current_stream(stats.device))
            event.synchronize()
        else:
            host = stats
        h, s, ratio, nonfinite = host.tolist()
        ok = nonfinite == 0.0
        return ok, {
            "host_grad_norm": h,
            "seed_grad_norm": s,
            "seed_gradient_norm_ratio": ratio,
            "nonfinite": not ok,
        }

    def check_isolation(self) -> tuple[bool, dict[str, Any]]:
        return self.materialize_isolation_stats(self.check_isolation_async())
