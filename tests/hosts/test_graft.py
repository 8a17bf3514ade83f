"""graft / ModuleHost on models nobody here wrote: Hugging Face ResNet and GPT-2 built
from small configs, and a U-Net with a skip connection."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import kasmina_fast as kf
from kasmina_fast import QualityGates, SeedStage, TaskConfig
from tests.utils import UNet, call, graft_case

S = SeedStage
CASES = ("resnet", "gpt2", "unet")
PERMISSIVE = QualityGates(min_training_improvement=-100.0, min_seed_gradient_ratio=0.0, min_blending_epochs=1)


def grafted(name: str, **kw):
    model, points, inputs, out = graft_case(name)
    return kf.graft(model, points, example_input=inputs, **kw), model, inputs, out


# ---- structure -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_the_users_keys_do_not_change_and_a_checkpoint_loads_strictly(name):
    model, points, inputs, _ = graft_case(name)
    keys = list(model.state_dict())
    pretrained = {
        k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()
    }
    g = kf.graft(model, points, example_input=inputs)
    assert list(model.state_dict()) == keys
    model.load_state_dict(pretrained, strict=True)  # after grafting, into the user's model
    assert g.host.model is model
    sd = g.state_dict()
    tied = set(g.tied_aliases())  # a tied weight is held once, under its first name
    assert {"host.model." + k for k in keys} - tied <= set(sd) and not tied & set(sd)
    assert (name == "gpt2") == (tied == {"host.model.lm_head.weight"})
    slot_keys = {k for k in sd if not k.startswith("host.model.")} - {"_extra_state"}  # the plane's
    assert slot_keys and all(k.startswith("host.slots.") for k in slot_keys), slot_keys
    for k, v in model.state_dict().items():  # the grafted model's view of the user's tensors
        if "host.model." + k not in tied:
            assert torch.equal(sd["host.model." + k], v), k
    g.load_state_dict(sd, strict=True)  # the tied name is tied back


@pytest.mark.parametrize("name", CASES)
def test_points_topology_and_channels_from_the_probe(name):
    g, model, _, _ = grafted(name)
    points = g.host.injection_points
    want_top = {"resnet": "cnn", "gpt2": "transformer", "unet": "cnn"}[name]
    assert set(g.host.topologies.values()) == {want_top}
    assert g.task_config.topology == want_top
    assert list(points) == g.slot_ids  # host order: the order the probe ran them
    if name == "resnet":
        assert points == {"resnet.embedder": 8, "resnet.encoder.stages.0": 8, "resnet.encoder.stages.1": 16}
    if name == "unet":
        assert points == {"enc1": 8, "enc2": 16, "dec": 8}
    assert g.total_params == sum(p.numel() for p in model.parameters())
    assert g.host_parameters() == list(model.parameters())


def test_probe_restores_every_modules_training_flag():
    model, points, inputs, _ = graft_case("resnet")
    model.train()
    model.resnet.embedder.eval()  # e.g. a frozen stem
    kf.graft(model, points, example_input=inputs)
    assert model.training and model.resnet.encoder.training and not model.resnet.embedder.training
    assert not model.resnet.embedder.embedder.normalization.training


@pytest.mark.parametrize("name", CASES)
def test_forward_takes_and_returns_what_the_model_does(name):
    model, points, inputs, out = graft_case(name)
    bare = call(model, inputs)
    g = kf.graft(model, points, example_input=inputs)
    got = call(g, inputs)
    assert type(got) is type(bare)
    assert torch.equal(out(got), out(bare))
    if name == "gpt2":  # positional and keyword arguments pass through as they are
        ids = inputs["input_ids"]
        assert torch.equal(g(ids, attention_mask=torch.ones_like(ids)).logits, out(bare))


def test_a_tuple_output_transforms_its_first_element_only():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 6)

        def forward(self, x):
            return self.lin(x), x.sum()

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()

        def forward(self, x):
            h, extra = self.block(x)
            return h.sum(-1) + extra

    model = Model()
    x = torch.randn(2, 3, 6)
    g = kf.graft(model, "block", example_input=x, gates=PERMISSIVE)
    assert g.host.injection_points == {"block": 6}
    g.germinate_seed("norm", slot="block")
    g.advance_stage(S.TRAINING, slot="block")
    slot = g.seed_slots["block"]
    nn.init.normal_(slot.seed.scale)
    with slot.force_alpha(1.0), torch.no_grad():
        got = g(x)
        h = model.block.lin(x)
        want = slot(h).sum(-1) + x.sum()
    torch.testing.assert_close(got, want)


def test_a_point_with_two_consumers_feeds_both_the_slots_output():
    torch.manual_seed(0)
    model = UNet()
    x = torch.randn(2, 1, 8, 8)
    g = kf.graft(model, ["enc1"], example_input=x)
    g.germinate_seed("conv_light", slot="enc1")
    g.advance_stage(S.TRAINING, slot="enc1")
    slot = g.seed_slots["enc1"]
    for p in slot.seed.parameters():
        nn.init.normal_(p)  # a seed that changes the features
    with slot.force_alpha(0.5), torch.no_grad():
        got = g(x)
        bare_e1 = model.enc1[1](model.enc1[0](x))  # by hand, without the hook on enc1
        e1 = slot(bare_e1)  # the slot's output goes both down and across
        e2 = model.enc2(model.pool(e1))
        want = model.head(model.dec(torch.cat([model.up(e2), e1], dim=1)))
    assert not torch.equal(e1, bare_e1)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# ---- refused, with a reason --------------------------------------------------------------------


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.b(self.a(self.a(x)))


@pytest.mark.parametrize(
    ("points", "match"),
    [
        (
            ["resnet.encoder.stage.1"],
            r"no submodule 'resnet.encoder.stage.1'; nearest: resnet.encoder.stages.1",
        ),
        ([""], "the root module cannot be a point"),
        (["resnet.embedder", "resnet.embedder"], "listed twice"),
        ([], "at least one point"),
        (["resnet.encoder.stages.0.layers.0.layer.0.convolution"], None),  # a legal inner point
        (["classifier.1"], None),  # the logits, [B, C]: a dense point
    ],
)
def test_bad_points_are_refused(points, match):
    model, _, inputs, _ = graft_case("resnet")
    if match is None:
        kf.graft(model, points, example_input=inputs)
        return
    with pytest.raises(ValueError, match=match):
        kf.graft(model, points, example_input=inputs)


@pytest.mark.parametrize(
    ("point", "x", "match"),
    [
        ("a", torch.randn(2, 3, 4), "'a' runs 2 times in one forward"),
        ("unused", torch.randn(2, 3, 4), "'unused' does not run"),
        ("b", torch.randn(4), r"'b' outputs shape \[4\]"),  # no batch
        ("b", torch.randn(2, 1, 1, 3, 4), r"'b' outputs shape \[2, 1, 1, 3, 4\]"),
    ],
)
def test_points_that_would_be_wrong_are_refused(point, x, match):
    with pytest.raises(ValueError, match=match):
        kf.graft(Twice(), [point], example_input=x)


def test_a_point_grafted_twice_is_refused():
    model, points, inputs, _ = graft_case("unet")
    kf.graft(model, points[:1], example_input=inputs)
    with pytest.raises(ValueError, match="'enc1' holds a slot already"):
        kf.graft(model, points, example_input=inputs)


def test_mixed_topologies_need_a_task_config_and_each_slot_keeps_its_own():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.proj = nn.Linear(4, 6)

        def forward(self, x):
            h = self.conv(x)
            return self.proj(h.flatten(2).transpose(1, 2))  # [B, H*W, 6]

    x = torch.randn(2, 3, 5, 5)
    with pytest.raises(
        ValueError, match=r"mixed topology: conv \(cnn\), proj \(transformer\); pass task_config"
    ):
        kf.graft(Mixed(), ["conv", "proj"], example_input=x)
    model = Mixed()
    bare = model(x)
    g = kf.graft(
        model, ["conv", "proj"], example_input=x, task_config=TaskConfig(topology="cnn", blending_steps=2)
    )
    assert [s.task_config.topology for s in g.seed_slots.values()] == ["cnn", "transformer"]
    assert all(s.task_config.blending_steps == 2 for s in g.seed_slots.values())
    with pytest.raises(ValueError, match="unknown blueprint"):
        g.germinate_seed("conv_light", slot="proj")
    g.germinate_seed("conv_light", slot="conv")
    g.germinate_seed("mlp", slot="proj")
    for sid in g.slot_ids:
        g.advance_stage(S.TRAINING, slot=sid)
    assert torch.equal(g(x), bare)


# ---- everything the built-in hosts do ------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_every_blueprint_is_the_identity_at_birth_at_every_point(name):
    base, points, inputs, out = graft_case(name)
    want = out(call(base, inputs))
    topology = {"resnet": "cnn", "gpt2": "transformer", "unet": "cnn"}[name]
    blueprints = [b.blueprint_id for b in kf.BlueprintRegistry.list_for_topology(topology)]
    assert len(blueprints) >= 4
    for point, blueprint in ((p, b) for p in points for b in blueprints):
        with torch.no_grad():
            g = kf.graft(copy.deepcopy(base), points, example_input=inputs)
            g.germinate_seed(blueprint, slot=point)
            assert torch.equal(out(call(g, inputs)), want), (point, blueprint, "GERMINATED")
            g.advance_stage(S.TRAINING, slot=point)
            slot = g.seed_slots[point]
            for p in slot.seed.parameters():  # no zero-initialised shortcut: a seed that does something
                nn.init.normal_(p, std=0.5)
            assert torch.equal(out(call(g, inputs)), want), (point, blueprint, "TRAINING")
            with slot.force_alpha(0.0):
                assert torch.equal(out(call(g, inputs)), want), (point, blueprint, "alpha 0")


def _train(g, model, inputs, out, steps=2):
    opt = torch.optim.SGD(g.parameters(), lr=0.01)
    telemetry = {}
    for _ in range(steps):
        loss = out(call(g, inputs)).square().mean()
        opt.zero_grad()
        loss.backward()
        telemetry = {sid: s.capture_gradient_telemetry() for sid, s in g.seed_slots.items()}
        opt.step()
    for sid, s in g.seed_slots.items():
        s.materialize_gradient_telemetry(telemetry[sid])


@pytest.mark.parametrize("name", ["resnet", "gpt2"])
def test_a_whole_lifecycle_with_telemetry_against_the_users_parameters(name):
    events = []
    base, points, inputs, out = graft_case(name)
    model = base.train()
    g = kf.graft(model, points[-2:], example_input=inputs, gates=PERMISSIVE, on_telemetry=events.append)
    grow, cull = points[-1], points[-2]
    blueprint = "conv_light" if name == "resnet" else "mlp"
    g.germinate_seed(blueprint, slot=grow)
    g.germinate_seed("norm", slot=cull)
    host_count = sum(p.numel() for p in model.parameters())
    assert g.seed_slots[grow].isolation_monitor.host_param_count == host_count
    acc = 50.0
    seen = []
    while g.seed_slots[grow].stage != S.PROBATIONARY:
        _train(g, model, inputs, out)
        ratio = g.seed_slots[grow].state.metrics.seed_gradient_norm_ratio
        if g.seed_slots[grow].stage == S.TRAINING:
            assert ratio is not None and ratio > 0, ratio  # G2's ratio, from the user's parameters' gradients
        seen.append(g.seed_slots[grow].stage)
        acc += 1.0
        for s in g.seed_slots.values():
            if s.state is not None:
                s.state.metrics.record_accuracy(acc)
        g.step_epoch()
        assert len(seen) < 20, seen
    assert {S.GERMINATED, S.TRAINING, S.BLENDING} <= set(seen)
    g.seed_slots[grow].state.metrics.counterfactual_contribution = 2.0
    assert g.advance_stage(S.FOSSILIZED, slot=grow).passed
    assert g.cull_seed(slot=cull)
    for _ in range(8):
        g.step_epoch()
    assert g.seed_slots[cull].stage == S.DORMANT and g.seed_slots[cull].state is None
    assert g.seed_slots[grow].stage == S.FOSSILIZED
    kinds = {e.event_type.name for e in events}
    assert {"SEED_GERMINATED", "SEED_STAGE_CHANGED", "SEED_FOSSILIZED", "SEED_CULLED"} <= kinds
    _train(g, model, inputs, out, steps=1)  # still trains


@pytest.mark.parametrize("name", CASES)
def test_weights_only_checkpoint_mid_lifecycle(name):
    g, _, inputs, out = grafted(name, gates=PERMISSIVE)
    point = g.slot_ids[-1]
    g.germinate_seed("norm", slot=point)
    g.step_epoch()  # TRAINING
    g.seed_slots[point].state.metrics.seed_gradient_norm_ratio = 0.2
    g.seed_slots[point].state.metrics.record_accuracy(50.0)
    g.step_epoch()  # BLENDING
    g.step_epoch()  # alpha ramps
    assert g.seed_slots[point].stage == S.BLENDING and 0 < float(g.seed_slots[point].alpha) < 1
    for p in g.seed_parameters():
        nn.init.normal_(p, std=0.3)
    buf = io.BytesIO()
    torch.save(g.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    fresh, *_ = grafted(name, gates=PERMISSIVE)  # the same architecture, other weights in the seeds
    fresh.load_state_dict(sd)
    assert fresh.seed_slots[point].stage == S.BLENDING
    assert torch.equal(out(call(fresh, inputs)), out(call(g, inputs)))
    g.step_epoch()
    fresh.step_epoch()
    assert float(fresh.seed_slots[point].alpha) == float(g.seed_slots[point].alpha)


def _graph_breaks(fn, inputs) -> int:
    torch._dynamo.reset()
    explained = (
        torch._dynamo.explain(fn)(**inputs) if isinstance(inputs, dict) else torch._dynamo.explain(fn)(inputs)
    )
    return explained.graph_break_count


@pytest.mark.parametrize("name", CASES)
def test_compile_adds_no_graph_break_and_no_recompile_during_the_ramp(name):
    from torch._dynamo.testing import CompileCounterWithBackend

    base, points, inputs, out = graft_case(name)
    bare_breaks = _graph_breaks(copy.deepcopy(base), inputs)
    g = kf.graft(base, points, example_input=inputs, gates=PERMISSIVE)
    point = points[-1]
    assert _graph_breaks(g, inputs) == bare_breaks  # empty slots
    g.germinate_seed("mlp" if name == "gpt2" else "conv_light", slot=point)
    g.step_epoch()
    g.seed_slots[point].state.metrics.seed_gradient_norm_ratio = 0.2
    g.seed_slots[point].state.metrics.record_accuracy(50.0)
    g.step_epoch()
    assert g.seed_slots[point].stage == S.BLENDING
    assert _graph_breaks(g, inputs) == bare_breaks  # a seed in BLENDING
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(g, backend=counter, fullgraph=bare_breaks == 0)
    frames = []
    alphas = []
    for _ in range(g.task_config.blending_steps):  # the ramp: alpha 1/5 ... 1
        g.step_epoch()
        g.seed_slots[point].state.metrics.record_accuracy(50.0)
        alphas.append(float(g.seed_slots[point].alpha))
        got = out(call(compiled, inputs))
        torch.testing.assert_close(got, out(call(g, inputs)))
        frames.append(counter.frame_count)
    assert alphas[-1] == 1.0 and len(set(alphas)) == len(alphas), alphas
    assert len(set(frames)) == 1, frames


def test_forward_to_and_from_segment_on_a_sequential_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)),
        nn.Conv2d(4, 2, 1),
    )
    x = torch.randn(2, 1, 6, 6)
    g = kf.graft(model, ["0", "1.1", "2"], example_input=x, gates=PERMISSIVE)
    g.germinate_seed("norm", slot="1.1")
    g.advance_stage(S.TRAINING, slot="1.1")
    nn.init.normal_(g.seed_slots["1.1"].seed.scale)
    host = g.host
    with g.seed_slots["1.1"].force_alpha(0.7), torch.no_grad():
        y = g(x)
        for seg in ["0", "1.1"]:
            h = host.forward_to_segment(seg, x)
            assert torch.equal(host.forward_from_segment(seg, h), y), seg
        h0 = host.forward_to_segment("0", x)
        assert torch.equal(
            host.forward_to_segment("1.1", h0, from_segment="0"), host.forward_to_segment("1.1", x)
        )
    with pytest.raises(ValueError, match="does not run after"):
        host.forward_to_segment("0", h0, from_segment="1.1")


def test_forward_from_segment_says_why_it_cannot_split_a_python_forward():
    g, _, inputs, _ = grafted("resnet")
    h = g.host.forward_to_segment("resnet.encoder.stages.0", inputs)  # runs up to the point, then stops
    assert h.shape[1] == 8 and h.ndim == 4
    with pytest.raises(
        NotImplementedError, match=r"ResNetForImageClassification on its path is not a plain nn\.Sequential"
    ):
        g.host.forward_from_segment("resnet.encoder.stages.0", h)


def _blending(g, point):
    g.germinate_seed("norm", slot=point)
    g.step_epoch()
    m = g.seed_slots[point].state.metrics
    m.seed_gradient_norm_ratio = 0.2
    m.record_accuracy(50.0)
    g.step_epoch()
    g.step_epoch()
    for p in g.seed_parameters():
        nn.init.normal_(p, std=0.3)


def test_a_deep_copy_is_a_separate_grown_model():
    """The copy's hooks call the copy's slots (never the original's)."""
    g, model, inputs, out = grafted("unet", gates=PERMISSIVE)
    _blending(g, "dec")
    before = out(call(g, inputs))
    twin = copy.deepcopy(g)
    assert torch.equal(out(call(twin, inputs)), before)
    with torch.no_grad():
        for p in twin.seed_parameters():
            p.add_(1.0)
    assert not torch.equal(out(call(twin, inputs)), before)
    assert torch.equal(out(call(g, inputs)), before)
    assert torch.equal(out(call(model, inputs)), before)  # the user's model object runs its slots too


def test_distributed_checkpoint_of_a_grafted_model(tmp_path):
    from kasmina_fast import checkpoint

    g, _, inputs, out = grafted("gpt2", gates=PERMISSIVE)
    point = g.slot_ids[-1]
    _blending(g, point)
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)
    out(call(g, inputs)).square().mean().backward()
    opt.step()
    checkpoint.save(g, opt, str(tmp_path / "ckpt"))
    fresh, *_ = grafted("gpt2", gates=PERMISSIVE)
    checkpoint.load(fresh, str(tmp_path / "ckpt"), lambda m: torch.optim.Adam(m.parameters(), lr=1e-3))
    assert fresh.seed_slots[point].stage == S.BLENDING
    assert torch.equal(out(call(fresh, inputs)), out(call(g, inputs)))


def test_a_model_output_point_transforms_its_first_field_eager_and_compiled():
    """GPT2Model returns a ModelOutput: the slot transforms last_hidden_state."""
    base, _, inputs, out = graft_case("gpt2")
    bare = out(call(base, inputs))
    g = kf.graft(base, ["transformer"], example_input=inputs)
    assert g.host.injection_points == {"transformer": 32}
    g.germinate_seed("norm", slot="transformer")
    g.advance_stage(S.TRAINING, slot="transformer")
    slot = g.seed_slots["transformer"]
    for p in slot.seed.parameters():
        nn.init.normal_(p)
    assert torch.equal(out(call(g, inputs)), bare)
    with slot.force_alpha(1.0), torch.no_grad():
        got = out(call(g, inputs))
        h = base.transformer(**inputs).last_hidden_state  # (the hook has run: this is the slot's output)
        assert torch.equal(got, base.lm_head(h))
        assert not torch.equal(got, bare)
        torch._dynamo.reset()
        compiled = torch.compile(g, fullgraph=True, backend="eager")
        assert torch.equal(out(call(compiled, inputs)), got)
