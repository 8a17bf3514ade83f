"""Shared mechanics of the hosts: a sequence of stages, a point after every
stage where a slot can sit, and segment routing over that sequence."""

from __future__ import annotations

from torch import Tensor, nn


def thirds(n: int, name: str) -> dict[str, str]:
    """The spec's ``early``/``mid``/``late`` points of ``n`` stages named ``name{i}``:
    after stage ``n // 3``, ``2 * (n // 3)`` and ``n`` (1-based), where that is a stage."""
    bounds = {"early": n // 3, "mid": 2 * (n // 3), "late": n}
    return {alias: f"{name}{b}" for alias, b in bounds.items() if b >= 1}


class SegmentedHost(nn.Module):
    """Subclasses fill ``self.stages`` (one module per segment, in order), call
    ``_init_segments`` and implement ``_enter`` (input -> first features) and
    ``_exit`` (last features -> output).

    Every segment is an injection point: a slot sits right after its stage; all
    points are of the subclass's ``topology``.
    ``aliases`` give some points a second name (``early``/``mid``/``late`` of a
    deeper host); a point answers to each of its names, but holds one slot.
    """

    def _init_segments(
        self, names: list[str], channels: list[int], aliases: dict[str, str] | None = None
    ) -> None:
        self._segment_names = list(names)
        self._aliases = dict(aliases or {})
        position = {name: i for i, name in enumerate(names)}
        position |= {alias: position[target] for alias, target in self._aliases.items()}
        self._position = position
        # the names of each stage's point, segment name first
        self._names_at = [tuple(n for n in position if position[n] == i) for i in range(len(names))]
        self._channels = {n: channels[i] for i, at in enumerate(self._names_at) for n in at}  # host order
        # one slot position per name; Identity until a slot registers
        self.slots = nn.ModuleDict({name: nn.Identity() for name in position})

    @property
    def segments(self) -> list[str]:
        return list(self._segment_names)

    topology: str

    @property
    def topologies(self) -> dict[str, str]:
        """Every point -> the host's topology."""
        return dict.fromkeys(self._channels, self.topology)

    @property
    def injection_points(self) -> dict[str, int]:
        """Every name a slot can take -> its channels, in host order (a segment before its aliases)."""
        return dict(self._channels)

    def position(self, name: str) -> int:
        """The stage after which the point ``name`` sits (0-based)."""
        try:
            return self._position[name]
        except KeyError:
            raise ValueError(
                f"{type(self).__name__}: unknown segment {name!r}; available: {', '.join(self._position)}"
            ) from None

    def register_slot(self, slot_id: str, slot: nn.Module) -> None:
        i = self.position(slot_id)
        if not isinstance(slot, nn.Identity):
            taken = [
                n for n in self._names_at[i] if n != slot_id and not isinstance(self.slots[n], nn.Identity)
            ]
            if taken:
                name = type(self).__name__
                raise ValueError(f"{name}: {slot_id!r} is the point {taken[0]!r}, which holds a slot already")
        self.slots[slot_id] = slot

    def unregister_slot(self, slot_id: str) -> None:
        self.register_slot(slot_id, nn.Identity())

    def _run(self, x: Tensor, start: int, stop: int) -> Tensor:
        for i in range(start, stop):
            x = self.stages[i](x)
            for name in self._names_at[i]:
                x = self.slots[name](x)
        return x

    def forward_to_segment(self, segment: str, x: Tensor, from_segment: str | None = None) -> Tensor:
        stop = self.position(segment) + 1
        if from_segment is None:
            return self._run(self._enter(x), 0, stop)
        start = self.position(from_segment) + 1
        if start > stop:
            raise ValueError(f"{type(self).__name__}: segment {segment!r} comes before {from_segment!r}")
        return self._run(x, start, stop)

    def forward_from_segment(self, segment: str, x: Tensor) -> Tensor:
        return self._exit(self._run(x, self.position(segment) + 1, len(self.stages)))

    def forward(self, x: Tensor) -> Tensor:
        return self._exit(self._run(self._enter(x), 0, len(self.stages)))

    def _enter(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _exit(self, x: Tensor) -> Tensor:
        raise NotImplementedError
