"""Per-seed state and metrics.

The caller's contract each epoch: ``slot.state.metrics.record_accuracy(val_acc)``
(the only call that advances the epoch counters), optionally
``slot.state.metrics.counterfactual_contribution = val_acc - val_acc_with_alpha_0``,
then ``slot.step_epoch()``. Accuracies are in percent.
"""

from __future__ import annotations

import dataclasses
import math

from kasmina_fast.lifecycle.stages import SeedStage


@dataclasses.dataclass(kw_only=True)
class SeedMetrics:
    initial_val_accuracy: float | None = None
    current_val_accuracy: float = 0.0
    best_val_accuracy: float = 0.0
    accuracy_at_stage_start: float = 0.0
    accuracy_at_blending_start: float | None = None
    epochs_total: int = 0
    epochs_in_current_stage: int = 0
    current_alpha: float = 0.0
    counterfactual_contribution: float | None = None
    seed_gradient_norm_ratio: float = 0.0
    #: gradient statistics materialized since the stage began (G2 needs one)
    gradient_measurements: int = 0
    host_param_count: int = 0
    seed_param_count: int = 0

    def record_accuracy(self, val_accuracy: float) -> None:
        """Record this epoch's validation accuracy (percent) and advance the epoch counters."""
        val = float(val_accuracy)
        if not math.isfinite(val):
            raise ValueError(f"record_accuracy: accuracy must be finite, got {val_accuracy!r}")
        if self.initial_val_accuracy is None:
            self.initial_val_accuracy = val
            self.best_val_accuracy = val
            self.accuracy_at_stage_start = val
        self.current_val_accuracy = val
        self.best_val_accuracy = max(self.best_val_accuracy, val)
        self.epochs_total += 1
        self.epochs_in_current_stage += 1

    def start_stage(self) -> None:
        """A new stage begins: its baseline is the current accuracy."""
        self.accuracy_at_stage_start = self.current_val_accuracy
        self.epochs_in_current_stage = 0
        self.gradient_measurements = 0

    @property
    def total_improvement(self) -> float:
        return (
            0.0
            if self.initial_val_accuracy is None
            else self.current_val_accuracy - self.initial_val_accuracy
        )

    @property
    def improvement_since_stage_start(self) -> float:
        return self.current_val_accuracy - self.accuracy_at_stage_start

    @property
    def blending_delta(self) -> float:
        """Accuracy change since blending began (0 before it)."""
        if self.accuracy_at_blending_start is None:
            return 0.0
        return self.current_val_accuracy - self.accuracy_at_blending_start


@dataclasses.dataclass(kw_only=True)
class SeedState:
    """A seed's lifecycle state (spec 4.2: the source of truth for its stage).

    Built freely (``slot_id`` may be left for the slot to fill in); once a
    ``SeedSlot`` holds it, its ``stage`` changes only through the slot's
    ``advance_stage``, ``step_epoch`` and ``cull``, so that the slot's forward
    and its gates always agree with it. Setting it by hand then raises.
    """

    seed_id: str
    blueprint_id: str
    slot_id: str = ""
    stage: SeedStage = SeedStage.DORMANT
    previous_stage: SeedStage = SeedStage.UNKNOWN
    blend_algorithm_id: str = "sigmoid"
    blend_mode: str = "lerp"  # how the seed joins its host: "lerp" (kasmina.blend) or "valve" (kasmina.valve)
    alpha: float = 0.0
    blending_step: int = 0
    alpha_start: float = 0.0  # the ramp goes from here ...
    alpha_target: float = 1.0  # ... to here, and holds there
    blend_epochs: int = 0  # the ramp's length in step_epochs (0: the task config's blending_steps)
    prune_epochs: int = 0  # a scheduled prune: fade epochs left (0: none)
    prune_total: int = 0  # ... out of these
    prune_from: float = 0.0  # ... from this alpha to 0
    prune_reason: str | None = None
    is_healthy: bool = True
    cull_reason: str | None = None
    epochs_since_cull: int = 0
    metrics: SeedMetrics = dataclasses.field(default_factory=SeedMetrics)
    stage_history: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (stage, epoch)
    blueprint_options: dict[str, bool | int | float | str] = dataclasses.field(default_factory=dict)

    def __setattr__(self, name: str, value) -> None:
        if name == "stage" and self.__dict__.get("_owner") is not None:
            raise RuntimeError(
                f"SeedState.stage of seed {self.seed_id!r} belongs to slot {self._owner!r}: "
                "change it with advance_stage(), step_epoch() or cull()"
            )
        super().__setattr__(name, value)

    def _held_by(self, slot_id: str) -> None:
        """A slot takes this state: from now on only it moves the stage."""
        if not self.slot_id:
            self.slot_id = slot_id
        self.__dict__["_owner"] = slot_id

    def _move_to(self, stage: SeedStage) -> None:
        """The holding slot's stage change (the only way in once held)."""
        self.__dict__["previous_stage"] = self.stage
        self.__dict__["stage"] = SeedStage(stage)
