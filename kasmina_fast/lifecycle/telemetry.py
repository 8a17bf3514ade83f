"""Telemetry events (spec 2.3), delivered to a slot's ``on_telemetry`` callback."""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any


class TelemetryEventType(str, Enum):
    SEED_GERMINATED = "SEED_GERMINATED"
    SEED_STAGE_CHANGED = "SEED_STAGE_CHANGED"
    SEED_FOSSILIZED = "SEED_FOSSILIZED"
    SEED_CULLED = "SEED_CULLED"


@dataclasses.dataclass(frozen=True)
class TelemetryEvent:
    event_type: TelemetryEventType
    slot_id: str
    seed_id: str | None
    epoch: int
    data: dict[str, Any]
