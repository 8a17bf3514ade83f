"""Scheduled prune: alpha fades to 0 over N step_epochs, then the seed is culled with
the reason; its (and its gate's) parameters are frozen meanwhile while the host still
trains; ``epochs=0`` or a seed not yet blending culls at once; FOSSILIZED refuses;
a prune in progress survives a weights_only checkpoint."""

from __future__ import annotations

import io

import pytest
import torch

import kasmina_fast as kf
from kasmina_fast import SeedStage as S
from tests.utils import epoch, make_slot, to_blending, until_stage


def test_fade_then_cull_with_the_reason():
    events = []
    slot = make_slot("cnn", blending_steps=2, events=events)
    to_blending(slot, "gated", ramped=True)
    start = float(slot.alpha)
    assert slot.schedule_prune(4, reason="not paying") is False
    assert all(not p.requires_grad for p in slot.seed_parameters())
    alphas = []
    for _ in range(3):
        epoch(slot, 60.0, counterfactual=5.0)
        alphas.append(float(slot.alpha))
    assert alphas == pytest.approx([start * 3 / 4, start / 2, start / 4]) and slot.stage == S.BLENDING
    epoch(slot, 60.0, counterfactual=5.0)
    assert slot.stage == S.CULLED and slot.seed is None and float(slot.alpha) == 0.0
    culled = [e for e in events if e.event_type.value == "SEED_CULLED"]
    assert culled[-1].data["reason"] == "not paying"


def test_the_host_trains_through_the_blend_while_the_seed_is_frozen():
    torch.manual_seed(0)
    gates = kf.QualityGates(min_training_improvement=-1e9, min_blending_epochs=1, min_seed_gradient_ratio=0.0)
    tc = kf.TaskConfig(topology="cnn", blending_steps=2)
    host = kf.CNNHost(num_classes=4, base_channels=4, n_blocks=3)
    model = kf.MorphogeneticModel(host, slots=["mid"], task_config=tc, gates=gates)
    slot = model.seed_slots["mid"]
    model.germinate_seed("conv_light", slot="mid", blend_algorithm_id="gated")
    model.advance_stage(S.TRAINING, slot="mid")
    while slot.stage != S.BLENDING or float(slot.alpha) == 0.0:
        epoch(slot, 50.0 + slot.state.metrics.epochs_total)
    version = model.architecture_version
    assert model.schedule_prune(3, slot="mid") is False and model.architecture_version == version
    x = torch.randn(4, 3, 16, 16)
    model(x).square().mean().backward()
    assert all(p.grad is None for p in slot.seed_parameters())
    assert all(p.grad is not None for p in model.host_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert not kf.sync_optimizer(opt, model)  # nothing to add: frozen parameters do not join
    with pytest.raises(RuntimeError, match="being pruned"):
        model.set_alpha_target(0.5, slot="mid")
    for _ in range(3):
        epoch(slot, 60.0, counterfactual=5.0)
    assert slot.stage == S.CULLED and model.architecture_version == version


@pytest.mark.parametrize("when", ["zero-epochs", "training", "probationary"])
def test_at_once_and_from_probationary(when):
    slot = make_slot("cnn", blending_steps=2)
    if when == "training":
        slot.germinate("conv_light")
        slot.advance_stage(S.TRAINING)
        assert slot.schedule_prune(5) is True and slot.stage == S.CULLED
        assert slot.state.cull_reason == "scheduled_prune"
        return
    to_blending(slot, "linear", ramped=True)
    if when == "zero-epochs":
        assert slot.schedule_prune(0, reason="now") is True and slot.state.cull_reason == "now"
        return
    until_stage(slot, S.PROBATIONARY, counterfactual=5.0)
    assert slot.schedule_prune(2) is False and slot.stage == S.BLENDING  # the fade runs in BLENDING
    epoch(slot, 60.0, counterfactual=5.0)
    assert float(slot.alpha) == 0.5
    epoch(slot, 60.0, counterfactual=5.0)
    assert slot.stage == S.CULLED


def test_refusals():
    slot = make_slot("cnn", blending_steps=2)
    with pytest.raises(RuntimeError, match="no live seed"):
        slot.schedule_prune(3)
    to_blending(slot, "linear", ramped=True)
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        slot.schedule_prune(-1)
    until_stage(slot, S.PROBATIONARY, counterfactual=5.0)
    assert slot.advance_stage(S.FOSSILIZED).passed
    with pytest.raises(RuntimeError, match="FOSSILIZED"):
        slot.schedule_prune(3)


def test_a_prune_in_progress_survives_a_checkpoint():
    slot = make_slot("cnn", blending_steps=2)
    to_blending(slot, "gated", ramped=True)
    slot.schedule_prune(4, reason="r")
    epoch(slot, 60.0, counterfactual=5.0)
    buf = io.BytesIO()
    torch.save(slot.state_dict(), buf)
    buf.seek(0)
    fresh = make_slot("cnn", blending_steps=2)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert all(not p.requires_grad for p in fresh.seed_parameters())  # frozen again
    for _ in range(3):
        epoch(slot, 60.0, counterfactual=5.0)
        epoch(fresh, 60.0, counterfactual=5.0)
        assert float(fresh.alpha) == float(slot.alpha) and fresh.stage == slot.stage
    assert fresh.stage == S.CULLED and fresh.state.cull_reason == "r"
