"""Seeds in any ``nn.Module``: :class:`ModuleHost` and :func:`graft`.

A point is a submodule, named by its dotted path (``"layer2"``,
``"transformer.h.3"``); its slot sits right after that submodule's output,
through a forward hook on the submodule. Nothing is registered inside the
user's model, so its ``state_dict()`` keys do not change: a pretrained
checkpoint loads into it before or after grafting. One probe forward on an
example input finds each point's output: ``[B, C, H, W]`` is a CNN point with C
channels, ``[B, T, C]`` a transformer point C wide, ``[B, C]`` a dense point; where the submodule returns
a tuple or a mapping (a Hugging Face ``ModelOutput``), its first element is
that tensor, and the slot transforms that element only.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kasmina_fast.hosts.plane import MorphogeneticModel
from kasmina_fast.lifecycle import TaskConfig
from kasmina_fast.lifecycle.stages import FEATURE_DIMS


def _call(model: nn.Module, inputs: Any) -> Any:
    """``model`` on an example input: a tensor, a tuple of arguments or a dict of keyword arguments."""
    if isinstance(inputs, tuple):
        return model(*inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def _features(output: Any) -> Any:
    """The tensor a slot transforms: the output, or its first element."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):  # a ModelOutput's keys are its fields that are not None
        return next(iter(output.values()), None)
    if isinstance(output, (tuple, list)) and output:
        return output[0]
    return None


class _SlotHook:
    """The forward hook on a point's submodule: its output (or the output's first
    element) through the point's slot. Holds the slot itself, so a call costs one
    module call; ``ModuleHost.register_slot`` re-points it."""

    def __init__(self, slot: nn.Module) -> None:
        self.slot = slot

    @staticmethod
    def remove_from(module: nn.Module) -> None:
        """Take the point hook off ``module``."""
        for key in [k for k, h in module._forward_hooks.items() if isinstance(h, _SlotHook)]:
            del module._forward_hooks[key]

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        slot = self.slot
        if not getattr(slot, "_active", True):  # an empty SeedSlot: the output as it is, at no call's cost
            return None
        if isinstance(output, Tensor):
            return slot(output)
        if isinstance(output, Mapping):
            key = next(iter(output.keys()))
            output[key] = slot(output[key])
            return output
        first = slot(output[0])
        if isinstance(output, list):
            return [first, *output[1:]]
        if hasattr(output, "_replace"):  # a namedtuple
            return output._replace(**{output._fields[0]: first})
        return (first, *output[1:])


class _Stop(Exception):
    """Ends a forward early at a point (``forward_to_segment``)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _stop(module: nn.Module, args: Any, output: Any) -> None:
    raise _Stop(output)


def _slot_key(path: str) -> str:
    """A module name for the slot of ``path`` (module names cannot contain '.')."""
    return path.replace(".", "-")


class ModuleHost(nn.Module):
    """Any ``nn.Module`` as a host, with a point after each of the submodules ``points``.

    ``model`` is kept as the child ``model`` (``ModuleHost(m).model is m``); the
    slots are the children ``slots[<path with '.' as '-'>]``. The hooks live on the
    model's submodules, so calling ``model`` itself runs the slots too; a deep copy
    of the grafted model is a separate grown model (its hooks call its own slots). The points are in the
    order the probe ran them (host order). A point's topology comes from the
    probe: :attr:`topologies`.

    ``features`` (``{path: (topology, channels)}``, as a saved growth records them)
    stands in for ``example_input``: no probe runs, and the points are in its order.

    Raises ValueError for an unknown path (naming the nearest ones), the root, a
    path listed twice or grafted already, a submodule that does not run in the probe or runs more
    than once (a slot would apply at every call), and an output that is not
    ``[B, C, H, W]``, ``[B, T, C]`` or ``[B, C]`` floating point (nor a tuple or mapping that
    starts with one).
    """

    def __init__(
        self,
        model: nn.Module,
        points: Sequence[str],
        *,
        example_input: Any = None,
        features: Mapping[str, tuple[str, int]] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(points, str):
            points = [points]
        points = list(points)
        if not points:
            raise ValueError("ModuleHost: give at least one point (a dotted submodule path)")
        if len(set(points)) != len(points):
            raise ValueError(f"ModuleHost: a point is listed twice in {points}")
        self.model = model
        modules = {path: _submodule(model, path) for path in points}
        for path, module in modules.items():
            if any(isinstance(h, _SlotHook) for h in module._forward_hooks.values()):
                raise ValueError(f"ModuleHost: {path!r} holds a slot already (the model is grafted there)")
        self._channels: dict[str, int] = {}
        self._topologies: dict[str, str] = {}
        if features is not None:  # known already (a saved growth): no probe, in the order given
            order = list(points)
            for path in order:
                self._topologies[path], self._channels[path] = features[path][0], int(features[path][1])
        else:
            if example_input is None:
                raise ValueError(
                    "ModuleHost: pass example_input (one probe forward finds each point's features)"
                )
            shapes, order = _probe(model, modules, example_input)
            for path in order:
                shape = shapes[path]
                self._topologies[path] = next(t for t, n in FEATURE_DIMS.items() if n == len(shape))
                self._channels[path] = shape[1] if len(shape) == 4 else shape[-1]
        self.slots = nn.ModuleDict({_slot_key(p): nn.Identity() for p in order})
        self._hooks: dict[str, _SlotHook] = {}
        for path in order:
            hook = _SlotHook(self.slots[_slot_key(path)])
            modules[path].register_forward_hook(hook)
            self._hooks[path] = hook

    @property
    def injection_points(self) -> dict[str, int]:
        """Every point -> its channels (CNN) or width (transformer), in host order."""
        return dict(self._channels)

    @property
    def segments(self) -> list[str]:
        return list(self._channels)

    @property
    def forward_signature(self) -> inspect.Signature:
        """The user's model's forward signature (what :meth:`forward` passes through)."""
        return inspect.signature(self.model.forward)

    @property
    def topologies(self) -> dict[str, str]:
        """Every point -> ``"cnn"``, ``"transformer"`` or ``"dense"``, found by the probe."""
        return dict(self._topologies)

    def _point(self, path: str) -> str:
        if path not in self._channels:
            raise ValueError(f"ModuleHost: {path!r} is not a point; points: {', '.join(self._channels)}")
        return path

    def register_slot(self, slot_id: str, slot: nn.Module) -> None:
        self.slots[_slot_key(self._point(slot_id))] = slot
        self._hooks[slot_id].slot = slot

    def unregister_slot(self, slot_id: str) -> None:
        self.register_slot(slot_id, nn.Identity())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The user's model, unchanged in signature and return type; each point's output
        passes through its slot."""
        return self.model(*args, **kwargs)

    def forward_to_segment(self, segment: str, x: Any, from_segment: str | None = None) -> Any:
        """The point's output (after its slot) for the model input ``x`` (a tensor, a
        tuple of arguments or a dict, like ``example_input``): the forward runs up to
        that point and stops. With ``from_segment``, ``x`` is that point's output and
        the model must be a chain of ``nn.Sequential`` (see :meth:`forward_from_segment`)."""
        handle = _submodule(self.model, self._point(segment)).register_forward_hook(_stop)
        try:
            if from_segment is None:
                _call(self.model, x)
            else:
                self.forward_from_segment(from_segment, x)
        except _Stop as stop:
            return stop.value
        finally:
            handle.remove()
        raise ValueError(f"ModuleHost: segment {segment!r} does not run after {from_segment!r}")

    def forward_from_segment(self, segment: str, x: Tensor) -> Any:
        """The model's output from a point's output ``x``: the modules that follow the
        point in each ``nn.Sequential`` that holds it, innermost first. Only for points
        whose every ancestor is a plain ``nn.Sequential`` (its own ``forward``);
        anywhere else the rest of the forward is arbitrary Python that cannot be run
        from the middle, and NotImplementedError says so."""
        for seq, index in reversed(_chain(self.model, self._point(segment))):
            for module in list(seq)[index + 1 :]:
                x = module(x)
        return x


def _submodule(model: nn.Module, path: str) -> nn.Module:
    if path == "":
        raise ValueError("ModuleHost: the root module cannot be a point (its output is the model's)")
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        near = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
        hint = f"; nearest: {', '.join(near)}" if near else f"; e.g. {', '.join(names[:5])}"
        raise ValueError(f"ModuleHost: {type(model).__name__} has no submodule {path!r}{hint}") from None


def _chain(model: nn.Module, path: str) -> list[tuple[nn.Sequential, int]]:
    """(sequential, index of the next step on the path) from the root down to ``path``."""
    steps = []
    module = model
    for name in path.split("."):
        if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
            where = type(module).__name__
            raise NotImplementedError(
                f"ModuleHost: the model cannot be split at {path!r}: {where} on its path is not a plain "
                "nn.Sequential, so what runs after the point is its own Python forward"
            )
        steps.append((module, list(module._modules).index(name)))
        module = module._modules[name]
    return steps


def _probe(
    model: nn.Module, modules: dict[str, nn.Module], example_input: Any
) -> tuple[dict[str, torch.Size], list[str]]:
    """One forward in eval mode without grad: each point's output shape, and the
    points in the order they ran. Every module's training flag is restored."""
    calls: dict[str, list[Any]] = {path: [] for path in modules}
    order: list[str] = []

    def recorder(path: str):
        def hook(module, args, output):
            if not calls[path]:
                order.append(path)
            calls[path].append(_features(output))

        return hook

    handles = [m.register_forward_hook(recorder(p)) for p, m in modules.items()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            _call(model, example_input)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    shapes = {}
    for path, seen in calls.items():
        if not seen:
            raise ValueError(f"ModuleHost: {path!r} does not run in the forward of the example input")
        if len(seen) > 1:
            raise ValueError(
                f"ModuleHost: {path!r} runs {len(seen)} times in one forward; a slot there would apply "
                f"{len(seen)} times (choose a submodule that runs once)"
            )
        out = seen[0]
        if not isinstance(out, Tensor) or out.ndim not in (2, 3, 4) or not out.is_floating_point():
            what = f"shape {list(out.shape)} {out.dtype}" if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"ModuleHost: {path!r} outputs {what}; a point needs [B, C, H, W] (cnn), [B, T, C] "
                "(transformer) or [B, C] (dense) floating-point features, or a tuple or mapping that "
                "starts with them"
            )
        shapes[path] = out.shape
    return shapes, order


def graft(
    model: nn.Module,
    slots: Sequence[str] | str,
    *,
    example_input: Any,
    task_config: TaskConfig | None = None,
    device: torch.device | str | None = None,
    **plane_options: Any,
) -> MorphogeneticModel:
    """``model`` with a :class:`SeedSlot` after each submodule in ``slots`` (dotted paths):
    a :class:`MorphogeneticModel` whose ``forward`` takes and returns what ``model``'s
    does, and whose slot ids are the paths.

    ``example_input`` (a tensor, a tuple of arguments, or a dict of keyword arguments
    such as ``{"input_ids": ...}``) drives one probe forward that finds each point's
    topology and channels; each slot takes its point's topology. Without ``task_config``
    all points must share one topology (else ValueError: pass ``task_config``, whose
    dwell and blending settings then apply to every slot); with one, points of one
    topology must be of its topology. ``device``: where the model
    and the seeds live (default: where ``model``'s first parameter is). ``plane_options``
    go to :class:`MorphogeneticModel` (``gates``, ``on_telemetry``, ``max_seeds``, ...).
    """
    host = ModuleHost(model, slots, example_input=example_input)
    if device is None:
        first = next(itertools.chain(model.parameters(), model.buffers()), None)
        device = first.device if first is not None else torch.device("cpu")
    return MorphogeneticModel(host, device, slots=host.segments, task_config=task_config, **plane_options)
