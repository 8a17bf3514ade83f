"""Reversible blending: a seed's alpha ramps to a target below 1 and holds there
exactly, is retargeted from where it is (from PROBATIONARY back to BLENDING, its
gate kept), G3 needs target 1, and none of it recompiles a compiled model."""

from __future__ import annotations

import math

import pytest
import torch

import kasmina_fast as kf
from kasmina_fast import SeedStage as S
from tests.utils import epoch, features, make_slot, to_blending, until_stage


def f32(x: float) -> float:
    """``x`` as the slot's fp32 alpha buffer holds it."""
    return float(torch.tensor(x))


def _alphas(slot, n: int, cf: float | None = 2.0) -> list[float]:
    out = []
    for _ in range(n):
        epoch(slot, 60.0, counterfactual=cf)
        out.append(float(slot.alpha))
    return out


@pytest.mark.parametrize("algorithm", ["linear", "sigmoid", "cosine", "gated"])
def test_ramp_to_a_target_and_hold_exactly(algorithm):
    slot = make_slot("cnn", blending_steps=5)
    to_blending(slot, algorithm, alpha_target=0.4, blend_epochs=2)
    alphas = _alphas(slot, 6)
    assert 0.0 < alphas[0] < 0.4 and alphas[1:] == [f32(0.4)] * 5  # exactly the target, held
    assert slot.state.alpha == slot.state.metrics.current_alpha == 0.4
    assert slot.stage == S.BLENDING  # G3 needs target 1
    assert "alpha_target" in slot.gates.check(S.PROBATIONARY, slot.state).checks_failed
    slot.set_alpha_target(1.0, epochs=3)  # from where it is
    alphas = _alphas(slot, 3)
    assert 0.4 < alphas[0] < alphas[1] < 1.0 and alphas[2] == 1.0 and slot.stage == S.PROBATIONARY


def test_from_probationary_back_to_blending_keeps_the_gate():
    slot = make_slot("transformer", blending_steps=2)
    to_blending(slot, "gated")
    until_stage(slot, S.PROBATIONARY)
    assert float(slot.alpha) == 1.0
    gate = slot.alpha_schedule
    x = features("transformer")
    slot.set_alpha_target(1.0)  # already there: nothing changes
    assert slot.stage == S.PROBATIONARY
    slot.set_alpha_target(0.25, epochs=4)
    assert slot.stage == S.BLENDING and slot.alpha_schedule is gate and float(slot.alpha) == 1.0
    assert slot.state.stage_history[-1][0] == int(S.BLENDING)
    alphas = _alphas(slot, 5)
    assert alphas[0] < 1.0 and alphas[3:] == [0.25, 0.25] and slot.stage == S.BLENDING  # 0.25: exact in fp32
    with torch.no_grad():
        slot(x)  # the gate still scales alpha


def test_refusals():
    slot = make_slot("cnn", blending_steps=3)
    with pytest.raises(RuntimeError, match="no seed"):
        slot.set_alpha_target(0.5)
    slot.germinate("conv_light")
    slot.advance_stage(S.TRAINING)
    with pytest.raises(RuntimeError, match="in TRAINING"):
        slot.set_alpha_target(0.5)
    until_stage(slot, S.BLENDING)
    _alphas(slot, 1)
    with pytest.raises(RuntimeError, match="holds its alpha"):  # mid-ramp
        slot.set_alpha_target(0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        slot.set_alpha_target(1.5)
    until_stage(slot, S.PROBATIONARY)
    assert slot.advance_stage(S.FOSSILIZED).passed
    with pytest.raises(RuntimeError, match="FOSSILIZED"):
        slot.set_alpha_target(0.5)


def test_advance_stage_does_not_retarget():
    slot = make_slot("cnn", blending_steps=2)
    to_blending(slot)
    until_stage(slot, S.PROBATIONARY)
    result = slot.advance_stage(S.BLENDING)
    assert not result.passed and "set_alpha_target" in result.message and slot.stage == S.PROBATIONARY


def test_retarget_survives_a_checkpoint():
    slot = make_slot("cnn", blending_steps=2)
    to_blending(slot, "sigmoid", alpha_target=0.6)
    _alphas(slot, 2)
    slot.set_alpha_target(0.9, epochs=3)
    _alphas(slot, 1)
    state = slot.state_dict()
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh = make_slot("cnn", blending_steps=2)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert _alphas(fresh, 3) == _alphas(slot, 3)
    assert float(fresh.alpha) == f32(0.9)


def test_sigmoid_with_any_steepness():
    for k in (1e-3, 10.0, 1e4, 1e300):
        ramp = kf.SigmoidBlend(k).ramp
        values = [ramp(t / 10) for t in range(11)]
        assert values[0] == 0.0 and values[-1] == 1.0 and all(math.isfinite(v) for v in values)
        assert values == sorted(values)


def test_no_recompile_over_retargets():
    from torch._dynamo.testing import CompileCounter

    torch.manual_seed(0)
    tc = kf.TaskConfig(topology="cnn", blending_steps=2)
    gates = kf.QualityGates(min_training_improvement=-1e9, min_blending_epochs=1, min_seed_gradient_ratio=0.0)
    model = kf.MorphogeneticModel(kf.CNNHost(num_classes=4, base_channels=4, n_blocks=3), slots=["mid"],
                                  task_config=tc, gates=gates)  # fmt: skip
    slot = model.seed_slots["mid"]
    model.germinate_seed("conv_light", slot="mid", alpha_target=0.5)
    model.advance_stage(S.TRAINING, slot="mid")
    x = torch.randn(2, 3, 16, 16)
    while slot.stage != S.BLENDING:
        epoch(slot, 50.0 + slot.state.metrics.epochs_total)
    with torch.no_grad():  # away from the identity at birth, so that alpha shows
        for p in slot.seed_parameters():
            p.normal_(0, 0.3)
    counter = CompileCounter()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    seen = []
    for i in range(8):
        if i == 3:
            model.set_alpha_target(0.8, slot="mid")
        with torch.no_grad():
            seen.append(compiled(x))
        epoch(slot, 60.0, counterfactual=2.0)
    assert counter.frame_count == 1
    assert not torch.equal(seen[0], seen[-1])
