"""Contracts: the state diagram, stage predicates, TaskConfig, every gate's pass and fail."""

from __future__ import annotations

import pytest

from kasmina_fast import (
    VALID_TRANSITIONS,
    GateLevel,
    QualityGates,
    SeedMetrics,
    SeedStage,
    SeedState,
    TaskConfig,
    is_active_stage,
    is_failure_stage,
    is_terminal_stage,
    is_valid_transition,
)

S = SeedStage


def test_stage_values():
    assert [int(s) for s in S] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert 5 not in {int(s) for s in S}


def test_transitions_are_the_diagram():
    edges = {(a, b) for a, bs in VALID_TRANSITIONS.items() for b in bs}
    assert edges == {
        (S.UNKNOWN, S.DORMANT),
        (S.DORMANT, S.GERMINATED),
        (S.GERMINATED, S.TRAINING),
        (S.GERMINATED, S.CULLED),
        (S.TRAINING, S.BLENDING),
        (S.TRAINING, S.CULLED),
        (S.BLENDING, S.PROBATIONARY),
        (S.BLENDING, S.CULLED),
        (S.PROBATIONARY, S.FOSSILIZED),
        (S.PROBATIONARY, S.CULLED),
        (S.PROBATIONARY, S.BLENDING),  # a retarget below 1
        (S.CULLED, S.EMBARGOED),
        (S.EMBARGOED, S.RESETTING),
        (S.RESETTING, S.DORMANT),
    }
    assert is_valid_transition(S.PROBATIONARY, S.FOSSILIZED)
    assert not is_valid_transition(S.FOSSILIZED, S.CULLED)
    assert not is_valid_transition(S.TRAINING, S.FOSSILIZED)


def test_predicates():
    assert {s for s in S if is_active_stage(s)} == {S.TRAINING, S.BLENDING, S.PROBATIONARY, S.FOSSILIZED}
    assert {s for s in S if is_failure_stage(s)} == {S.CULLED, S.EMBARGOED, S.RESETTING}
    assert {s for s in S if is_terminal_stage(s)} == {S.FOSSILIZED}


def test_task_config():
    # the spec system's dwell: 1 epoch without a task config, 2 and 5 at its presets
    assert TaskConfig(topology="cnn").training_dwell == 1
    assert TaskConfig.cifar10().training_dwell == 2 and TaskConfig.cifar10().max_epochs == 25
    assert TaskConfig.tinystories().training_dwell == 5 and TaskConfig.tinystories().topology == "transformer"
    tc = TaskConfig(topology="cnn", max_epochs=40, train_to_blend_fraction=0.1)
    assert tc.training_dwell == 4 and tc.probation_timeout == 5
    assert TaskConfig(topology="transformer", max_epochs=200).probation_timeout == 20
    assert TaskConfig(topology="cnn", max_epochs=3).training_dwell == 1
    for bad in (
        {"topology": "rnn"},
        {"topology": "cnn", "blending_steps": 0},
        {"topology": "cnn", "max_epochs": 0},
    ):
        with pytest.raises(ValueError, match="TaskConfig"):
            TaskConfig(**bad)


def state(stage=S.TRAINING, **metrics) -> SeedState:
    return SeedState(
        seed_id="s1", blueprint_id="norm", slot_id="mid", stage=stage, metrics=SeedMetrics(**metrics)
    )


G = QualityGates()


def test_g0():
    assert G.check(S.GERMINATED, state(S.DORMANT)).passed
    r = G.check(S.GERMINATED, SeedState(seed_id="", blueprint_id="norm", slot_id="x"))
    assert not r.passed and r.checks_failed == ("seed_id_present",) and r.gate == GateLevel.G0


def test_g1():
    assert G.check(S.TRAINING, state(S.GERMINATED)).passed
    r = G.check(S.TRAINING, state(S.DORMANT))
    assert not r.passed and r.checks_failed == ("stage_is_germinated",)


def test_g2_pass_and_each_failure():
    good = dict(current_val_accuracy=60.0, accuracy_at_stage_start=59.0, epochs_in_current_stage=3)
    r = G.check(S.BLENDING, state(**good, seed_gradient_norm_ratio=0.1))
    assert r.passed and r.score == 1.0
    assert set(r.checks_passed) == {"improvement", "epochs_in_stage", "seed_gradient_ratio"}
    cases = {
        "improvement": dict(good, current_val_accuracy=59.2),
        "epochs_in_stage": dict(good, epochs_in_current_stage=2),
    }
    for name, m in cases.items():
        r = G.check(S.BLENDING, state(**m, seed_gradient_norm_ratio=0.1))
        assert not r.passed and r.checks_failed == (name,), r
    r = G.check(S.BLENDING, state(**good, seed_gradient_norm_ratio=0.01))
    assert not r.passed and r.checks_failed == ("seed_gradient_ratio",) and "seed_gradient_ratio" in r.message
    # fast_mode: gradient activity is not monitored, so it is not checked
    assert G.check(S.BLENDING, state(**good), gradient_monitored=False).passed


def test_g3():
    st = state(S.BLENDING, epochs_in_current_stage=3)
    st.alpha = 0.96
    assert G.check(S.PROBATIONARY, st).passed
    st.alpha = 0.9
    assert G.check(S.PROBATIONARY, st).checks_failed == ("alpha",)
    st.alpha, st.metrics.epochs_in_current_stage = 1.0, 2
    assert G.check(S.PROBATIONARY, st).checks_failed == ("epochs_in_blending",)


def test_g5():
    st = state(S.PROBATIONARY, counterfactual_contribution=1.0)
    assert G.check(S.FOSSILIZED, st).passed
    st.metrics.counterfactual_contribution = 0.99
    assert G.check(S.FOSSILIZED, st).checks_failed == ("counterfactual",)
    st.metrics.counterfactual_contribution = None
    assert set(G.check(S.FOSSILIZED, st).checks_failed) == {"counterfactual_present", "counterfactual"}
    st.metrics.counterfactual_contribution, st.is_healthy = 5.0, False
    assert G.check(S.FOSSILIZED, st).checks_failed == ("seed_healthy",)


@pytest.mark.parametrize("target", [S.CULLED, S.EMBARGOED, S.RESETTING, S.DORMANT, S.UNKNOWN])
def test_stage_without_gate_is_refused(target):
    r = G.check(target, state())
    assert not r.passed and r.gate is None and "no gate" in r.message


def test_metrics():
    m = SeedMetrics()
    m.record_accuracy(50.0)
    m.start_stage()
    m.record_accuracy(52.0)
    m.accuracy_at_blending_start = 51.0
    m.record_accuracy(53.5)
    assert m.epochs_total == 3 and m.epochs_in_current_stage == 2
    assert m.total_improvement == 3.5 and m.improvement_since_stage_start == 3.5 and m.blending_delta == 2.5
    assert m.best_val_accuracy == 53.5
    with pytest.raises(ValueError, match="finite"):
        m.record_accuracy(float("nan"))
