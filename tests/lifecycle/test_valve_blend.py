"""A seed that joins its host through the valve (``blend_mode="valve"``): the slot
computes ``kasmina.valve`` from BLENDING on, isolated exactly where a lerp seed is,
keeps computing it across G5, through a checkpoint, in a counterfactual forward and
compiled; a policy and a model can choose it; a bad mode is refused."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import kasmina_fast as kf
from kasmina_fast import SeedStage as S
from kasmina_fast import reference
from tests.utils import epoch, features, make_slot, to_blending, until_stage


def _randomise(slot) -> None:
    """Seed (and gate) weights away from their identity initialisation."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in slot.seed_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
def test_blending_slot_computes_the_valve_and_its_gradients(topology):
    """Value = reference.valve(h, seed(h), alpha); the host's input gradient is the
    reference's with the seed's input detached on CNNs (isolated) and not on
    transformers (co-adapting), seed gradients included."""
    slot = make_slot(topology, blending_steps=4)
    to_blending(slot, ramped=True, blend_mode="valve")
    _randomise(slot)
    assert slot.state.blend_mode == "valve" and 0.0 < float(slot.alpha) < 1.0
    assert slot.isolate_gradients == (topology == "cnn")
    h = features(topology, requires_grad=True)
    g = torch.randn_like(h)
    out = slot(h)
    out.backward(g)
    got = h.grad.clone()

    h2 = h.detach().clone().requires_grad_()
    seed_in = h2.detach() if slot.isolate_gradients else h2
    want = reference.valve(h2, slot.seed(seed_in), slot.alpha, slot.isolate_gradients)
    want.backward(g)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, h2.grad, rtol=1e-5, atol=1e-6)
    # and it is not a lerp
    assert not torch.allclose(out, torch.lerp(h, slot.seed(h), slot.alpha), atol=1e-4)


def test_an_isolated_valve_gives_the_host_the_contracts_gradient():
    """CNN in BLENDING: the host's input gradient is exactly ``g (1 + w t)``."""
    slot = make_slot("cnn", blending_steps=4)
    to_blending(slot, ramped=True, blend_mode="valve")
    _randomise(slot)
    h = features("cnn", requires_grad=True)
    g = torch.randn_like(h)
    slot(h).backward(g)
    with torch.no_grad():
        t = torch.tanh(slot.seed(h) - h)
    torch.testing.assert_close(h.grad, g * (1 + slot.alpha * t), rtol=1e-5, atol=1e-6)
    assert all(p.grad is not None for p in slot.seed.parameters())


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
@pytest.mark.parametrize("algorithm", ["linear", "gated"])
def test_the_output_does_not_move_across_g5_or_a_checkpoint(topology, algorithm):
    slot = make_slot(topology, blending_steps=3)
    to_blending(slot, algorithm, blend_mode="valve")
    until_stage(slot, S.PROBATIONARY)
    _randomise(slot)
    x = features(topology)
    before = slot(x)
    assert not torch.allclose(before, x, atol=1e-4)  # the valve is open
    assert slot.advance_stage(S.FOSSILIZED).passed
    assert torch.equal(slot(x), before)
    buf = io.BytesIO()
    torch.save(slot.state_dict(), buf)
    buf.seek(0)
    fresh = make_slot(topology, blending_steps=3)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.state.blend_mode == "valve" and fresh.stage == S.FOSSILIZED
    assert torch.equal(fresh(x), before)


def test_counterfactual_forward_with_a_valve_seed():
    torch.manual_seed(0)
    host = kf.CNNHost(num_classes=5, base_channels=8, n_blocks=3)
    gates = kf.QualityGates(min_training_improvement=-1e9, min_blending_epochs=1, min_seed_gradient_ratio=0.0)
    tc = kf.TaskConfig(topology="cnn", blending_steps=4)
    model = kf.MorphogeneticModel(host, slots=["early", "mid", "late"], task_config=tc, gates=gates)
    for sid, mode in (("mid", "valve"), ("late", "lerp")):
        model.germinate_seed("conv_light", slot=sid, blend_algorithm_id="gated", blend_mode=mode)
        model.advance_stage(S.TRAINING, slot=sid)
        s = model.seed_slots[sid]
        while s.stage != S.BLENDING or float(s.alpha) == 0.0:
            s.state.metrics.record_accuracy(50.0)
            s.step_epoch()
        _randomise(s)
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    configs = [{}, {"mid": 0.0}, {"mid": 1.0, "late": 0.0}]
    with torch.no_grad():
        outs = model.counterfactual_forward(x, configs)
    for config, out in zip(configs, outs):
        with contextlib.ExitStack() as stack, torch.no_grad():
            for sid, alpha in config.items():
                stack.enter_context(model.seed_slots[sid].force_alpha(alpha))
            torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(outs[0], outs[1])


def test_a_valve_slot_compiles_once_while_alpha_ramps():
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    slot = make_slot("cnn", blending_steps=5)
    to_blending(slot, blend_mode="valve")
    _randomise(slot)
    compiled = torch.compile(slot, backend=counter, fullgraph=True)
    x = features("cnn")
    frames = []
    for _ in range(4):
        torch.testing.assert_close(compiled(x), slot(x))
        frames.append(counter.frame_count)
        epoch(slot, 55.0)
    assert slot.stage == S.BLENDING and len(set(frames)) == 1, frames


def test_a_model_and_a_policy_choose_the_valve():
    torch.manual_seed(0)
    host = kf.CNNHost(num_classes=5, base_channels=8, n_blocks=2)
    model = kf.MorphogeneticModel(host, slots=["block1"], task_config=kf.TaskConfig(topology="cnn"))
    policy = kf.HeuristicPolicy(germinate_at=0, blend_mode="valve")
    assert policy(model, 0, 50.0) == ["germinate conv_light in block1"]
    assert model.seed_slots["block1"].state.blend_mode == "valve"
    assert model.seed_slots["block1"].get_state_report()["blend_mode"] == "valve"


def test_a_bad_blend_mode_is_refused():
    slot = make_slot()
    with pytest.raises(
        ValueError, match=r"SeedSlot.germinate: blend_mode must be one of lerp, valve, got 'tanh'"
    ):
        slot.germinate("conv_light", blend_mode="tanh")
    assert slot.state is None and slot.seed is None
