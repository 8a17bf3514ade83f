"""``sync_optimizer``: an optimizer (and its learning-rate schedule) that follows a
growing model.

A germination or a gated blend adds parameters to the model; a cull removes
them. ``sync_optimizer`` puts the new ones into one new param group that copies
the hyperparameters of the group holding the host's parameters (lr, weight
decay, betas, ...), and takes the removed ones out of their group and out of
``optimizer.state`` (a group left empty is removed). Nothing else in the
optimizer's state changes.

With a scheduler, the new group joins the schedule where it is now: if the host's
group has base lr ``b`` and lr ``l`` now, the new group gets base ``s * b`` and
lr ``s * l`` (``s = 1``, or ``lr / b`` for an ``lr=`` override), and every later
``step()`` gives it ``s`` times the host group's lr (exactly for multiplicative
and closed-form schedules; ``CosineAnnealingLR`` with ``eta_min > 0`` and
``s != 1`` follows its formula from its own base, as any group of it does).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler as sched_mod

#: the schedulers whose state sync_optimizer knows how to extend for a new group
SUPPORTED_SCHEDULERS = (
    sched_mod.LambdaLR,
    sched_mod.LinearLR,
    sched_mod.CosineAnnealingLR,
    sched_mod.OneCycleLR,
    sched_mod.SequentialLR,
    sched_mod.StepLR,
)
#: per-group lrs a OneCycleLR keeps in the group itself (scaled with the group)
_GROUP_LRS = ("initial_lr", "max_lr", "min_lr")


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a framework's wrapper (accelerate, Lightning)."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"sync_optimizer: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    return optimizer


def unwrap_scheduler(scheduler: Any) -> Any:
    """The torch scheduler inside a framework's wrapper (accelerate's ``.scheduler``)."""
    while scheduler is not None and not isinstance(scheduler, sched_mod.LRScheduler):
        inner = getattr(scheduler, "scheduler", None)
        if inner is None:
            break
        scheduler = inner
    return scheduler


def find_plane(model: nn.Module) -> nn.Module:
    """The :class:`MorphogeneticModel` in ``model`` (itself, or inside DDP, a compiled
    module or any module that holds one)."""
    from kasmina_fast.hosts.plane import MorphogeneticModel

    if isinstance(model, MorphogeneticModel):
        return model
    for m in model.modules():  # (a compiled module's _orig_mod is one of its modules)
        if isinstance(m, MorphogeneticModel):
            return m
    raise TypeError(f"kasmina_fast: {type(model).__name__} holds no MorphogeneticModel (graft one first)")


def _reshard(model: nn.Module) -> None:
    """FSDP2 modules back to their sharded parameters: a forward without backward (an
    evaluation) can leave a module holding unsharded ones, which are other objects than
    the sharded parameters an optimizer holds (they would look like parameters that left)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - a torch without distributed
        return
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def schedulers(scheduler: Any) -> list[Any]:
    """The scheduler and its children (a SequentialLR's), depth first; [] for None."""
    if scheduler is None:
        return []
    out = [scheduler]
    for child in getattr(scheduler, "_schedulers", ()):
        out += schedulers(child)
    return out


def _check_scheduler(scheduler: Any) -> None:
    for s in schedulers(scheduler):
        if not isinstance(s, SUPPORTED_SCHEDULERS):
            names = ", ".join(c.__name__ for c in SUPPORTED_SCHEDULERS)
            raise TypeError(
                f"sync_optimizer: lr_scheduler {type(s).__name__} is not supported (a new param group "
                f"could not follow it); supported: {names}"
            )


def _extend_scheduler(scheduler: Any, host: int, scale: float) -> None:
    """Append the entries of a new group (a copy of group ``host``'s, scaled)."""
    for s in schedulers(scheduler):
        if isinstance(s, sched_mod.LambdaLR):
            s.lr_lambdas.append(s.lr_lambdas[host])
        if hasattr(s, "base_lrs"):
            s.base_lrs.append(s.base_lrs[host] * scale)
        if hasattr(s, "_last_lr"):
            s._last_lr.append(s._last_lr[host] * scale)


def drop_from_scheduler(scheduler: Any, index: int) -> None:
    """Remove group ``index``'s entries from the scheduler and its children."""
    for s in schedulers(scheduler):
        for name in ("lr_lambdas", "base_lrs", "_last_lr"):
            entries = getattr(s, name, None)
            if isinstance(entries, list) and len(entries) > index:
                entries.pop(index)


def _host_group(optimizer: torch.optim.Optimizer, host_ids: set[int]) -> int:
    for i, group in enumerate(optimizer.param_groups):
        if any(id(p) in host_ids for p in group["params"]):
            return i
    return 0


def sync_optimizer(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    lr_scheduler: Any = None,
    **group_options: Any,
) -> bool:
    """Make ``optimizer`` (and ``lr_scheduler``) match the parameters ``model`` has now.

    Parameters that appeared (a seed, a gated blend's gate; those with
    ``requires_grad``) join in one new param group copying the hyperparameters of
    the group that holds the host's parameters; ``group_options`` override them
    (``lr=`` is the new group's base lr, the one its schedule scales). Parameters
    that left the model leave their group and ``optimizer.state``; an emptied group
    is removed. ``model`` is a :class:`MorphogeneticModel` or holds one (DDP, a
    compiled module, a LightningModule). Framework wrappers (accelerate's
    ``AcceleratedOptimizer``/``AcceleratedScheduler``) are unwrapped.

    Returns True when the optimizer changed. Raises TypeError for a scheduler it
    cannot extend (naming it) before changing anything.
    """
    opt = unwrap_optimizer(optimizer)
    scheduler = unwrap_scheduler(lr_scheduler)
    _check_scheduler(scheduler)
    if "params" in group_options:
        raise ValueError("sync_optimizer: group_options cannot set 'params'")
    plane = find_plane(model)
    _reshard(model)
    in_model = {id(p) for p in model.parameters()}  # (the plane's among them)
    changed = False
    # parameters that left: out of their group and out of the state
    for index in reversed(range(len(opt.param_groups))):
        group = opt.param_groups[index]
        kept = [p for p in group["params"] if id(p) in in_model]
        if len(kept) == len(group["params"]):
            continue
        for p in group["params"]:
            if id(p) not in in_model:
                opt.state.pop(p, None)
        changed = True
        if kept:
            group["params"] = kept
        else:
            del opt.param_groups[index]
            drop_from_scheduler(scheduler, index)
    # parameters that appeared: one new group, copying the host's group
    known = {id(p) for g in opt.param_groups for p in g["params"]}
    new = []
    for p in plane.seed_parameters():
        if p.requires_grad and id(p) not in known:
            known.add(id(p))
            new.append(p)
    if not new:
        return changed
    host = _host_group(opt, {id(p) for p in plane.host_parameters()})
    source = opt.param_groups[host] if opt.param_groups else opt.defaults
    group = {k: v for k, v in source.items() if k != "params"}
    base = source.get("initial_lr", source["lr"])  # a scheduler keeps its base lr there
    scale = 1.0
    if "lr" in group_options:
        lr = float(group_options.pop("lr"))
        if base == 0:
            raise ValueError("sync_optimizer: lr= needs the host group's base lr to be nonzero")
        scale = lr / base
    group["lr"] = source["lr"] * scale
    for key in _GROUP_LRS:
        if key in group:
            group[key] = group[key] * scale
    group.update(group_options)
    group["params"] = new
    opt.add_param_group(group)
    if scheduler is not None:
        _extend_scheduler(scheduler, host, scale)
    return True
