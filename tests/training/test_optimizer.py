"""sync_optimizer: new seeds join the optimizer in a group copying the host's, culled
ones leave it with their state, and a new group follows the lr schedule from where
it is (checked against a run whose optimizer had that group from the start)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim import lr_scheduler as L

import kasmina_fast as kf
from kasmina_fast import SeedStage as S

STEPS, JOIN = 24, 7

OPTIMIZERS = {
    "sgd": lambda params, **kw: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4, **kw),
    "adam": lambda params, **kw: torch.optim.Adam(params, lr=0.01, betas=(0.8, 0.95), **kw),
    "adamw": lambda params, **kw: torch.optim.AdamW(params, lr=0.01, weight_decay=0.05, **kw),
    "adamw-foreach": lambda params, **kw: torch.optim.AdamW(params, lr=0.01, foreach=True, **kw),
    "adam-fused": lambda params, **kw: torch.optim.Adam(params, lr=0.01, fused=True, **kw),
}


def _warmup_cosine(step: int) -> float:  # what Hugging Face's get_cosine_schedule_with_warmup is
    return step / 4 if step < 4 else 0.5 * (1 + math.cos(math.pi * (step - 4) / (STEPS - 4)))


SCHEDULERS = {
    "lambda": lambda opt: L.LambdaLR(opt, _warmup_cosine),
    "linear": lambda opt: L.LinearLR(opt, start_factor=0.2, total_iters=10),
    "cosine": lambda opt: L.CosineAnnealingLR(opt, T_max=STEPS),
    "cosine-eta-min": lambda opt: L.CosineAnnealingLR(opt, T_max=STEPS, eta_min=1e-3),
    "onecycle": lambda opt: L.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS + 1),
    "sequential": lambda opt: L.SequentialLR(
        opt,
        [L.LinearLR(opt, start_factor=0.1, total_iters=5), L.CosineAnnealingLR(opt, T_max=STEPS)],
        milestones=[5],
    ),
    "step": lambda opt: L.StepLR(opt, step_size=5, gamma=0.5),
}


def _model() -> kf.MorphogeneticModel:
    torch.manual_seed(0)
    return kf.MorphogeneticModel(kf.CNNHost(num_classes=4, base_channels=4, n_blocks=3), slots=["mid"])


def _momentum(group: dict) -> float | None:
    return group["betas"][0] if "betas" in group else group.get("momentum")


def _lrs(opt_name: str, sched_name: str, join: int | None, scale: float = 1.0):
    """(host group lr, seed group lr) after every step; the seed group joins at
    step ``join`` through sync_optimizer, or (None) exists from the start."""
    model = _model()
    host = list(model.parameters())
    model.germinate_seed("norm", slot="mid")
    seed = model.seed_parameters()
    make = OPTIMIZERS[opt_name]
    if join is None:
        opt = make(host)
        opt.add_param_group({"params": seed, "lr": opt.param_groups[0]["lr"] * scale})
    else:
        opt = make(host)
    sched = SCHEDULERS[sched_name](opt)
    if join is None and sched_name == "onecycle" and scale != 1.0:
        pytest.skip("OneCycleLR sets every group's max_lr itself")
    out = []
    for step in range(STEPS):
        if step == join:
            kw = {} if scale == 1.0 else {"lr": opt.param_groups[0]["initial_lr"] * scale}
            assert kf.sync_optimizer(opt, model, sched, **kw)
            assert not kf.sync_optimizer(opt, model, sched)  # nothing more to do
        opt.step()
        sched.step()
        groups = opt.param_groups
        out.append(
            (
                groups[0]["lr"],
                groups[1]["lr"] if len(groups) > 1 else None,
                _momentum(groups[0]),
                _momentum(groups[1]) if len(groups) > 1 else None,
            )
        )
    return out


@pytest.mark.parametrize("sched_name", SCHEDULERS)
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_new_group_follows_the_schedule(opt_name, sched_name):
    want = _lrs(opt_name, sched_name, join=None)
    got = _lrs(opt_name, sched_name, join=JOIN)
    for step in range(JOIN, STEPS):
        assert got[step][0] == pytest.approx(want[step][0], rel=1e-12), step
        assert got[step][1] == pytest.approx(want[step][1], rel=1e-9, abs=1e-15), step
        assert got[step][1] == pytest.approx(got[step][0], rel=1e-9, abs=1e-15)  # scale 1: the host's lr
        assert got[step][3] == pytest.approx(got[step][2])  # a OneCycleLR's momentum cycle too


@pytest.mark.parametrize("sched_name", ["lambda", "linear", "cosine", "onecycle", "sequential", "step"])
def test_lr_override_scales_the_schedule(sched_name):
    got = _lrs("sgd", sched_name, join=JOIN, scale=3.0)
    for step in range(JOIN, STEPS):
        assert got[step][1] == pytest.approx(3.0 * got[step][0], rel=1e-9, abs=1e-15), step


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_groups_and_state_through_germinate_cull_germinate(opt_name):
    model = _model()
    opt = OPTIMIZERS[opt_name](model.parameters())
    host_hyper = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    host_state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in model.host_parameters()}
    model.germinate_seed("conv_light", slot="mid")
    model.advance_stage(S.TRAINING, slot="mid")
    assert kf.sync_optimizer(opt, model)
    assert len(opt.param_groups) == 2
    new = opt.param_groups[1]
    assert {id(p) for p in new["params"]} == {id(p) for p in model.seed_parameters()}
    assert {k: v for k, v in new.items() if k != "params"} == host_hyper  # lr, betas, decay, foreach/fused
    for p in model.host_parameters():  # nothing else in the state changed
        for k, v in opt.state[p].items():
            assert torch.equal(v, host_state[id(p)][k])
    before = [p.detach().clone() for p in model.seed_parameters()]
    step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.seed_parameters()))  # the seed trains
    culled = model.seed_parameters()
    assert all(p in opt.state for p in culled)
    model.cull_seed(slot="mid")
    assert kf.sync_optimizer(opt, model)
    assert len(opt.param_groups) == 1 and all(p not in opt.state for p in culled)
    for _ in range(7):  # embargo, then the slot is free again
        model.step_epoch()
    model.germinate_seed("conv_light", slot="mid")
    assert kf.sync_optimizer(opt, model)
    assert len(opt.param_groups) == 2
    step()


def test_group_options_and_host_group_choice():
    model = _model()
    host = model.host_parameters()
    decay = [p for p in host if p.ndim > 1]
    no_decay = [p for p in host if p.ndim <= 1]
    # the Hugging Face layout: the first group holding host parameters is copied
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    )
    model.germinate_seed("norm", slot="mid")
    kf.sync_optimizer(opt, model, weight_decay=0.0, eps=1e-6)
    assert opt.param_groups[2]["weight_decay"] == 0.0 and opt.param_groups[2]["eps"] == 1e-6
    with pytest.raises(ValueError, match="params"):
        kf.sync_optimizer(opt, model, params=[])


def test_unsupported_scheduler_named_and_nothing_changed():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = L.ExponentialLR(opt, gamma=0.9)
    model.germinate_seed("norm", slot="mid")
    with pytest.raises(TypeError, match="ExponentialLR"):
        kf.sync_optimizer(opt, model, sched)
    assert len(opt.param_groups) == 1
    seq = L.SequentialLR(opt, [L.LinearLR(opt), L.ExponentialLR(opt, 0.9)], milestones=[2])
    with pytest.raises(TypeError, match="ExponentialLR"):
        kf.sync_optimizer(opt, model, seq)


def test_wrapped_models_and_bad_input():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    holder = torch.nn.Sequential(model)  # e.g. a LightningModule holding the grown model
    model.germinate_seed("norm", slot="mid")
    assert kf.sync_optimizer(opt, holder)
    with pytest.raises(TypeError, match="MorphogeneticModel"):
        kf.sync_optimizer(opt, torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="Optimizer"):
        kf.sync_optimizer(object(), model)
