"""Distributed checkpoints of a growing model: ``torch.distributed.checkpoint`` (DCP).

:func:`save` writes the model's and the optimizer's tensors (sharded as they are:
each rank writes its own shards) and the lifecycle state of every slot (stage,
alpha, schedule, metrics, embargo counters; primitives only). :func:`load` reads
them into a model of *any* world size, sharded or not (DCP reshards): first the
lifecycle state, which rebuilds every seed and gate the checkpoint holds (sharded
like the host, see ``MorphogeneticModel``), then the optimizer is made for the
model as it now is, then every tensor is loaded. Training continues as if
uninterrupted. Call both on every rank of the job, or in a single process.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from kasmina_fast.hosts.plane import MorphogeneticModel


def _lifecycle(model: MorphogeneticModel) -> io.BytesIO:
    state = {
        "plane": model.get_extra_state(),
        "slots": {sid: slot.get_extra_state() for sid, slot in model.seed_slots.items()},
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def save(model: MorphogeneticModel, optimizer: torch.optim.Optimizer, checkpoint_id: str) -> None:
    """Save the model, the optimizer and the lifecycle state to ``checkpoint_id`` (a folder)."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save(
        {"model": model_sd, "optim": optim_sd, "lifecycle": _lifecycle(model)}, checkpoint_id=checkpoint_id
    )


def load(
    model: MorphogeneticModel,
    checkpoint_id: str,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
) -> torch.optim.Optimizer:
    """Resume ``model`` (built as the saved one was, before any germination; sharded or
    not, on any number of ranks) from ``checkpoint_id``; returns the optimizer that
    ``make_optimizer(model)`` builds once the seeds exist, with its state loaded."""
    blob = {"lifecycle": io.BytesIO()}
    dcp.load(blob, checkpoint_id=checkpoint_id)
    blob["lifecycle"].seek(0)
    state = torch.load(blob["lifecycle"], weights_only=True)
    if set(state["slots"]) != set(model.slot_ids):
        raise ValueError(
            f"kasmina_fast.checkpoint.load: the checkpoint has slots {sorted(state['slots'])}, "
            f"the model {sorted(model.slot_ids)}"
        )
    model.set_extra_state(state["plane"])
    host = model.host_parameters()
    for sid, slot in model.seed_slots.items():
        slot.restore(state["slots"][sid])
        if slot.seed is not None:
            slot.attach_host(host)
    model.architecture_version += 1
    optimizer = make_optimizer(model)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=checkpoint_id)
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    return optimizer
