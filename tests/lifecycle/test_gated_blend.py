"""The gated blend's two confirmed bugs, fixed: the gate reads the seed's (detached)
input, so an isolated host's input gradient is exactly ``(1 - w) g``; and a
fossilized gated seed keeps its gate, so the output does not move across G5."""

from __future__ import annotations

import pytest
import torch

from kasmina_fast import SeedStage as S
from tests.utils import epoch, features, make_slot

BLUEPRINT = {"cnn": "conv_light", "transformer": "mlp"}


def _to(slot, stage: S, algorithm: str) -> None:
    """Germinate and drive ``slot`` to BLENDING (one ramp step in) or PROBATIONARY."""
    slot.germinate(BLUEPRINT[slot.task_config.topology], blend_algorithm_id=algorithm)
    slot.advance_stage(S.TRAINING)
    for acc in (50.0, 51.0, 52.0, 53.0):
        epoch(slot, acc)
        slot.step_epoch()
        if slot.stage == S.BLENDING:
            break
    assert slot.stage == S.BLENDING
    if stage == S.BLENDING:
        epoch(slot, 54.0)
        slot.step_epoch()
        return
    for acc in range(55, 70):
        epoch(slot, float(acc), counterfactual=2.0)
        slot.step_epoch()
        if slot.stage == stage:
            return
    raise AssertionError(slot.stage)


def _randomise(slot) -> None:
    """Seed and gate weights away from their identity / open-gate initialisation."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in slot.seed_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_an_isolated_gate_sends_no_gradient_into_the_host():
    slot = make_slot("cnn", blending_steps=4)
    _to(slot, S.BLENDING, "gated")
    _randomise(slot)
    assert slot.isolate_gradients and 0.0 < float(slot.alpha) < 1.0
    h = features("cnn", requires_grad=True)
    g = torch.randn_like(h)
    slot(h).backward(g)
    with torch.no_grad():
        w = float(slot.alpha) * slot.alpha_schedule(h.detach())  # [B, 1, 1, 1]
    torch.testing.assert_close(h.grad, (1 - w) * g, rtol=1e-6, atol=1e-7)
    assert all(p.grad is not None for p in slot.alpha_schedule.parameters())  # the gate still learns


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
@pytest.mark.parametrize("algorithm", ["linear", "sigmoid", "gated"])
def test_the_output_does_not_move_across_g5(topology, algorithm):
    slot = make_slot(topology, blending_steps=3)
    _to(slot, S.PROBATIONARY, algorithm)
    _randomise(slot)
    x = features(topology)
    before = slot(x)
    assert slot.advance_stage(S.FOSSILIZED).passed
    assert torch.equal(slot(x), before)
    if algorithm == "gated":  # the gate is still there, trained, and part of the model
        gate = slot.alpha_schedule.gate.weight
        assert any(p is gate for p in slot.seed_parameters()) and any(p is gate for p in slot.parameters())
        state = slot.state_dict()
        fresh = make_slot(topology, blending_steps=3)
        fresh.load_state_dict(state)
        assert fresh.stage == S.FOSSILIZED and torch.equal(fresh(x), before)
