"""MorphogeneticModel: slots in host order, equivalence with the bare host,
every blueprint in every slot, limits, parameter accessors, moves, compile."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from kasmina_fast import BlueprintRegistry, CNNHost, MorphogeneticModel, SeedStage, TransformerHost

S = SeedStage


def cnn_model(**kw):
    torch.manual_seed(0)
    return MorphogeneticModel(CNNHost(base_channels=8), slots=["late", "mid"], **kw)


def tr_model(**kw):
    torch.manual_seed(0)
    host = TransformerHost(vocab_size=40, n_embd=16, n_head=2, n_layer=3, block_size=8)
    return MorphogeneticModel(host, slots=["layer1", "layer2"], **kw)


def test_slots_in_host_order_and_bad_names():
    m = cnn_model()
    assert m.slot_ids == ["mid", "late"] and list(m.seed_slots) == ["mid", "late"]
    assert m.seed_slots["late"].channels == 32
    with pytest.raises(ValueError, match="available: early, mid, late"):
        MorphogeneticModel(CNNHost(base_channels=8), slots=["deep"])
    with pytest.raises(ValueError, match="distinct"):
        MorphogeneticModel(CNNHost(base_channels=8), slots=["mid", "mid"])
    with pytest.raises(ValueError, match="no slot 'early'"):
        m.germinate_seed("norm", slot="early")
    host = TransformerHost(vocab_size=40, n_embd=16, n_head=2, n_layer=3, block_size=8)
    with pytest.raises(ValueError, match="'mid' is the point 'layer2'"):
        MorphogeneticModel(host, slots=["layer2", "mid"])


@pytest.mark.parametrize("make", [cnn_model, tr_model])
def test_no_seed_equals_bare_host_and_identity_at_birth(make):
    m = make()
    bare = copy.deepcopy(m.host)
    for s in m.slot_ids:
        bare.unregister_slot(s)
    m.eval()
    bare.eval()
    x = torch.randn(2, 3, 16, 16) if isinstance(m.host, CNNHost) else torch.randint(0, 40, (2, 8))
    torch.testing.assert_close(m(x), bare(x))
    topology = m.task_config.topology
    for s in m.slot_ids:
        m.germinate_seed("conv_heavy" if topology == "cnn" else "mlp", slot=s)
    torch.testing.assert_close(m(x), bare(x))  # identity at birth: nothing shifts


@pytest.mark.parametrize("make", [cnn_model, tr_model])
def test_every_blueprint_in_every_slot(make):
    m = make()
    topology = m.task_config.topology
    x = torch.randn(2, 3, 16, 16) if topology == "cnn" else torch.randint(0, 40, (2, 8))
    for spec in BlueprintRegistry.list_for_topology(topology):
        if spec.blueprint_id == "flex_attention":
            continue  # FlexAttention has no CPU backward: tests/blueprints/test_flex_attention.py
        for slot in m.slot_ids:
            m.germinate_seed(spec.blueprint_id, slot=slot)
            m.advance_stage(S.TRAINING, slot=slot)
            for p in m.seed_slots[slot].seed_parameters():  # leave the identity so gradients show
                torch.nn.init.normal_(p, std=0.05)
            out = m(x)
            out.float().square().mean().backward()
            params = m.seed_slots[slot].seed_parameters()
            assert len(params) == 0 or any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), (
                spec.blueprint_id,
                slot,
            )
            assert m.cull_seed(slot=slot, reason="next")
            while m.seed_slots[slot].state is not None:  # through the embargo back to DORMANT
                m.seed_slots[slot].step_epoch()


def test_parameter_accessors_do_not_overlap():
    m = cnn_model()
    m.germinate_seed("conv_light", slot="mid")
    host_ids = {id(p) for p in m.host_parameters()}
    seed_ids = {id(p) for p in m.seed_parameters()}
    assert not host_ids & seed_ids
    assert host_ids | seed_ids == {id(p) for p in m.parameters()}
    assert m.seed_slots["mid"].state.metrics.host_param_count == sum(p.numel() for p in m.host_parameters())


def test_seed_limits():
    m = cnn_model(max_seeds=1, max_seeds_per_slot=1)
    m.germinate_seed("norm", slot="mid")
    with pytest.raises(RuntimeError, match="max_seeds=1"):
        m.germinate_seed("norm", slot="late")
    assert m.count_active_seeds() == 1 and m.count_fossilized_seeds() == 0
    m.cull_seed(slot="mid")
    m.germinate_seed("norm", slot="late")
    m2 = cnn_model(max_seeds_per_slot=1)
    m2.germinate_seed("norm", slot="mid")
    m2.cull_seed(slot="mid")
    slot = m2.seed_slots["mid"]
    for _ in range(8):
        slot.step_epoch()
    assert slot.state is None
    with pytest.raises(RuntimeError, match="max_seeds_per_slot=1"):
        m2.germinate_seed("norm", slot="mid")


def test_architecture_version_tracks_parameter_changes():
    m = cnn_model()
    v0 = m.architecture_version
    m.germinate_seed("norm", slot="mid", blend_algorithm_id="gated")
    assert m.architecture_version == v0 + 1
    slot = m.seed_slots["mid"]
    for acc in (49, 50, 51, 52):  # GERMINATED, then TRAINING
        slot.state.metrics.seed_gradient_norm_ratio = 1.0
        slot.state.metrics.record_accuracy(acc)
        m.step_epoch()
    assert slot.stage == S.BLENDING and m.architecture_version == v0 + 2, "the gate's parameters appeared"


def test_to_dtype_keeps_everything_consistent():
    m = cnn_model()
    m.germinate_seed("depthwise", slot="late")
    m.to(torch.float64)
    for s in m.seed_slots.values():
        assert s.alpha.dtype == torch.float64 and s.device == torch.device("cpu")
    assert all(p.dtype == torch.float64 for p in m.parameters())
    out = m(torch.randn(2, 3, 16, 16, dtype=torch.float64))
    assert out.dtype == torch.float64


def drive(slot, acc, counterfactual=None):
    slot.state.metrics.seed_gradient_norm_ratio = 1.0
    slot.state.metrics.record_accuracy(acc)
    if counterfactual is not None:
        slot.state.metrics.counterfactual_contribution = counterfactual


def test_compile_model_over_full_lifecycles_of_every_slot():
    """mid: germinate -> ... -> FOSSILIZED; late: germinate -> cull -> embargo -> DORMANT.
    One compile per combination of slot behaviours, none per alpha-ramp step."""
    torch._dynamo.reset()
    m = cnn_model()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(m, backend=counter, fullgraph=True)
    x = torch.randn(2, 3, 16, 16)
    mid, late = m.seed_slots["mid"], m.seed_slots["late"]
    log = []

    def step():
        out = compiled(x)
        torch.testing.assert_close(out, m(x))
        out.sum().backward()
        log.append((mid.stage.name, late.stage.name, counter.frame_count))

    step()
    m.germinate_seed("norm", slot="mid")
    m.germinate_seed("norm", slot="late")
    for slot in (mid, late):
        torch.nn.init.normal_(slot.seed.scale)
    acc = 50.0
    for epoch in range(16):
        step()
        acc += 1.0
        for slot in (mid, late):
            if slot.state is not None:
                drive(slot, acc, counterfactual=2.0)
        if epoch == 4:
            m.cull_seed(slot="late", reason="test")
        m.step_epoch()
        if mid.stage == S.PROBATIONARY:
            m.advance_stage(S.FOSSILIZED, slot="mid")
    step()
    assert mid.stage == S.FOSSILIZED and late.state is None
    behaviours = set()
    for a, b, _ in log:
        # stages in which a slot's forward behaves alike: inactive ones, and the two blending ones
        group = {
            "DORMANT": "off",
            "CULLED": "off",
            "EMBARGOED": "off",
            "RESETTING": "off",
            "PROBATIONARY": "BLENDING",
        }
        behaviours.add((group.get(a, a), group.get(b, b)))
    ramp = [f for a, b, f in log if a == "BLENDING"]
    assert len(set(ramp)) <= 2, f"recompiled during the alpha ramp: {log}"
    assert counter.frame_count <= len(behaviours) + 1, log
    print(f"model lifecycle compiles: {counter.frame_count} for {len(behaviours)} behaviours: {log}")


def test_model_checkpoint_round_trip():
    import io

    m = cnn_model()
    m.germinate_seed("conv_light", slot="mid", blend_algorithm_id="gated")
    m.germinate_seed("norm", slot="late")
    mid = m.seed_slots["mid"]
    for acc in (50, 51, 52, 53):
        for s in m.seed_slots.values():
            if s.state is not None:
                drive(s, acc)
        m.step_epoch()
    m.cull_seed(slot="late")
    for p in mid.seed_parameters():
        torch.nn.init.normal_(p, std=0.1)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh = cnn_model()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert [s.stage for s in fresh.seed_slots.values()] == [S.BLENDING, S.CULLED]
    m.eval()
    fresh.eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fresh(x), m(x))
    assert fresh.seed_slots["mid"].get_state_report() == mid.get_state_report()
    assert fresh.germinations == {"mid": 1, "late": 1}
    assert fresh.seed_slots["mid"].isolation_monitor.host_param_count == len(
        torch.nn.utils.parameters_to_vector(m.host_parameters())
    )


@pytest.mark.parametrize(
    ("host_fn", "names"),
    [
        (lambda: CNNHost(base_channels=8), ["early", "mid", "late"]),
        (lambda: CNNHost(n_blocks=4, base_channels=4, pool_layers=3), ["block1", "mid", "block3", "late"]),
        (
            lambda: TransformerHost(vocab_size=40, n_embd=16, n_head=2, n_layer=4, block_size=8),
            ["early", "mid", "layer3", "late"],
        ),
    ],
)
def test_a_seedless_model_with_any_subset_of_slots_equals_the_bare_host(host_fn, names):
    import itertools

    torch.manual_seed(0)
    bare = host_fn().eval()
    x = torch.randn(2, 3, 16, 16) if isinstance(bare, CNNHost) else torch.randint(0, 40, (2, 8))
    want = bare(x)
    for k in range(1, len(names) + 1):
        for subset in itertools.combinations(names, k):
            m = MorphogeneticModel(copy.deepcopy(bare), slots=list(subset)).eval()
            assert m.slot_ids == list(subset)  # host order
            torch.testing.assert_close(m(x), want, rtol=0, atol=0)


@pytest.mark.parametrize("slot", ["early", "late"])
def test_first_and_last_points_grow_a_seed_through_the_lifecycle(slot):
    """The points the host used to lack: after the first block and after the last."""
    m = MorphogeneticModel(CNNHost(base_channels=8), slots=["early", "mid", "late"])
    m.germinate_seed("conv_light", slot=slot)
    s = m.seed_slots[slot]
    acc = 50.0
    while s.stage != S.PROBATIONARY:
        drive(s, acc, counterfactual=2.0)
        m.step_epoch()
        acc += 1.0
    x = torch.randn(2, 3, 16, 16)
    m(x).square().mean().backward()
    assert any(p.grad is not None for p in s.seed_parameters())
    assert m.advance_stage(S.FOSSILIZED, slot=slot).passed


def test_the_spec_systems_model_queries():
    m = MorphogeneticModel(CNNHost(base_channels=8), slots=["early", "mid", "late"])
    host_count = sum(p.numel() for p in m.host.parameters())
    assert not m.has_active_seed and m.total_seeds() == 0 and m.active_seed_params == 0
    assert m.total_params == host_count
    assert m.get_slot_states() == {"early": None, "mid": None, "late": None}
    m.germinate_seed("conv_light", slot="mid")
    seed_count = sum(p.numel() for p in m.seed_slots["mid"].seed.parameters())
    assert m.has_active_seed and m.has_active_seed_in_slot("mid") and not m.has_active_seed_in_slot("late")
    assert m.count_seeds_in_slot("mid") == 1 and m.count_seeds_in_slot("early") == 0
    assert m.total_seeds() == 1 and m.active_seed_params == seed_count
    assert m.total_params == host_count + seed_count
    states = m.get_slot_states()
    assert states["mid"] is m.seed_slots["mid"].state and states["mid"].stage == S.GERMINATED
    assert {id(p) for p in m.get_seed_parameters()} == {id(p) for p in m.seed_parameters()}
    assert [id(p) for p in m.get_seed_parameters("mid")] == [
        id(p) for p in m.seed_slots["mid"].seed_parameters()
    ]
    assert list(m.get_seed_parameters("late")) == []
    assert [id(p) for p in m.get_host_parameters()] == [id(p) for p in m.host_parameters()]
    with pytest.raises(ValueError, match="no slot 'deep'"):
        m.count_seeds_in_slot("deep")
    assert m.cull_seed(slot="mid")
    assert not m.has_active_seed and m.total_seeds() == 0 and m.total_params == host_count


def test_total_params_counts_a_tied_weight_once():
    host = TransformerHost(vocab_size=40, n_embd=16, n_head=2, n_layer=3, block_size=8)
    m = MorphogeneticModel(host, slots=["mid"])
    assert m.total_params == sum(p.numel() for p in set(host.parameters()))


def test_germinate_seed_passes_blueprint_options_and_a_checkpoint_restores_them():
    host = TransformerHost(vocab_size=40, n_embd=16, n_head=2, n_layer=3, block_size=8)
    m = MorphogeneticModel(host, slots=["mid"])
    m.germinate_seed("mlp", slot="mid", checkpoint=True)
    assert m.seed_slots["mid"].seed.checkpoint and m.get_slot_states()["mid"].blueprint_options == {
        "checkpoint": True
    }
    with pytest.raises(ValueError, match="has no option 'ckpt'"):
        MorphogeneticModel(copy.deepcopy(host), slots=["late"]).germinate_seed("mlp", slot="late", ckpt=True)
    fresh = MorphogeneticModel(
        TransformerHost(vocab_size=40, n_embd=16, n_head=2, n_layer=3, block_size=8), slots=["mid"]
    )
    fresh.load_state_dict(m.state_dict())
    assert fresh.seed_slots["mid"].seed.checkpoint
