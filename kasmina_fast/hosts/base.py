"""Shared mechanics of the hosts: a sequence of stages, a slot after some of
them, and segment routing over that sequence."""

from __future__ import annotations

from torch import Tensor, nn


class SegmentedHost(nn.Module):
    """Subclasses fill ``self.stages`` (one module per segment, in order),
    ``self._segment_names`` and ``self._points`` (segment -> channels), and
    implement ``_enter`` (input -> first features) and ``_exit`` (last features
    -> output)."""

    def _init_segments(self, names: list[str], points: dict[str, int]) -> None:
        self._segment_names = list(names)
        self._points = dict(points)
        # one slot position per injection point; Identity until a slot registers
        self.slots = nn.ModuleDict({name: nn.Identity() for name in points})

    @property
    def segments(self) -> list[str]:
        return list(self._segment_names)

    @property
    def injection_points(self) -> dict[str, int]:
        return dict(self._points)

    def register_slot(self, slot_id: str, slot: nn.Module) -> None:
        if slot_id not in self._points:
            raise ValueError(
                f"{type(self).__name__}: unknown injection point {slot_id!r}; "
                f"available: {', '.join(self._points)}"
            )
        self.slots[slot_id] = slot

    def unregister_slot(self, slot_id: str) -> None:
        self.register_slot(slot_id, nn.Identity())

    def _index(self, segment: str) -> int:
        try:
            return self._segment_names.index(segment)
        except ValueError:
            names = ", ".join(self._segment_names)
            raise ValueError(
                f"{type(self).__name__}: unknown segment {segment!r}; available: {names}"
            ) from None

    def _run(self, x: Tensor, start: int, stop: int) -> Tensor:
        for i in range(start, stop):
            x = self.stages[i](x)
            name = self._segment_names[i]
            if name in self._points:
                x = self.slots[name](x)
        return x

    def forward_to_segment(self, segment: str, x: Tensor, from_segment: str | None = None) -> Tensor:
        stop = self._index(segment) + 1
        if from_segment is None:
            return self._run(self._enter(x), 0, stop)
        start = self._index(from_segment) + 1
        if start > stop:
            raise ValueError(f"{type(self).__name__}: segment {segment!r} comes before {from_segment!r}")
        return self._run(x, start, stop)

    def forward_from_segment(self, segment: str, x: Tensor) -> Tensor:
        return self._exit(self._run(x, self._index(segment) + 1, len(self.stages)))

    def forward(self, x: Tensor) -> Tensor:
        return self._exit(self._run(self._enter(x), 0, len(self.stages)))

    def _enter(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _exit(self, x: Tensor) -> Tensor:
        raise NotImplementedError
