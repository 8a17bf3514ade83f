"""Checkpoints of a growing model that survive a crash: ``torch.distributed.checkpoint`` (DCP).

:func:`save` writes the model's and the optimizer's tensors (sharded as they are:
each rank writes its own shards), the lifecycle state of every slot (stage,
alpha, schedule, metrics, embargo counters; primitives only), the optimizer's
seed groups, the lr scheduler, a ``Grower``'s state, every rank's RNG states and
the caller's ``extra`` (the growth state in the one encoding of
:mod:`kasmina_fast.lifecycle.persist`).
:func:`load` reads them into a model of *any* world size, sharded or not (DCP
reshards): first the lifecycle, which rebuilds every seed and gate the
checkpoint holds, then the optimizer (and scheduler) are made for the model as it
now is, then every tensor is loaded. Call both on every rank, or in one process.

Atomicity. A save writes into the sibling ``<folder>.tmp`` (a leftover one is
removed first), then one rank writes the completion marker (``.complete``) and,
after a barrier, swaps the folders with renames: ``folder -> folder.old``,
``tmp -> folder``, then removes ``folder.old``. Killed at any point, the newest
complete checkpoint is in ``folder`` or, between the two renames only, in
``folder.old``; :func:`load` (and :meth:`Checkpointer.latest`) take it from there.
A folder without its marker is refused, naming it.

:class:`Checkpointer` keeps ``root/step-N`` folders (the newest ``keep`` complete
ones) and can save asynchronously (DCP's ``async_save``: training continues while
the files are written; the next save, or :meth:`Checkpointer.wait`, finishes the
previous one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from kasmina_fast.hosts.plane import MorphogeneticModel
from kasmina_fast.lifecycle import persist
from kasmina_fast.training import param_groups as _groups

#: the completion marker a checkpoint folder holds once every rank's files are written
MARKER = ".complete"
_STEP = re.compile(r"^step-(\d+)$")


@dataclasses.dataclass
class Restored:
    """What :func:`load` rebuilt: the optimizer (and scheduler) for the model as it now
    is, with their state loaded, and the ``extra`` the checkpoint was saved with."""

    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    extra: Any


# ---- ranks ------------------------------------------------------------------------------


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def _world() -> int:
    return dist.get_world_size() if _distributed() else 1


def _barrier() -> None:
    if _distributed():
        dist.barrier()


# ---- folders ----------------------------------------------------------------------------


def _tmp(folder: Path) -> Path:
    return folder.with_name(folder.name + ".tmp")


def _old(folder: Path) -> Path:
    return folder.with_name(folder.name + ".old")


def is_complete(folder: str | os.PathLike) -> bool:
    """``folder`` holds a checkpoint whose every file was written (its marker is there)."""
    return (Path(folder) / MARKER).is_file()


def _readable(folder: Path) -> Path:
    """Where the newest complete checkpoint of ``folder`` is: the folder, or its ``.old``
    twin when a save was killed between its two renames."""
    if is_complete(folder):
        return folder
    if is_complete(_old(folder)):
        return _old(folder)
    raise FileNotFoundError(
        f"kasmina_fast.checkpoint: {str(folder)!r} holds no complete checkpoint (no {MARKER} marker: "
        "a save that did not finish, or not a kasmina_fast checkpoint)"
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: Path, folder: Path, world_size: int) -> None:
    """Rank 0, once every rank's files are in ``tmp``: the marker, then the swap."""
    marker = tmp / MARKER
    with open(marker, "w") as f:
        json.dump({"version": 2, "world_size": world_size}, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    old = _old(folder)
    if old.exists() and is_complete(folder):
        shutil.rmtree(old)  # a killed swap's leftover, superseded by ``folder``
    if folder.exists():
        if is_complete(old):  # folder is not complete: old is the last good one, keep it
            shutil.rmtree(folder)
        else:
            shutil.rmtree(old, ignore_errors=True)
            os.rename(folder, old)
    os.rename(tmp, folder)
    _fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


def _prepare(folder: Path) -> Path:
    """Rank 0 removes a leftover ``.tmp`` of an interrupted save; every rank then writes there."""
    tmp = _tmp(folder)
    if _rank() == 0:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    return tmp


# ---- what a checkpoint holds ------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    """This rank's RNG states (primitives and tensors: ``weights_only`` loads them)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # (an ndarray: kept as a tensor)
    state["numpy"] = (kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss)
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every single-process save and load that it assumes one process:
    that is this module's intent there, so the warning is silenced (only then)."""
    if _distributed():
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed is .*assuming the intent")
        yield


def _model_tensors(model_sd: dict[str, Any]) -> dict[str, Any]:
    """The model's entries DCP reads back: the ``_extra_state`` entries (the lifecycle,
    whose size varies with it) travel in the lifecycle blob instead."""
    return {k: v for k, v in model_sd.items() if not k.endswith("_extra_state")}


def _state(
    model: MorphogeneticModel,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    extra: Any,
    grower: Any,
) -> dict[str, Any]:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    lifecycle = {
        "plane": model.lifecycle_state(),
        "slots": {sid: slot.lifecycle_state() for sid, slot in model.seed_slots.items()},
        "training": _groups.training_state(model, optimizer, lr_scheduler, grower, with_state=False),
        "lr_scheduler": None if lr_scheduler is None else lr_scheduler.state_dict(),
        "extra": extra,
        "world_size": _world(),
        # parameters with optimizer state (a seed that joined and has not stepped has none)
        "optim_state": sorted(optim_sd.get("state", {})),
    }
    # (refused now rather than when the checkpoint is needed)
    blob = io.BytesIO(persist.encode_bytes(lifecycle, "kasmina_fast.checkpoint.save: extra"))
    return {
        "model": _model_tensors(model_sd),
        "optim": optim_sd,
        "lifecycle": blob,
        f"rng/{_rank()}": io.BytesIO(persist.encode_bytes(_rng_state())),
    }


# ---- save and load ----------------------------------------------------------------------


def save(
    model: MorphogeneticModel,
    optimizer: torch.optim.Optimizer,
    checkpoint_id: str | os.PathLike,
    *,
    lr_scheduler: Any = None,
    extra: Any = None,
    grower: Any = None,
) -> None:
    """Save the model, the optimizer, the lifecycle, ``lr_scheduler``'s position, the
    ``grower``'s state (a :class:`kasmina_fast.Grower`: its epoch, its policy's memory
    and its pending telemetry), every rank's RNG states and ``extra`` (e.g. the epoch
    and the data position; anything ``torch.load(weights_only=True)`` reads) to the
    folder ``checkpoint_id``, atomically: a reader sees the previous complete
    checkpoint until this one is complete."""
    folder = Path(checkpoint_id)
    tmp = _prepare(folder)
    state = _state(model, optimizer, lr_scheduler, extra, grower)
    with _single_process_quiet():
        dcp.save(state, checkpoint_id=str(tmp))
    _finish(tmp, folder)


def _finish(tmp: Path, folder: Path) -> None:
    _barrier()  # every rank's files are written
    if _rank() == 0:
        _commit(tmp, folder, _world())
    _barrier()


def _read_blob(folder: Path, key: str) -> Any:
    blob = {key: io.BytesIO()}
    with _single_process_quiet():
        dcp.load(blob, checkpoint_id=str(folder))
    return persist.decode(blob[key])


def load(
    model: MorphogeneticModel,
    checkpoint_id: str | os.PathLike,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    *,
    lr_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    grower: Any = None,
) -> Restored:
    """Resume ``model`` (built as the saved one was, before any germination; sharded or
    not, on any number of ranks) from ``checkpoint_id``.

    ``make_optimizer(model)`` builds the optimizer once the seeds exist (the seeds'
    own param groups, as ``sync_optimizer`` made them, are rebuilt from the
    checkpoint); ``lr_scheduler(optimizer)``, a factory too, builds the scheduler,
    whose position is then loaded. ``grower``: the run's :class:`kasmina_fast.Grower`
    takes the saved Grower's state and the restored optimizer and scheduler; a
    checkpoint that holds a Grower's state, loaded without ``grower=``, warns (its
    policy would forget what it did). This rank's RNG states
    are restored when the world size is the one saved. Returns :class:`Restored`.
    """
    folder = _readable(Path(checkpoint_id))
    state = _read_blob(folder, "lifecycle")
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
    training = state.get("training") or {"groups": state.get("seed_groups"), "grower": None}
    if training["groups"]:  # (the scheduler is made below, for the groups as they then are)
        _groups.add_groups(optimizer, model, None, training["groups"])
    scheduler = lr_scheduler(optimizer) if lr_scheduler is not None else None
    model_sd, optim_sd = get_state_dict(model, optimizer)  # (initialises every parameter's state)
    planner = DefaultLoadPlanner(allow_partial_load=True)  # parameters saved without state
    tensors = _model_tensors(model_sd)
    with _single_process_quiet():
        dcp.load({"model": tensors, "optim": optim_sd}, checkpoint_id=str(folder), planner=planner)
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    if "optim_state" in state:  # ... get none back, as in the run that saved them
        stateful = set(state["optim_state"])
        for name, p in model.named_parameters():
            if name not in stateful:
                optimizer.state.pop(p, None)
    if scheduler is not None:
        if state.get("lr_scheduler") is None:
            raise ValueError(
                f"kasmina_fast.checkpoint.load: {str(folder)!r} was saved without an lr_scheduler"
            )
        scheduler.load_state_dict(state["lr_scheduler"])
    if state.get("world_size", _world()) == _world():
        _set_rng_state(_read_blob(folder, f"rng/{_rank()}"))
    _groups.restore_grower(grower, training["grower"], "kasmina_fast.checkpoint.load", optimizer, scheduler)
    return Restored(optimizer, scheduler, state.get("extra"))


# ---- step folders -----------------------------------------------------------------------


class Checkpointer:
    """``root/step-N`` checkpoints, the newest ``keep`` complete ones kept.

    ``save(step, model, optimizer, ...)`` saves atomically into ``root/step-N``;
    ``latest()`` is the newest complete step (None without one); ``load(...)``
    reads it (or ``step=``). With ``async_save=True`` the files are written by DCP's
    ``async_save`` while training continues; the next ``save`` (or ``wait()``, which
    every rank calls before exiting) completes the previous one: its marker, its
    rename, the pruning. Every rank calls every method.
    """

    def __init__(self, root: str | os.PathLike, keep: int = 3, async_save: bool = False) -> None:
        if keep < 1:
            raise ValueError(f"Checkpointer: keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = int(keep)
        self.async_save = bool(async_save)
        self._pending: tuple[Any, Path, Path] | None = None  # (future, tmp, folder)

    def folder(self, step: int) -> Path:
        return self.root / f"step-{int(step)}"

    def steps(self) -> list[int]:
        """The complete steps, oldest first (a ``step-N.old`` left by a killed swap counts)."""
        if not self.root.is_dir():
            return []
        found = set()
        for p in self.root.iterdir():
            name = p.name[: -len(".old")] if p.name.endswith(".old") else p.name
            m = _STEP.match(name)
            if m and is_complete(p):
                found.add(int(m.group(1)))
        return sorted(found)

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(
        self,
        step: int,
        model: MorphogeneticModel,
        optimizer: torch.optim.Optimizer,
        *,
        lr_scheduler: Any = None,
        extra: Any = None,
        grower: Any = None,
    ) -> Path:
        """Save into ``root/step-<step>`` (atomically); returns that folder. The
        arguments are :func:`save`'s."""
        self.wait()
        folder = self.folder(step)
        tmp = _prepare(folder)
        state = _state(model, optimizer, lr_scheduler, extra, grower)
        with _single_process_quiet():
            if self.async_save:
                self._pending = (dcp.async_save(state, checkpoint_id=str(tmp)), tmp, folder)
                return folder
            dcp.save(state, checkpoint_id=str(tmp))
        self._complete(tmp, folder)
        return folder

    def wait(self) -> None:
        """Finish an asynchronous save in flight (a no-op without one)."""
        if self._pending is None:
            return
        future, tmp, folder = self._pending
        self._pending = None
        future.result()
        self._complete(tmp, folder)

    def _complete(self, tmp: Path, folder: Path) -> None:
        _finish(tmp, folder)
        if _rank() == 0:
            for step in self.steps()[: -self.keep]:
                shutil.rmtree(self.folder(step), ignore_errors=True)
                shutil.rmtree(_old(self.folder(step)), ignore_errors=True)
            for leftover in self.root.glob("step-*.tmp"):  # interrupted saves (none is in flight now)
                shutil.rmtree(leftover, ignore_errors=True)
        _barrier()

    def load(
        self,
        model: MorphogeneticModel,
        make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
        *,
        step: int | None = None,
        lr_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        grower: Any = None,
    ) -> Restored:
        """:func:`load` from ``step`` (default: :meth:`latest`)."""
        step = self.latest() if step is None else step
        if step is None:
            raise FileNotFoundError(f"Checkpointer: no complete checkpoint under {str(self.root)!r}")
        return load(model, self.folder(step), make_optimizer, lr_scheduler=lr_scheduler, grower=grower)
