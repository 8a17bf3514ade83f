"""Lifecycle contracts: stages, legal transitions, gate levels and results,
task configuration (the specification's leyline names)."""

from __future__ import annotations

import dataclasses
from enum import IntEnum


class SeedStage(IntEnum):
    """Stages of a seed. 5 (the removed SHADOWING stage) stays unused."""

    UNKNOWN = 0
    DORMANT = 1
    GERMINATED = 2
    TRAINING = 3
    BLENDING = 4
    PROBATIONARY = 6
    FOSSILIZED = 7
    CULLED = 8
    EMBARGOED = 9
    RESETTING = 10


S = SeedStage

#: The state diagram of the specification (section 4.1), plus PROBATIONARY -> BLENDING
#: (``set_alpha_target`` below 1: reversible blending).
VALID_TRANSITIONS: dict[SeedStage, frozenset[SeedStage]] = {
    S.UNKNOWN: frozenset({S.DORMANT}),
    S.DORMANT: frozenset({S.GERMINATED}),
    S.GERMINATED: frozenset({S.TRAINING, S.CULLED}),
    S.TRAINING: frozenset({S.BLENDING, S.CULLED}),
    S.BLENDING: frozenset({S.PROBATIONARY, S.CULLED}),
    S.PROBATIONARY: frozenset({S.FOSSILIZED, S.CULLED, S.BLENDING}),  # BLENDING: a target below 1
    S.FOSSILIZED: frozenset(),
    S.CULLED: frozenset({S.EMBARGOED}),
    S.EMBARGOED: frozenset({S.RESETTING}),
    S.RESETTING: frozenset({S.DORMANT}),
}

_ACTIVE = frozenset({S.TRAINING, S.BLENDING, S.PROBATIONARY, S.FOSSILIZED})
_FAILURE = frozenset({S.CULLED, S.EMBARGOED, S.RESETTING})


def is_valid_transition(src: SeedStage, dst: SeedStage) -> bool:
    """True when the diagram has an edge ``src -> dst``."""
    return SeedStage(dst) in VALID_TRANSITIONS[SeedStage(src)]


def is_terminal_stage(stage: SeedStage) -> bool:
    """FOSSILIZED: the seed is part of the host for good (no way out)."""
    return stage == S.FOSSILIZED


def is_active_stage(stage: SeedStage) -> bool:
    """Stages in which the seed takes part in the forward pass."""
    return stage in _ACTIVE


def is_failure_stage(stage: SeedStage) -> bool:
    """CULLED and the clean-up stages after it."""
    return stage in _FAILURE


class GateLevel(IntEnum):
    G0 = 0  # germination: ids present
    G1 = 1  # -> TRAINING: stage is GERMINATED
    G2 = 2  # -> BLENDING: improvement, dwell, gradient activity
    G3 = 3  # -> PROBATIONARY: blending complete
    G5 = 5  # -> FOSSILIZED: counterfactual contribution


#: The gate that guards each target stage; a target not listed has no gate
#: and is refused.
GATE_FOR_STAGE: dict[SeedStage, GateLevel] = {
    S.GERMINATED: GateLevel.G0,
    S.TRAINING: GateLevel.G1,
    S.BLENDING: GateLevel.G2,
    S.PROBATIONARY: GateLevel.G3,
    S.FOSSILIZED: GateLevel.G5,
}


@dataclasses.dataclass(frozen=True)
class GateResult:
    gate: GateLevel | None
    passed: bool
    score: float = 0.0
    checks_passed: tuple[str, ...] = ()
    checks_failed: tuple[str, ...] = ()
    message: str = ""


#: each topology -> the rank of its features: ``cnn`` ``[B, C, H, W]``, ``transformer``
#: ``[B, T, C]``, ``dense`` ``[B, C]`` (an MLP, a classifier head, a tabular model)
FEATURE_DIMS = {"cnn": 4, "transformer": 3, "dense": 2}
TOPOLOGIES = tuple(FEATURE_DIMS)


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Task settings, fixed for a slot's life (spec 2.2).

    The defaults behave as the spec's system does without a task config: a
    TRAINING dwell of 1 epoch. :meth:`cifar10` and :meth:`tinystories` are its
    presets (dwell 2 and 5 epochs).
    """

    topology: str
    blending_steps: int = 5
    train_to_blend_fraction: float = 0.0
    max_epochs: int = 25

    @classmethod
    def cifar10(cls) -> TaskConfig:
        """The spec system's ``--task cifar10`` preset: CNN, 25 epochs, 10% in TRAINING."""
        return cls(topology="cnn", blending_steps=5, train_to_blend_fraction=0.1, max_epochs=25)

    @classmethod
    def tinystories(cls) -> TaskConfig:
        """The spec system's ``--task tinystories`` preset: transformer, 50 epochs, 10% in TRAINING."""
        return cls(topology="transformer", blending_steps=5, train_to_blend_fraction=0.1, max_epochs=50)

    def __post_init__(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise ValueError(
                f"TaskConfig: topology must be one of {', '.join(TOPOLOGIES)}, got {self.topology!r}"
            )
        if self.blending_steps < 1:
            raise ValueError(f"TaskConfig: blending_steps must be >= 1, got {self.blending_steps}")
        if not 0.0 <= self.train_to_blend_fraction <= 1.0:
            raise ValueError(
                f"TaskConfig: train_to_blend_fraction must be in [0, 1], got {self.train_to_blend_fraction}"
            )
        if self.max_epochs < 1:
            raise ValueError(f"TaskConfig: max_epochs must be >= 1, got {self.max_epochs}")

    @property
    def training_dwell(self) -> int:
        """Epochs a seed stays in TRAINING before G2 is asked: ``max(1, int(max_epochs * fraction))``."""
        return max(1, int(self.max_epochs * self.train_to_blend_fraction))

    @property
    def probation_timeout(self) -> int:
        """Epochs in PROBATIONARY before an automatic cull: ``max(5, int(0.1 * max_epochs))``."""
        return max(5, int(0.1 * self.max_epochs))
