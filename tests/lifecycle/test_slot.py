"""SeedSlot: the full lifecycle, gates in context, isolation, alpha overrides,
telemetry, errors, checkpoints and torch.compile."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import kasmina_fast
from kasmina_fast import (
    GatedBlend,
    SeedShapeError,
    SeedSlot,
    SeedStage,
    TaskConfig,
    TelemetryEventType,
)
from tests.utils import epoch, features, make_slot

S = SeedStage
CL = torch.channels_last


def to_probation(slot: SeedSlot) -> None:
    slot.germinate("norm", "s1")
    acc = 50.0
    epoch(slot, acc)
    while slot.stage == S.TRAINING:
        acc += 1.0
        epoch(slot, acc)
    while slot.stage == S.BLENDING:
        acc += 0.5
        epoch(slot, acc)
    assert slot.stage == S.PROBATIONARY


def test_lifecycle_germinate_to_fossilize_with_events():
    events = []
    slot = make_slot(events=events)
    state = slot.germinate("norm", "s1")
    assert state.stage == S.GERMINATED and state.slot_id == "mid"
    x = features()
    assert torch.equal(slot(x), x), "GERMINATED: the forward is still the host's"
    epoch(slot, 49.0)  # G1 at the first epoch boundary (no dwell)
    assert slot.stage == S.TRAINING
    epoch(slot, 50.0)
    assert slot.stage == S.TRAINING
    epoch(slot, 51.0)  # dwell reached, but G2 wants 3 epochs in stage
    assert slot.stage == S.TRAINING
    epoch(slot, 52.0)
    assert slot.stage == S.BLENDING and float(slot.alpha) == 0.0
    alphas = []
    while slot.stage == S.BLENDING:
        epoch(slot, 54.0)
        alphas.append(float(slot.alpha))
    assert alphas == sorted(alphas) and alphas[-1] == 1.0 and len(alphas) == 5
    assert slot.stage == S.PROBATIONARY
    epoch(slot, 55.0, counterfactual=3.0)
    assert slot.stage == S.PROBATIONARY, "probation never fossilizes by itself"
    result = slot.advance_stage(S.FOSSILIZED)
    assert result.passed and slot.stage == S.FOSSILIZED
    assert not slot.cull("try") and slot.stage == S.FOSSILIZED
    kinds = [(e.event_type, e.data.get("to")) for e in events]
    # germinate emits SEED_GERMINATED only; a transition's SEED_STAGE_CHANGED comes
    # before the outcome event it causes
    assert kinds == [
        (TelemetryEventType.SEED_GERMINATED, None),
        (TelemetryEventType.SEED_STAGE_CHANGED, "TRAINING"),
        (TelemetryEventType.SEED_STAGE_CHANGED, "BLENDING"),
        (TelemetryEventType.SEED_STAGE_CHANGED, "PROBATIONARY"),
        (TelemetryEventType.SEED_STAGE_CHANGED, "FOSSILIZED"),
        (TelemetryEventType.SEED_FOSSILIZED, None),
    ]
    germ = events[0].data
    assert germ == {"blueprint_id": "norm", "seed_id": "s1", "params": 24}
    assert events[1].data == {"from": "GERMINATED", "to": "TRAINING"}
    fossil = events[5].data
    assert fossil["counterfactual"] == 3.0 and fossil["params_added"] == 24 and fossil["improvement"] == 6.0
    assert fossil["epochs_in_stage"] == 1  # counted in PROBATIONARY, before the stage changed
    assert fossil["blending_delta"] == 3.0
    assert set(fossil) == {
        "blueprint_id", "seed_id", "improvement", "blending_delta", "counterfactual",
        "params_added", "epochs_total", "epochs_in_stage",
    }  # fmt: skip


def test_cull_embargo_dormant_germinate_again():
    events = []
    slot = make_slot(events=events, embargo_epochs=2)
    slot.germinate("conv_light", "s1")
    epoch(slot, 50.0)
    epoch(slot, 50.0)
    assert slot.stage == S.TRAINING
    assert slot.cull("bad idea")
    assert slot.stage == S.CULLED and slot.seed is None and slot.state.cull_reason == "bad idea"
    with pytest.raises(RuntimeError, match=r"culled.*CULLED"):
        slot.germinate("norm")
    stages = []
    for _ in range(5):
        slot.state.metrics.record_accuracy(50.0)  # the state stays visible until DORMANT
        slot.step_epoch()
        stages.append(slot.stage)
        if slot.state is None:
            break
    assert stages == [S.EMBARGOED, S.EMBARGOED, S.RESETTING, S.DORMANT]
    assert slot.state is None
    state = slot.germinate("norm")
    assert state.seed_id == "mid-norm-2" and slot.stage == S.GERMINATED
    culled = [i for i, e in enumerate(events) if e.event_type == TelemetryEventType.SEED_CULLED]
    assert len(culled) == 1
    cull = events[culled[0]]
    assert cull.data["reason"] == "bad idea" and "params_added" not in cull.data
    assert cull.data["epochs_in_stage"] == 1  # TRAINING's, before the stage changed
    before = events[culled[0] - 1]
    assert before.event_type == TelemetryEventType.SEED_STAGE_CHANGED
    assert before.data == {"from": "TRAINING", "to": "CULLED"}


def test_probation_auto_culls():
    slot = make_slot()
    to_probation(slot)
    epoch(slot, 60.0, counterfactual=-0.5)
    assert slot.stage == S.CULLED and slot.state.cull_reason == "negative_counterfactual"
    slot2 = make_slot(max_epochs=20)
    to_probation(slot2)
    for _ in range(4):
        epoch(slot2, 60.0, counterfactual=0.5)  # positive but below G5: wait
    assert slot2.stage == S.PROBATIONARY
    epoch(slot2, 60.0, counterfactual=0.5)  # max(5, int(0.1 * 20)) = 5 epochs
    assert slot2.stage == S.CULLED and slot2.state.cull_reason == "probation_timeout"


def test_advance_stage_refusals():
    slot = make_slot()
    assert not slot.advance_stage(S.TRAINING).passed  # empty slot
    slot.germinate("norm")
    r = slot.advance_stage(S.FOSSILIZED)
    assert not r.passed and "GERMINATED -> FOSSILIZED" in r.message
    r = slot.advance_stage(S.CULLED)
    assert not r.passed and "use cull()" in r.message
    r = slot.advance_stage(S.BLENDING)
    assert not r.passed and "GERMINATED -> BLENDING" in r.message
    r = slot.advance_stage(S.TRAINING)  # a controller may start TRAINING at once (G1)
    assert r.passed and r.gate.name == "G1" and slot.stage == S.TRAINING
    r = slot.advance_stage(S.BLENDING)  # no epochs, no improvement yet
    assert not r.passed and "epochs_in_stage" in r.checks_failed and slot.stage == S.TRAINING


def test_germinate_errors():
    slot = make_slot()
    with pytest.raises(ValueError, match="unknown blueprint 'lora' for cnn; available: attention"):
        slot.germinate("lora")
    with pytest.raises(ValueError, match="unknown blend algorithm"):
        slot.germinate("norm", blend_algorithm_id="exp")
    with pytest.raises(ValueError, match=r"alpha_target must be in \(0, 1\]"):
        slot.germinate("norm", alpha_target=0.0)
    with pytest.raises(ValueError, match="blend_epochs must be >= 1"):
        slot.germinate("norm", blend_epochs=0)
    assert slot.state is None
    slot.germinate("norm")
    with pytest.raises(RuntimeError, match="already holds seed"):
        slot.germinate("norm")


def test_shape_changing_seed_is_refused():
    kasmina_fast.BlueprintRegistry.register(
        kasmina_fast.BlueprintSpec("shrink", "cnn", lambda c: nn.Conv2d(c, c, 3), lambda c: 9 * c * c + c)
    )
    try:
        slot = make_slot()
        with pytest.raises(SeedShapeError, match=r"input \[1, 8, 32, 32\], output \[1, 8, 30, 30\]"):
            slot.germinate("shrink")
        assert slot.state is None
    finally:
        kasmina_fast.BlueprintRegistry.unregister("cnn", "shrink")


@pytest.mark.parametrize("blueprint", ["norm", "attention", "conv_heavy"])
def test_training_stage_is_the_ste(blueprint):
    slot = make_slot()
    slot.germinate(blueprint)
    slot.advance_stage(S.TRAINING)
    nn.init.normal_(
        next(p for n, p in slot.seed.named_parameters() if "scale" in n or "fc2" in n or "conv2" in n)
    )
    x = features(requires_grad=True)
    out = slot(x)
    assert torch.equal(out, x), "TRAINING: value is host"
    out.square().sum().backward()
    assert torch.equal(x.grad, 2 * x.detach()), "host gets the task gradient, nothing through the seed"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in slot.seed.parameters()), "seed learns"


@pytest.mark.parametrize(("topology", "isolated_in_blending"), [("cnn", True), ("transformer", False)])
def test_isolation_per_stage_and_topology(topology, isolated_in_blending):
    slot = make_slot(topology)
    slot.germinate("norm")
    assert not slot.isolate_gradients  # GERMINATED: the seed does not run
    epoch(slot, 49)
    assert slot.isolate_gradients  # TRAINING
    for acc in (50, 51, 52, 53):
        epoch(slot, acc)
    assert slot.stage == S.BLENDING and slot.isolate_gradients == isolated_in_blending
    epoch(slot, 54)
    x = features(topology, requires_grad=True)
    nn.init.normal_(slot.seed.scale)
    out = slot(x)
    g = torch.randn_like(out)
    out.backward(g)
    w = float(slot.alpha)
    direct = (1 - w) * g  # host's direct path
    if isolated_in_blending:
        torch.testing.assert_close(x.grad, direct)
    else:
        assert not torch.allclose(x.grad, direct), "transformer: the seed path reaches the host"


def test_override_alpha_equals_force_alpha_and_nests():
    slot = make_slot()
    to_probation(slot)
    nn.init.normal_(slot.seed.scale)
    x = features()
    with torch.no_grad():
        at_zero = slot(x, override_alpha=0.0)
        with slot.force_alpha(0.0):
            forced = slot(x)
            with slot.force_alpha(1.0):
                inner = slot(x)
            after_inner = slot(x)
        full = slot(x)
    assert torch.equal(at_zero, x) and torch.equal(forced, at_zero) and torch.equal(after_inner, at_zero)
    assert torch.equal(inner, slot.seed(x)) and torch.equal(full, slot.seed(x))


def test_gated_blend_trains_its_gate():
    slot = make_slot()
    slot.germinate("norm", blend_algorithm_id="gated")
    for acc in (50, 51, 52, 53, 54, 55):
        epoch(slot, acc)
    assert slot.stage == S.BLENDING and isinstance(slot.alpha_schedule, GatedBlend)
    params = slot.seed_parameters()
    assert any(p is slot.alpha_schedule.gate.weight for p in params)
    nn.init.normal_(slot.seed.scale)
    slot(features()).square().sum().backward()
    assert slot.alpha_schedule.gate.bias.grad is not None and slot.alpha_schedule.gate.bias.grad.abs() > 0


def test_gradient_telemetry_feeds_g2_and_health():
    host = nn.Conv2d(8, 8, 3, padding=1)
    slot = make_slot()
    slot.germinate("conv_light", host_module=host)
    slot.advance_stage(S.TRAINING)
    nn.init.normal_(slot.seed.conv2.weight)
    x = torch.randn(4, 8, 6, 6)
    slot(host(x)).square().sum().backward()
    stats = slot.capture_gradient_telemetry()
    assert isinstance(stats["stats"], torch.Tensor) and stats["stats"].shape == (4,)
    slot.materialize_gradient_telemetry(stats)
    m = slot.state.metrics
    want = kasmina_fast.reference.gradient_stats(
        [p.grad for p in host.parameters()], [p.grad for p in slot.seed.parameters()], 8 * 8 * 9 + 8, 170
    )
    assert m.seed_gradient_norm_ratio == pytest.approx(want[2].item(), rel=1e-5)
    assert m.host_param_count == 584 and m.seed_param_count == 170
    next(slot.seed.parameters()).grad[0] = float("nan")
    slot.materialize_gradient_telemetry(slot.capture_gradient_telemetry())
    assert not slot.state.is_healthy


def test_fast_mode_emits_nothing_and_never_weakens_a_gate():
    events = []
    slot = make_slot(events=events, fast_mode=True)
    slot.germinate("norm")
    slot.advance_stage(S.TRAINING)
    for acc in (50, 51, 52, 53):
        epoch(slot, acc, ratio=0.0)  # gradients measured as inactive: G2 refuses, as without fast_mode
    assert slot.stage == S.TRAINING and events == []
    assert slot.gates.check(S.BLENDING, slot.state).checks_failed == ("seed_gradient_measured",)
    slot.state.metrics.gradient_measurements = 1  # measured, and inactive
    assert slot.gates.check(S.BLENDING, slot.state).checks_failed == ("seed_gradient_ratio",)
    h = features(requires_grad=True)
    slot(h).sum().backward()
    assert slot.capture_gradient_telemetry() is not None  # the telemetry still works


def roundtrip(slot: SeedSlot) -> SeedSlot:
    buf = io.BytesIO()
    torch.save(slot.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    fresh = make_slot()
    fresh.load_state_dict(sd)
    return fresh


@pytest.mark.parametrize("algorithm", ["sigmoid", "gated"])
def test_checkpoint_round_trip_in_every_stage(algorithm):
    slot = make_slot()
    slot.germinate("norm", "s1", blend_algorithm_id=algorithm)
    accs = iter([50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64])
    seen = set()
    while slot.stage != S.PROBATIONARY:
        seen.add(slot.stage)
        nn.init.normal_(slot.seed.scale)
        restored = roundtrip(slot)
        assert restored.get_state_report() == slot.get_state_report()
        with pytest.raises(RuntimeError, match="advance_stage"):  # a restored state is the slot's too
            restored.state.stage = S.FOSSILIZED
        x = features()
        with torch.no_grad():
            torch.testing.assert_close(restored(x), slot(x))
        # the next decision is the same
        acc = next(accs)
        for s in (slot, restored):
            epoch(s, float(acc))
        assert restored.stage == slot.stage and float(restored.alpha) == float(slot.alpha)
        slot = restored
    assert {S.GERMINATED, S.TRAINING, S.BLENDING} <= seen
    restored = roundtrip(slot)
    assert restored.stage == S.PROBATIONARY
    assert restored.advance_stage(S.FOSSILIZED).passed is False  # no counterfactual yet, same as the original
    epoch(restored, 70.0, counterfactual=2.0)
    assert restored.advance_stage(S.FOSSILIZED).passed
    fossil = roundtrip(restored)
    assert fossil.stage == S.FOSSILIZED and float(fossil.alpha) == 1.0
    restored.cull("x")
    culled = roundtrip(restored)
    assert culled.stage == S.FOSSILIZED  # fossilized seeds cannot be culled
    empty = roundtrip(make_slot())
    assert empty.state is None and empty.seed is None


def test_checkpoint_through_cull_embargo_and_reset():
    slot = make_slot(embargo_epochs=2)
    slot.germinate("norm")
    slot.cull("gone")
    stages = []
    while True:
        restored = roundtrip(slot)
        restored.embargo_epochs = 2
        assert restored.get_state_report() == slot.get_state_report() and restored.seed is None
        for s in (slot, restored):
            s.step_epoch()
        assert restored.stage == slot.stage
        stages.append(slot.stage)
        slot = restored
        if slot.state is None:
            break
    assert stages == [S.EMBARGOED, S.EMBARGOED, S.RESETTING, S.DORMANT]
    assert slot.germinate("norm").seed_id == "mid-norm-2"  # the germination counter survived


def test_to_moves_and_clears_probe_cache():
    slot = make_slot()
    slot.germinate("norm")
    assert slot._probe_cache
    slot.to(torch.float64)
    assert not slot._probe_cache and slot.alpha.dtype == torch.float64
    assert next(slot.seed.parameters()).dtype == torch.float64


def test_germinated_waits_for_g1_at_the_epoch_boundary():
    events = []
    slot = make_slot(events=events)
    slot.germinate("norm", "s1")
    assert [e.event_type for e in events] == [TelemetryEventType.SEED_GERMINATED]
    assert slot.stage == S.GERMINATED and slot.state.previous_stage == S.DORMANT
    assert slot.get_state_report()["stage"] == "GERMINATED"
    slot.step_epoch()  # G1, no dwell (even without a recorded accuracy)
    assert slot.stage == S.TRAINING
    assert [e.data for e in events[1:]] == [{"from": "GERMINATED", "to": "TRAINING"}]
    r = slot.advance_stage(S.TRAINING)
    assert not r.passed and "TRAINING -> TRAINING" in r.message


def test_a_culled_germinated_seed_goes_through_the_embargo():
    slot = make_slot(embargo_epochs=1)
    slot.germinate("norm")
    assert slot.cull("changed my mind") and slot.stage == S.CULLED
    for _ in range(3):
        slot.step_epoch()
    assert slot.stage == S.DORMANT and slot.state is None


def test_the_stage_cannot_be_set_from_outside():
    """One source of truth: the slot's forward and gates follow state.stage, which only
    the slot moves; a hand edit raises (naming the ways to move it), never an
    AttributeError later, never a forward that disagrees with the gates."""
    slot = make_slot()
    slot.germinate("norm")
    with pytest.raises(RuntimeError, match=r"advance_stage\(\), step_epoch\(\) or cull\(\)"):
        slot.state.stage = S.BLENDING
    assert slot.stage == slot.state.stage == S.GERMINATED
    with pytest.raises(RuntimeError, match="the state is the slot's own"):
        slot.state = None
    slot.step_epoch()
    slot.step_epoch()  # no crash: the stage and the schedule agree
    assert slot.stage == slot.state.stage == S.TRAINING
    x = features()
    assert torch.equal(slot(x), x)


def test_seed_state_can_be_built_with_the_spec_fields():
    state = kasmina_fast.SeedState(seed_id="s", blueprint_id="norm")
    assert state.slot_id == "" and state.stage == S.DORMANT
    state.stage = S.TRAINING  # not held by a slot: a plain dataclass
    assert state.stage == S.TRAINING
    full = kasmina_fast.SeedState(
        seed_id="s", blueprint_id="norm", slot_id="mid", stage=S.BLENDING, alpha=0.5
    )
    assert (full.slot_id, full.stage, full.alpha) == ("mid", S.BLENDING, 0.5)


def test_the_training_dwell_follows_the_spec_system():
    assert make_slot().task_config.training_dwell == 1  # no fraction given
    slot = SeedSlot("mid", 8)  # no task_config at all
    assert slot.task_config.training_dwell == 1
    quick = kasmina_fast.QualityGates(min_blending_epochs=1)  # so that the dwell decides
    for task_config, stages in [
        (None, [S.TRAINING, S.BLENDING]),  # dwell 1
        (TaskConfig.cifar10(), [S.TRAINING, S.TRAINING, S.BLENDING]),  # dwell 2
    ]:
        slot = SeedSlot("mid", 8, gates=quick, task_config=task_config)
        slot.germinate("norm")
        seen = []
        for i in range(len(stages)):
            epoch(slot, 50.0 + i)
            seen.append(slot.stage)
        assert seen == stages, task_config


@pytest.mark.parametrize(
    "failing", ["SEED_GERMINATED", "SEED_STAGE_CHANGED", "SEED_CULLED", "SEED_FOSSILIZED"]
)
def test_a_raising_telemetry_callback_never_leaves_a_half_done_transition(failing):
    """The change completes first; the callback's exception is raised afterwards."""
    import kasmina_fast as kf

    class Boom(Exception):
        pass

    seen = []

    def callback(event):
        seen.append(event.event_type.name)
        if event.event_type.name == failing:
            raise Boom

    host = kf.CNNHost(num_classes=4, base_channels=4, n_blocks=3)
    gates = kf.QualityGates(min_training_improvement=-1e9, min_blending_epochs=1, min_seed_gradient_ratio=0.0)
    tc = kf.TaskConfig(topology="cnn", blending_steps=1)
    model = kf.MorphogeneticModel(host, slots=["mid"], task_config=tc, gates=gates, on_telemetry=callback)
    slot = model.seed_slots["mid"]

    def attempt(fn):
        try:
            fn()
        except Boom:
            return True
        return False

    version = model.architecture_version
    raised = attempt(lambda: model.germinate_seed("conv_light", slot="mid"))
    assert slot.seed is not None and slot.stage == S.GERMINATED and model.germinations["mid"] == 1
    assert model.architecture_version == version + 1
    raised |= attempt(lambda: model.advance_stage(S.TRAINING, slot="mid"))
    assert slot.stage == S.TRAINING
    for acc in (50.0, 51.0, 52.0, 53.0):
        slot.state.metrics.record_accuracy(acc)
        slot.state.metrics.counterfactual_contribution = 5.0
        raised |= attempt(model.step_epoch)
    assert slot.stage == S.PROBATIONARY
    if failing == "SEED_FOSSILIZED":
        raised |= attempt(lambda: model.advance_stage(S.FOSSILIZED, slot="mid"))
        assert slot.stage == S.FOSSILIZED and slot.seed is not None
    else:
        version = model.architecture_version
        raised |= attempt(lambda: model.cull_seed(slot="mid"))
        # the cull completed: no orphan seed, no schedule, alpha back to 0, the version moved
        assert slot.stage == S.CULLED and slot.seed is None and slot.alpha_schedule is None
        assert float(slot.alpha) == 0.0 and not list(slot.parameters())
        assert model.architecture_version == version + 1
    assert raised and failing in seen
