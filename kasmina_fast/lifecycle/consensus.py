"""DDP consensus for lifecycle decisions: unanimous agreement by a MIN
all-reduce over ranks (spec 2.1). Every rank must reach the same decision
points in the same order; the slot guarantees that by calling :func:`agree`
exactly once per decision point whatever its local state."""

from __future__ import annotations

import torch
import torch.distributed as dist


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agree(local: bool, device: torch.device | str = "cpu") -> bool:
    """True only when every rank's ``local`` is True (no-op without a process group).

    One collective of one int32; on NCCL the tensor lives on ``device`` (a CUDA device).
    """
    if not distributed():
        return bool(local)
    on = torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=on)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())
