"""What a host network offers the morphogenetic plane (spec: HostProtocol)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class HostProtocol(Protocol):
    """A network with named injection points where seed slots can sit.

    ``segments`` lists every forward boundary in order; ``injection_points``
    maps every name that accepts a slot to its channel count, in host order.
    ``forward_to_segment(s, x)`` runs from the input (or from ``from_segment``)
    through segment ``s`` including its slot; ``forward_from_segment(s, h)``
    continues from there to the output, so that
    ``forward_from_segment(s, forward_to_segment(s, x)) == forward(x)``.
    """

    @property
    def injection_points(self) -> dict[str, int]: ...

    @property
    def segments(self) -> list[str]: ...

    def register_slot(self, slot_id: str, slot: nn.Module) -> None: ...

    def unregister_slot(self, slot_id: str) -> None: ...

    def forward(self, x: Tensor) -> Tensor: ...

    def forward_to_segment(self, segment: str, x: Tensor, from_segment: str | None = None) -> Tensor: ...

    def forward_from_segment(self, segment: str, x: Tensor) -> Tensor: ...
