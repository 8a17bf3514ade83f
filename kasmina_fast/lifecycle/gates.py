"""Quality gates (spec 2.1/2.2): each stage transition is guarded by one gate;
every result names the checks that passed and failed."""

from __future__ import annotations

import dataclasses

from kasmina_fast.lifecycle.stages import GATE_FOR_STAGE, GateLevel, GateResult, SeedStage
from kasmina_fast.lifecycle.state import SeedState

#: Minimum counterfactual contribution (percentage points) for G5.
MIN_FOSSILIZE_CONTRIBUTION = 1.0


@dataclasses.dataclass(frozen=True)
class QualityGates:
    min_training_improvement: float = 0.5  # percentage points, G2
    min_blending_epochs: int = 3  # G2 (epochs in stage) and G3 (epochs in BLENDING)
    max_isolation_violations: int = 10  # deprecated by the spec, kept for compatibility; unused
    min_probation_stability: float = 0.95  # alpha reached for G3
    min_seed_gradient_ratio: float = 0.05  # parameter-normalised, G2

    def check(self, target: SeedStage, state: SeedState, *, gradient_monitored: bool = True) -> GateResult:
        """The gate for moving ``state`` to ``target``. A target with no gate is refused."""
        gate = GATE_FOR_STAGE.get(SeedStage(target))
        if gate is None:
            return GateResult(
                None, False, 0.0, (), ("gate_exists",), f"no gate guards {SeedStage(target).name}"
            )
        m = state.metrics
        checks: list[tuple[str, bool]]
        if gate == GateLevel.G0:
            checks = [
                ("seed_id_present", bool(state.seed_id)),
                ("blueprint_id_present", bool(state.blueprint_id)),
            ]
        elif gate == GateLevel.G1:
            checks = [("stage_is_germinated", state.stage == SeedStage.GERMINATED)]
        elif gate == GateLevel.G2:
            checks = [
                ("improvement", m.improvement_since_stage_start >= self.min_training_improvement),
                ("epochs_in_stage", m.epochs_in_current_stage >= self.min_blending_epochs),
            ]
            if gradient_monitored:
                # a ratio never measured fails under its own name, not as "too low"
                measured = m.gradient_measurements > 0 or m.seed_gradient_norm_ratio != 0.0
                ok = m.seed_gradient_norm_ratio >= self.min_seed_gradient_ratio
                checks.append(("seed_gradient_ratio" if ok or measured else "seed_gradient_measured", ok))
        elif gate == GateLevel.G3:
            checks = [
                ("stage_is_blending", state.stage == SeedStage.BLENDING),
                ("epochs_in_blending", m.epochs_in_current_stage >= self.min_blending_epochs),
                ("alpha_target", state.alpha_target >= 1.0),  # a seed held below 1 stays BLENDING
                ("alpha", state.alpha >= self.min_probation_stability),
            ]
        else:  # G5
            cf = m.counterfactual_contribution
            checks = [
                ("stage_is_probationary", state.stage == SeedStage.PROBATIONARY),
                ("counterfactual_present", cf is not None),
                ("counterfactual", cf is not None and cf >= MIN_FOSSILIZE_CONTRIBUTION),
                ("seed_healthy", state.is_healthy),
            ]
        passed = tuple(name for name, ok in checks if ok)
        failed = tuple(name for name, ok in checks if not ok)
        ok = not failed
        msg = f"{gate.name} {'passed' if ok else 'failed: ' + ', '.join(failed)}"
        if "seed_gradient_measured" in failed:
            msg += (
                " (no gradient statistics were measured in this stage: call "
                "capture_gradient_telemetry() after backward and materialize_gradient_telemetry() "
                "once per epoch, or use kasmina_fast.Grower)"
            )
        return GateResult(gate, ok, len(passed) / len(checks), passed, failed, msg)
