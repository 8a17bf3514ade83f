"""``MorphogeneticModel``: a host with a ``SeedSlot`` at chosen injection points
(spec 2.1; "plane" for the morphogenetic plane of slots)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from kasmina_fast.hosts.protocol import HostProtocol
from kasmina_fast.lifecycle import (
    QualityGates,
    SeedSlot,
    SeedStage,
    SeedState,
    TaskConfig,
    TelemetryEvent,
    persist,
)


def shard_like_host(module: nn.Module, host_params: Sequence[nn.Parameter]) -> None:
    """The default placement of a new seed on an FSDP2-sharded host: every rank takes
    the first rank's initial weights (ranks draw different random numbers), then
    ``fully_shard`` on the host parameters' device mesh. A host that is not sharded
    (no DTensor parameter) leaves the module as it is."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - a torch without distributed
        return
    mesh = next((p.device_mesh for p in host_params if isinstance(p, DTensor)), None)
    if mesh is None:
        return
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    group = mesh.get_group() if mesh.ndim == 1 else None
    src = dist.get_global_rank(group, 0) if group is not None else 0
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t, src=src, group=group)
    fully_shard(module, mesh=mesh)


def tied_aliases(module: nn.Module) -> dict[str, str]:
    """Each second name of a tensor ``module`` holds twice (a tied weight such as
    GPT-2's ``lm_head.weight``) -> its first name."""
    first: dict[int, str] = {}
    aliases = {}
    named = itertools.chain(
        module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False)
    )
    for name, t in named:
        if id(t) in first:
            aliases[name] = first[id(t)]
        else:
            first[id(t)] = name
    return aliases


class MorphogeneticModel(nn.Module):
    """A host plus one slot per chosen injection point, in host order (for any
    ``nn.Module`` as the host, see :func:`kasmina_fast.graft`). Each slot takes its
    point's topology where the host knows it.

    ``max_seeds`` bounds the live seeds (GERMINATED to FOSSILIZED) across slots;
    ``max_seeds_per_slot`` bounds the germinations of each slot over its life.
    ``architecture_version`` increases whenever parameters appear or disappear
    (a germination, a cull, a gated blend's gate): rebuild DDP and the
    optimizer's parameter list when it changes (see kasmina_fast/examples/ddp.py).
    On a host sharded with FSDP2 (``fully_shard``), every new seed and gate is
    sharded too: by ``shard_module`` if given, else like the host
    (:func:`shard_like_host`).
    """

    def __init__(
        self,
        host: nn.Module,
        device: torch.device | str = "cpu",
        *,
        slots: Sequence[str],
        task_config: TaskConfig | None = None,
        fast_mode: bool = False,
        max_seeds: int | None = None,
        max_seeds_per_slot: int | None = None,
        gates: QualityGates | None = None,
        on_telemetry: Callable[[TelemetryEvent], None] | None = None,
        shard_module: Callable[[nn.Module], None] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(host, HostProtocol):
            raise TypeError(f"MorphogeneticModel: host must follow HostProtocol, got {type(host).__name__}")
        # each point's topology, where the host says it (CNNHost, TransformerHost, ModuleHost)
        topologies: dict[str, str] = dict(getattr(host, "topologies", {}))
        kinds = set(topologies.values())
        if task_config is None:
            if not kinds:
                raise ValueError(
                    "MorphogeneticModel: pass task_config for a host that does not say its topology"
                )
            if len(kinds) > 1:
                listing = ", ".join(f"{p} ({t})" for p, t in topologies.items())
                raise ValueError(
                    f"MorphogeneticModel: the points are of mixed topology: {listing}; pass task_config= "
                    "(its settings apply to every slot; each slot keeps its point's topology)"
                )
            task_config = TaskConfig(topology=kinds.pop())
        elif not isinstance(task_config, TaskConfig):
            raise TypeError(
                f"MorphogeneticModel: task_config must be a TaskConfig, got {type(task_config).__name__}"
            )
        elif len(kinds) == 1 and task_config.topology not in kinds:
            raise ValueError(
                f"MorphogeneticModel: task_config.topology is {task_config.topology!r} "
                f"but the host's points are {kinds.pop()}"
            )
        points = host.injection_points
        unknown = [s for s in slots if s not in points]
        if unknown or len(set(slots)) != len(slots) or not slots:
            raise ValueError(
                f"MorphogeneticModel: slots must be distinct injection points of the host, "
                f"got {list(slots)}; available: {', '.join(points)}"
            )
        self.host = host.to(device)
        self.task_config = task_config
        self.max_seeds = max_seeds
        self.max_seeds_per_slot = max_seeds_per_slot
        self.shard_module = shard_module
        self._slots: dict[str, SeedSlot] = {}  # in host order; the host holds them as modules
        for slot_id in (s for s in points if s in slots):
            topology = topologies.get(slot_id, task_config.topology)  # a slot takes its point's topology
            config = dataclasses.replace(task_config, topology=topology)
            slot = SeedSlot(slot_id, points[slot_id], device, gates, on_telemetry, fast_mode, config)
            slot.place_module = self._place_module
            self.host.register_slot(slot_id, slot)
            self._slots[slot_id] = slot
        self.germinations = dict.fromkeys(self.slot_ids, 0)
        self.architecture_version = 0
        self._expose_signature(host)
        self.register_load_state_dict_post_hook(MorphogeneticModel._reattach_host)
        self.register_state_dict_post_hook(MorphogeneticModel._drop_aliases)
        #: the training state (optimizer groups, Grower) of the last Trainer checkpoint loaded
        self.training_state: dict[str, Any] | None = None

    def _expose_signature(self, host: nn.Module) -> None:
        """``inspect.signature(model.forward)`` gives the host's arguments (a grafted
        model's are the user's), not ``(*args, **kwargs)``: frameworks that choose the
        inputs from it (Hugging Face ``Trainer`` drops dataset columns it does not
        name) work unchanged. ``forward`` stays this class's; a ``functools.partial``
        carries the signature (it deep-copies and pickles with the model)."""
        try:
            signature = getattr(host, "forward_signature", None) or inspect.signature(host.forward)
        except (TypeError, ValueError):  # a forward without a readable signature
            return
        forward = functools.partial(type(self).forward, self)
        forward.__signature__ = signature
        self.forward = forward

    def lifecycle_state(self) -> dict[str, Any]:
        """The plane's own lifecycle state (primitives): the germinations per slot."""
        return {"germinations": dict(self.germinations)}

    def get_extra_state(self) -> torch.Tensor:
        return persist.encode(self.lifecycle_state())

    def set_extra_state(self, extra: torch.Tensor | dict) -> None:
        extra = persist.decode(extra)
        self.germinations = {slot: int(extra["germinations"].get(slot, 0)) for slot in self.slot_ids}

    # ---- state dicts: tensors only, each tensor once ---------------------------------------

    def tied_aliases(self) -> dict[str, str]:
        """:func:`tied_aliases` of this model."""
        return tied_aliases(self)

    @staticmethod
    def _drop_aliases(model: MorphogeneticModel, state_dict, prefix, local_metadata) -> None:
        """``state_dict()`` holds a tied tensor once, under its first name, as a Hugging
        Face model's ``save_pretrained`` does (safetensors refuses shared storage);
        :meth:`load_state_dict` ties it back."""
        for alias in model.tied_aliases():
            state_dict.pop(prefix + alias, None)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        """A tied tensor's second name takes its first name's value; a Trainer checkpoint's
        ``kasmina_growth`` entry (the seeds' optimizer groups and the Grower's state: what
        only a resumed training run uses) is kept aside in :attr:`training_state`."""
        growth = state_dict.pop(prefix + persist.GROWTH_KEY, None)
        self.training_state = None if growth is None else persist.decode(growth)
        if self.training_state is not None:  # an older checkpoint kept the seeds in there
            for key, value in self.training_state.pop("model", {}).items():
                state_dict.setdefault(prefix + key, value)
        for alias, source in self.tied_aliases().items():
            if prefix + source in state_dict and prefix + alias not in state_dict:
                state_dict[prefix + alias] = state_dict[prefix + source]
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @staticmethod
    def _reattach_host(model: MorphogeneticModel, incompatible_keys) -> None:
        """After loading a checkpoint, the slots' gradient monitors compare with this host again."""
        host = model.host_parameters()
        for slot in model.seed_slots.values():
            if slot.seed is not None:
                slot.attach_host(host)
        model.architecture_version += 1

    # ---- structure ------------------------------------------------------------------------

    @property
    def slot_ids(self) -> list[str]:
        """The slots' injection points, in host order."""
        return list(self._slots)

    @property
    def seed_slots(self) -> dict[str, SeedSlot]:
        """The slots in host order (they live inside the host's forward)."""
        return dict(self._slots)

    def _slot(self, slot: str) -> SeedSlot:
        if slot not in self.slot_ids:
            raise ValueError(f"MorphogeneticModel: no slot {slot!r}; slots: {', '.join(self.slot_ids)}")
        return self._slots[slot]

    def host_parameters(self) -> list[nn.Parameter]:
        """The host's own parameters: every parameter of the host that no slot owns (by
        identity; a tied weight appears once)."""
        owned = {id(p) for s in self.seed_slots.values() for p in s.parameters()}
        return [p for p in self.host.parameters() if id(p) not in owned]

    def seed_parameters(self) -> list[nn.Parameter]:
        """Every slot's seed and schedule parameters."""
        return [p for s in self.seed_slots.values() for p in s.seed_parameters()]

    def count_active_seeds(self) -> int:
        """Live seeds (GERMINATED to FOSSILIZED) across the slots: what ``max_seeds`` bounds."""
        return sum(s.is_active for s in self.seed_slots.values())

    def count_fossilized_seeds(self) -> int:
        return sum(s.stage == SeedStage.FOSSILIZED for s in self.seed_slots.values())

    # ---- the spec system's queries ----------------------------------------------------------

    @property
    def has_active_seed(self) -> bool:
        """Some slot holds a live seed (GERMINATED to FOSSILIZED)."""
        return any(s.is_active for s in self.seed_slots.values())

    def has_active_seed_in_slot(self, slot: str) -> bool:
        return self._slot(slot).is_active

    def get_slot_states(self) -> dict[str, SeedState | None]:
        """Every slot's :class:`SeedState` (None for an empty slot), in host order."""
        return {slot_id: s.state for slot_id, s in self.seed_slots.items()}

    @property
    def active_seed_params(self) -> int:
        """Parameters of the live seeds and their schedules."""
        return sum(s.active_seed_params for s in self.seed_slots.values())

    @property
    def total_params(self) -> int:
        """The host's parameters (a tied weight counted once) plus the live seeds'."""
        return sum(p.numel() for p in self.host_parameters()) + self.active_seed_params

    def total_seeds(self) -> int:
        """Live seeds, fossilized ones included (one per slot at most)."""
        return self.count_active_seeds()

    def count_seeds_in_slot(self, slot: str) -> int:
        """The live seeds of ``slot``: 0 or 1 (a slot holds one seed)."""
        return int(self._slot(slot).is_active)

    def get_seed_parameters(self, slot: str | None = None) -> Iterator[nn.Parameter]:
        """The seed (and schedule) parameters of ``slot``, or of every slot."""
        slots = [self._slot(slot)] if slot is not None else self.seed_slots.values()
        for s in slots:
            yield from s.seed_parameters()

    def get_host_parameters(self) -> Iterator[nn.Parameter]:
        """The host's own parameters (see :meth:`host_parameters`)."""
        yield from self.host_parameters()

    # ---- sharded hosts (FSDP2) --------------------------------------------------------------

    def _place_module(self, module: nn.Module) -> None:
        """A seed or gate a slot just created: sharded like the host when the host is
        sharded (``shard_module`` if given, else :func:`shard_like_host`)."""
        if self.shard_module is not None:
            self.shard_module(module)
        else:
            shard_like_host(module, self.host_parameters())

    # ---- lifecycle ------------------------------------------------------------------------

    def germinate_seed(
        self,
        blueprint_id: str,
        seed_id: str | None = None,
        *,
        slot: str,
        blend_algorithm_id: str = "sigmoid",
        alpha_target: float = 1.0,
        blend_epochs: int | None = None,
        blend_mode: str = "lerp",
        **blueprint_options: bool | int | float | str,
    ) -> SeedState:
        """Germinate in ``slot`` (RuntimeError when a seed limit is reached); the seed
        starts in GERMINATED and trains from the next ``step_epoch()``. ``alpha_target``,
        ``blend_epochs`` and ``blend_mode``: see :meth:`SeedSlot.germinate`."""
        target = self._slot(slot)
        if self.max_seeds is not None and self.count_active_seeds() >= self.max_seeds:
            raise RuntimeError(f"MorphogeneticModel: max_seeds={self.max_seeds} live seeds reached")
        if self.max_seeds_per_slot is not None and self.germinations[slot] >= self.max_seeds_per_slot:
            raise RuntimeError(
                f"MorphogeneticModel: slot {slot!r} reached max_seeds_per_slot={self.max_seeds_per_slot}"
            )
        previous = target.state
        try:
            return target.germinate(
                blueprint_id,
                seed_id,
                self.host_parameters(),
                blend_algorithm_id,
                alpha_target=alpha_target,
                blend_epochs=blend_epochs,
                blend_mode=blend_mode,
                **blueprint_options,
            )
        finally:  # (also when a telemetry callback raised after the seed was attached)
            if target.state is not None and target.state is not previous:
                self.germinations[slot] += 1
                self.architecture_version += 1

    def set_alpha_target(self, value: float, epochs: int | None = None, *, slot: str) -> None:
        """:meth:`SeedSlot.set_alpha_target` of ``slot``."""
        self._slot(slot).set_alpha_target(value, epochs)

    def schedule_prune(self, epochs: int, *, slot: str, reason: str = "scheduled_prune") -> bool:
        """:meth:`SeedSlot.schedule_prune` of ``slot`` (True when it culled at once)."""
        before = self._params_key()
        try:
            return self._slot(slot).schedule_prune(epochs, reason)
        finally:
            self._bump_if_changed(before)

    def cull_seed(self, *, slot: str, reason: str = "manual") -> bool:
        before = self._params_key()
        try:
            return self._slot(slot).cull(reason)
        finally:
            self._bump_if_changed(before)

    def advance_stage(self, target_stage: SeedStage, *, slot: str):
        before = self._params_key()
        try:
            return self._slot(slot).advance_stage(target_stage)
        finally:
            self._bump_if_changed(before)

    def step_epoch(self) -> None:
        """``step_epoch`` of every slot, in host order (the same order on every rank)."""
        before = self._params_key()
        try:
            for s in self.seed_slots.values():
                s.step_epoch()
        finally:
            self._bump_if_changed(before)

    def _params_key(self) -> tuple[int, ...]:
        return tuple(id(p) for p in self.seed_parameters())

    def _bump_if_changed(self, before: tuple[int, ...]) -> None:
        """``architecture_version`` moves when the seed parameters changed."""
        if self._params_key() != before:
            self.architecture_version += 1

    def counterfactual_forward(self, inputs: Any, configs: Sequence[dict[str, float]]) -> list[Any]:
        """One output per ``{slot_id: alpha}`` setting in ``configs`` (``{}``: as trained),
        computed in one forward of the batch repeated per setting; see
        :func:`kasmina_fast.hosts.counterfactual.counterfactual_forward`."""
        from kasmina_fast.hosts.counterfactual import counterfactual_forward

        return counterfactual_forward(self, inputs, configs)

    # ---- leaving the run -------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the host (its own ``save_pretrained`` where it has one, else a
        safetensors file), ``growth.json`` and ``growth.safetensors`` into ``directory``;
        :meth:`from_pretrained` reads them (see :mod:`kasmina_fast.hosts.pretrained`)."""
        from kasmina_fast.hosts.pretrained import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(
        cls, host: nn.Module, directory: str | os.PathLike, **options: Any
    ) -> MorphogeneticModel:
        """The grown model that :meth:`save_pretrained` wrote into ``directory``, on a
        freshly built ``host``: the same points grafted, the host's weights and the
        growth loaded; same outputs and stages. ``options``: ``device`` and
        :class:`MorphogeneticModel` arguments (see :func:`kasmina_fast.hosts.pretrained.from_pretrained`)."""
        from kasmina_fast.hosts.pretrained import from_pretrained

        return from_pretrained(host, directory, **options)

    def merge_and_unload(self, unfinished: str = "refuse") -> nn.Module:
        """The host module itself (its own class) with every FOSSILIZED seed inlined as
        plain PyTorch where it grew and every other slot gone: no ``SeedSlot``, no
        ``kasmina`` op, ready for ``torch.export`` / AOTInductor. ``unfinished``: what
        to do with a seed in GERMINATED to PROBATIONARY: ``"refuse"`` (ValueError naming
        the slot and its stage), ``"drop"`` (removed) or ``"keep"`` (inlined at its
        current alpha, frozen). This model is consumed. See :mod:`kasmina_fast.hosts.merge`."""
        from kasmina_fast.hosts.merge import merge_and_unload

        return merge_and_unload(self, unfinished)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The host's forward: what it takes and returns (a grafted model's are the user's)."""
        return self.host(*args, **kwargs)
