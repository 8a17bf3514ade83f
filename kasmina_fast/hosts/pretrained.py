"""A grown model in a folder: :func:`save_pretrained` and :func:`from_pretrained`
(``MorphogeneticModel.save_pretrained`` / ``MorphogeneticModel.from_pretrained``).

The folder holds

- the host, as its own ``save_pretrained`` writes it where it has one (a Hugging
  Face ``PreTrainedModel``: ``config.json`` and its weights, so
  ``AutoModel...from_pretrained(folder)`` still loads the base model), else
  ``model.safetensors``: the host's own tensors (a tied tensor once), the slots' left out;
- ``growth.json``: what was grown, primitives only: the host's class, every slot's
  point (path, topology, channels), task config, gate settings and lifecycle
  (blueprint and its options, stage, alpha, target, blend mode, metrics, ...), and the
  plane's settings;
- ``growth.safetensors``: the seeds' and gates' tensors, ``<slot id>/<name>``.

:func:`from_pretrained` takes a freshly built host (any initialisation), puts the
slots at the same points (a plain module is grafted from the recorded points,
without a probe), loads the host's weights and the growth, and returns the model,
whose outputs are those of the saved one (bit-equal on the same machine), in the
same stages. A host of another class, a missing point, a point of other features
or a tensor of another shape is refused, naming the first mismatch.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kasmina_fast.hosts.graft import ModuleHost
from kasmina_fast.hosts.plane import MorphogeneticModel, tied_aliases
from kasmina_fast.lifecycle import QualityGates, TaskConfig

GROWTH_JSON = "growth.json"
GROWTH_TENSORS = "growth.safetensors"
HOST_TENSORS = "model.safetensors"
FORMAT = "kasmina-fast growth"
VERSION = 1


def _class_name(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _hf_model(module: nn.Module) -> bool:
    """A Hugging Face ``PreTrainedModel`` (saved with its own ``save_pretrained``)."""
    return callable(getattr(module, "save_pretrained", None)) and hasattr(module, "config")


def _unique(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each storage once (a tied tensor under its first name), contiguous: what
    safetensors stores."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    out = {}
    for name, t in state_dict.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        out[name] = t.detach().contiguous()
    return out


def _user_model(model: MorphogeneticModel) -> nn.Module:
    """The module whose weights are the host's: a grafted model's own module, else the host."""
    host = model.host
    return host.model if isinstance(host, ModuleHost) else host


def _host_tensors(model: MorphogeneticModel) -> dict[str, Tensor]:
    """The host's tensors without the slots' (a built-in host holds its slots)."""
    module = _user_model(model)
    slot_prefixes = tuple(n + "." for n, m in module.named_modules() if m in model._slots.values())
    sd = module.state_dict()
    return {k: v for k, v in sd.items() if not k.startswith(slot_prefixes)}


def save_pretrained(model: MorphogeneticModel, directory: str | os.PathLike) -> None:
    """Write ``model`` into ``directory`` (created if needed): see the module docstring."""
    from safetensors.torch import save_file

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    user = _user_model(model)
    if _hf_model(user):
        user.save_pretrained(folder)
        weights = "save_pretrained"
    else:
        save_file(_unique(_host_tensors(model)), str(folder / HOST_TENSORS), metadata={"format": "pt"})
        weights = HOST_TENSORS
    grafted = isinstance(model.host, ModuleHost)
    slots = {}
    tensors: dict[str, Tensor] = {}
    for sid, slot in model.seed_slots.items():
        slots[sid] = {
            "topology": slot.task_config.topology,
            "channels": slot.channels,
            "task_config": dataclasses.asdict(slot.task_config),
            "gates": dataclasses.asdict(slot.gates),
            "embargo_epochs": slot.embargo_epochs,
            "lifecycle": slot.lifecycle_state(),
        }
        for name, t in slot.state_dict().items():
            if not name.endswith("_extra_state"):
                tensors[f"{sid}/{name}"] = t
    growth = {
        "format": FORMAT,
        "version": VERSION,
        "host": {"class": _class_name(user), "grafted": grafted, "weights": weights},
        "task_config": dataclasses.asdict(model.task_config),
        "plane": {
            "lifecycle": model.lifecycle_state(),
            "fast_mode": any(s.fast_mode for s in model.seed_slots.values()),
            "max_seeds": model.max_seeds,
            "max_seeds_per_slot": model.max_seeds_per_slot,
        },
        "slots": slots,
    }
    save_file(_unique(tensors), str(folder / GROWTH_TENSORS), metadata={"format": "pt"})
    (folder / GROWTH_JSON).write_text(json.dumps(growth, indent=1, allow_nan=True))


def _read_host_weights(folder: Path, weights: str) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if weights == HOST_TENSORS:
        return load_file(str(folder / HOST_TENSORS))
    index = folder / "model.safetensors.index.json"  # a sharded save_pretrained
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, Tensor] = {}
        for f in files:
            out |= load_file(str(folder / f))
        return out
    if not (folder / HOST_TENSORS).is_file():
        raise FileNotFoundError(
            f"from_pretrained: {str(folder)!r} holds no {HOST_TENSORS} (the host's save_pretrained "
            "weights); a host saved with safe_serialization=False is not supported"
        )
    return load_file(str(folder / HOST_TENSORS))


def _load_strict(module: nn.Module, tensors: dict[str, Tensor], what: str) -> None:
    """``tensors`` into ``module``, every key and shape checked first (a tied tensor's
    second name takes its first name's value): ValueError naming the first mismatch."""
    for alias, source in tied_aliases(module).items():
        if source in tensors and alias not in tensors:
            tensors[alias] = tensors[source]
    own = module.state_dict()
    missing = [k for k in own if k not in tensors and not k.endswith("_extra_state")]
    unexpected = [k for k in tensors if k not in own]
    if missing or unexpected:
        which = f"misses {missing[0]!r}" if missing else f"has {unexpected[0]!r}, which the host has not"
        raise ValueError(
            f"from_pretrained: the saved {what} {which} ({len(missing)} missing, {len(unexpected)} "
            f"unexpected): a host of another architecture or configuration"
        )
    for k, v in own.items():
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape):
            raise ValueError(
                f"from_pretrained: the saved {what} has {k!r} of shape {list(tensors[k].shape)}, "
                f"the host {list(v.shape)}: a host of another configuration"
            )
    with torch.no_grad():
        for k, v in own.items():
            if k in tensors:
                v.copy_(tensors[k])


def from_pretrained(
    host: nn.Module,
    directory: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    **plane_options: Any,
) -> MorphogeneticModel:
    """The grown model saved in ``directory``, on ``host`` (freshly built, any
    initialisation): see the module docstring. ``device``: where the model lives
    (default: where ``host``'s first parameter is); ``plane_options`` go to
    :class:`MorphogeneticModel` (``on_telemetry``, ``shard_module``; the saved
    settings, such as ``gates`` and ``max_seeds``, are the defaults)."""
    from safetensors.torch import load_file

    folder = Path(directory)
    path = folder / GROWTH_JSON
    if not path.is_file():
        raise FileNotFoundError(f"from_pretrained: {str(folder)!r} holds no {GROWTH_JSON}")
    growth = json.loads(path.read_text())
    if growth.get("format") != FORMAT or int(growth.get("version", 0)) > VERSION:
        raise ValueError(
            f"from_pretrained: {str(path)!r} is not a {FORMAT} file of version <= {VERSION} "
            f"(format {growth.get('format')!r}, version {growth.get('version')!r})"
        )
    saved_host = growth["host"]
    if isinstance(host, MorphogeneticModel):
        raise TypeError("from_pretrained: pass the host itself (freshly built), not a grown model")
    if isinstance(host, ModuleHost):
        raise TypeError("from_pretrained: pass the plain model (it is grafted here), not a ModuleHost")
    if _class_name(host) != saved_host["class"]:
        raise ValueError(
            f"from_pretrained: {str(folder)!r} holds a growth of a {saved_host['class']} host; "
            f"got a {_class_name(host)}"
        )
    slots = growth["slots"]
    if saved_host["grafted"]:
        features = {sid: (s["topology"], s["channels"]) for sid, s in slots.items()}
        plane_host: nn.Module = ModuleHost(host, list(slots), features=features)
    else:
        plane_host = host
        points = dict(getattr(host, "injection_points", {}))
        topologies = dict(getattr(host, "topologies", {}))
        for sid, s in slots.items():
            if sid not in points:
                raise ValueError(
                    f"from_pretrained: the host has no point {sid!r}; points: {', '.join(points)}"
                )
            if points[sid] != s["channels"] or topologies.get(sid, s["topology"]) != s["topology"]:
                raise ValueError(
                    f"from_pretrained: point {sid!r} has {topologies.get(sid)} features of {points[sid]} "
                    f"channels in the host, {s['topology']} of {s['channels']} in the saved growth"
                )
    _load_strict(host, _read_host_weights(folder, saved_host["weights"]), "host")
    first = next(iter(slots.values()))
    plane = growth["plane"]
    options = {
        "task_config": TaskConfig(**growth["task_config"]),
        "gates": QualityGates(**first["gates"]),
        "fast_mode": plane["fast_mode"],
        "max_seeds": plane["max_seeds"],
        "max_seeds_per_slot": plane["max_seeds_per_slot"],
        **plane_options,
    }
    if device is None:
        p = next(iter(host.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    model = MorphogeneticModel(plane_host, device, slots=list(slots), **options)
    model.set_extra_state(plane["lifecycle"])
    tensors = load_file(str(folder / GROWTH_TENSORS), device=str(torch.device(device)))
    for sid, slot in model.seed_slots.items():
        saved = slots[sid]
        if "gates" not in plane_options:
            slot.gates = QualityGates(**saved["gates"])
        slot.embargo_epochs = int(saved["embargo_epochs"])
        slot.restore(saved["lifecycle"])
        ours = {k[len(sid) + 1 :]: v for k, v in tensors.items() if k.startswith(sid + "/")}
        _load_strict(slot, ours, f"growth of slot {sid!r}")
    model._reattach_host(model, None)
    return model
