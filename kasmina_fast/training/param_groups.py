"""The seeds' param groups of an optimizer, taken out and put back (framework
callbacks and kasmina_fast.checkpoint use them).

A framework builds its optimizer from the model as it is when training starts
(on a resume: without the seeds, or with them in its own groups) and then loads
the saved optimizer state, which must have the same groups. These helpers move
the groups that ``sync_optimizer`` added (every parameter a seed's or a gate's)
in and out, with their state and their learning-rate schedule entries, keyed by
the parameters' names in the :class:`MorphogeneticModel`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler as sched_mod

from kasmina_fast.training.optimizer import (
    drop_from_scheduler,
    schedulers,
    unwrap_optimizer,
    unwrap_scheduler,
)


def seed_group_indices(optimizer: Any, plane: nn.Module) -> list[int]:
    """The groups holding seed (and gate) parameters only: those ``sync_optimizer`` added.
    They must be the last groups (sync_optimizer appends them)."""
    opt = unwrap_optimizer(optimizer)
    seed = {id(p) for p in plane.seed_parameters()}
    found = [
        i for i, g in enumerate(opt.param_groups) if g["params"] and all(id(p) in seed for p in g["params"])
    ]
    if found and found != list(range(len(opt.param_groups) - len(found), len(opt.param_groups))):
        raise RuntimeError(
            "kasmina_fast: the seeds' param groups must be the optimizer's last groups (sync_optimizer "
            f"appends them); groups {found} of {len(opt.param_groups)} hold seed parameters only"
        )
    return found


def export_groups(
    optimizer: Any, plane: nn.Module, scheduler: Any, indices: list[int], *, with_state: bool = True
) -> dict[str, Any]:
    """The groups ``indices``: hyperparameters, parameter names, optimizer state (empty
    without ``with_state``: what a framework that saves the optimizer state itself
    needs to rebuild the groups before loading it), and each scheduler's entries
    (``weights_only``-loadable: tensors and primitives)."""
    opt = unwrap_optimizer(optimizer)
    names = {id(p): n for n, p in plane.named_parameters()}
    groups = []
    for i in indices:
        g = opt.param_groups[i]
        groups.append(
            {
                "hyper": {k: v for k, v in g.items() if k != "params"},
                "params": [names[id(p)] for p in g["params"]],
                "state": [dict(opt.state.get(p, {})) if with_state else {} for p in g["params"]],
            }
        )
    scheds = []
    n_base = len(opt.param_groups) - len(indices)
    for s in schedulers(unwrap_scheduler(scheduler)):
        entry: dict[str, Any] = {}
        for name in ("base_lrs", "_last_lr"):
            if isinstance(getattr(s, name, None), list):
                entry[name] = [getattr(s, name)[i] for i in indices]
        if isinstance(s, sched_mod.LambdaLR):  # which host group's lambda each group follows
            entry["lambda_source"] = [
                next((j for j in range(n_base) if s.lr_lambdas[j] is s.lr_lambdas[i]), 0) for i in indices
            ]
        scheds.append(entry)
    return {"groups": groups, "schedulers": scheds}


def remove_groups(optimizer: Any, scheduler: Any, indices: list[int]) -> None:
    """Take the groups ``indices`` (and their state and schedule entries) out."""
    opt = unwrap_optimizer(optimizer)
    sched = unwrap_scheduler(scheduler)
    for i in sorted(indices, reverse=True):
        for p in opt.param_groups[i]["params"]:
            opt.state.pop(p, None)
        del opt.param_groups[i]
        drop_from_scheduler(sched, i)


def add_groups(optimizer: Any, plane: nn.Module, scheduler: Any, exported: dict[str, Any]) -> None:
    """Put ``export_groups`` output back, after the groups there are (parameters by name;
    a parameter some other group holds is taken out of it first)."""
    opt = unwrap_optimizer(optimizer)
    params = dict(plane.named_parameters())
    wanted = {id(params[n]) for g in exported["groups"] for n in g["params"]}
    for g in opt.param_groups:  # e.g. a framework put the seeds into its own groups
        g["params"] = [p for p in g["params"] if id(p) not in wanted]
    for g in exported["groups"]:
        ps = [params[n] for n in g["params"]]
        opt.add_param_group({**g["hyper"], "params": ps})
        for p, state in zip(ps, g["state"]):
            if state:
                opt.state[p] = {
                    k: v.to(p.device) if torch.is_tensor(v) and v.ndim else v for k, v in state.items()
                }
    for s, entry in zip(schedulers(unwrap_scheduler(scheduler)), exported["schedulers"]):
        for name in ("base_lrs", "_last_lr"):
            if name in entry:
                getattr(s, name).extend(entry[name])
        if "lambda_source" in entry:
            s.lr_lambdas.extend(s.lr_lambdas[j] for j in entry["lambda_source"])


def training_state(
    plane: nn.Module, optimizer: Any, scheduler: Any, grower: Any, *, with_state: bool
) -> dict[str, Any]:
    """What a resumed run needs besides the model: the seeds' groups (:func:`export_groups`
    of every seed group) and ``grower``'s state (None without one). The one layout that
    the Hugging Face and Lightning callbacks and ``kasmina_fast.checkpoint`` save, each
    encoded by ``lifecycle.persist``."""
    indices = seed_group_indices(optimizer, plane)
    return {
        "groups": export_groups(optimizer, plane, scheduler, indices, with_state=with_state),
        "grower": None if grower is None else grower.state_dict(),
    }


def restore_grower(
    grower: Any, state: dict[str, Any] | None, where: str, optimizer: Any, scheduler: Any
) -> None:
    """``grower`` takes the restored ``optimizer`` and ``scheduler`` and the saved Grower
    ``state``; a saved state with no ``grower`` to take it warns, naming the argument."""
    if grower is not None:
        grower.optimizer, grower.lr_scheduler = optimizer, scheduler
    if state is None:
        return
    if grower is None:
        warnings.warn(
            f"{where}: the checkpoint holds a Grower's state (its epoch, its policy's memory of what it "
            "germinated, pending telemetry) and no grower= was passed to take it; pass grower= so the "
            "policy does not forget",
            UserWarning,
            stacklevel=3,
        )
        return
    grower.load_state_dict(state)
