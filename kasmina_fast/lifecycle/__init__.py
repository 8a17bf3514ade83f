"""The seed lifecycle layer (the specification's SeedSlot layer)."""

from kasmina_fast.lifecycle.consensus import agree
from kasmina_fast.lifecycle.gates import MIN_FOSSILIZE_CONTRIBUTION, QualityGates
from kasmina_fast.lifecycle.isolation import GradientIsolationMonitor
from kasmina_fast.lifecycle.policy import HeuristicPolicy
from kasmina_fast.lifecycle.schedules import (
    BLEND_ALGORITHMS,
    BlendAlgorithm,
    CosineBlend,
    GatedBlend,
    LinearBlend,
    SigmoidBlend,
    create_blend_algorithm,
)
from kasmina_fast.lifecycle.slot import SeedShapeError, SeedSlot
from kasmina_fast.lifecycle.stages import (
    GATE_FOR_STAGE,
    VALID_TRANSITIONS,
    GateLevel,
    GateResult,
    SeedStage,
    TaskConfig,
    is_active_stage,
    is_failure_stage,
    is_terminal_stage,
    is_valid_transition,
)
from kasmina_fast.lifecycle.state import SeedMetrics, SeedState
from kasmina_fast.lifecycle.telemetry import TelemetryEvent, TelemetryEventType

__all__ = [
    "BLEND_ALGORITHMS",
    "GATE_FOR_STAGE",
    "MIN_FOSSILIZE_CONTRIBUTION",
    "VALID_TRANSITIONS",
    "BlendAlgorithm",
    "CosineBlend",
    "GateLevel",
    "GateResult",
    "GatedBlend",
    "GradientIsolationMonitor",
    "HeuristicPolicy",
    "LinearBlend",
    "QualityGates",
    "SeedMetrics",
    "SeedShapeError",
    "SeedSlot",
    "SeedStage",
    "SeedState",
    "SigmoidBlend",
    "TaskConfig",
    "TelemetryEvent",
    "TelemetryEventType",
    "agree",
    "create_blend_algorithm",
    "is_active_stage",
    "is_failure_stage",
    "is_terminal_stage",
    "is_valid_transition",
]
