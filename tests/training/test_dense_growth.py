"""A dense model (an MLP on scikit-learn's digits, features ``[B, C]``) grown with
``Grower`` to FOSSILIZED; every stage of each epoch in its reports; a checkpoint that
keeps the Grower's state (and warns when it is loaded without one, while a
single-process save or load says nothing about process groups); merged at the end."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import kasmina_fast as kf
from kasmina_fast import checkpoint

sklearn = pytest.importorskip("sklearn", reason="scikit-learn (in .ci/requirements.txt) ships the data set")
from sklearn.datasets import load_digits  # noqa: E402

S = kf.SeedStage
GATES = kf.QualityGates(min_training_improvement=-1e9, min_blending_epochs=1, min_seed_gradient_ratio=0.0)


def _data():
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _run(epochs: int):
    torch.manual_seed(0)
    xtr, ytr, xva, yva = _data()
    net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    tc = kf.TaskConfig("dense", blending_steps=2)
    model = kf.graft(net, ["1"], example_input=xtr[:2], task_config=tc, gates=GATES)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            score = -100 * F.cross_entropy(model(xva), yva).item()
        model.train()
        return score

    policy = kf.HeuristicPolicy(germinate_at=1, max_germinations=1)
    grower = kf.Grower(model, opt, evaluate=evaluate, policy=policy)
    reports = []
    for _ in range(epochs):
        for idx in torch.randperm(1400).split(100):
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            grower.after_backward()
            opt.step()
            opt.zero_grad()
        reports.append(grower.end_epoch())
    return model, opt, grower, reports, xva


def test_a_dense_model_grows_to_fossilized_and_merges(tmp_path):
    model, opt, grower, reports, xva = _run(6)
    assert model.host.topologies == {"1": "dense"}
    slot = model.seed_slots["1"]
    assert slot.stage == S.FOSSILIZED and slot.state.blueprint_id == "mlp"
    transitions = [r.transitions.get("1") for r in reports]
    assert ("DORMANT", "GERMINATED", "TRAINING") in transitions  # every stage of the epoch, in order
    assert any(t is not None and t[-1] == "FOSSILIZED" for t in transitions)
    assert reports[-1].metric > reports[0].metric

    # a checkpoint with the Grower's state, without a word about process groups
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        checkpoint.save(model, opt, tmp_path / "ckpt", grower=grower)
    assert not [w for w in seen if "torch.distributed" in str(w.message)], [str(w.message) for w in seen]
    fresh, _, fresh_grower, _, _ = _run(0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        restored = checkpoint.load(
            fresh, tmp_path / "ckpt", lambda m: torch.optim.Adam(m.parameters()), grower=fresh_grower
        )
    assert not [w for w in seen if "torch.distributed" in str(w.message)], [str(w.message) for w in seen]
    assert fresh_grower.epoch == grower.epoch == 6 and fresh_grower.optimizer is restored.optimizer
    assert fresh_grower.policy.state_dict() == grower.policy.state_dict()
    assert fresh.seed_slots["1"].stage == S.FOSSILIZED
    with pytest.warns(UserWarning, match="no grower= was passed"):
        checkpoint.load(_run(0)[0], tmp_path / "ckpt", lambda m: torch.optim.Adam(m.parameters()))

    model.eval()
    with torch.no_grad():
        want = model(xva)
    merged = model.merge_and_unload()
    assert type(merged) is torch.nn.Sequential
    with torch.no_grad():
        torch.testing.assert_close(merged(xva), want, rtol=1e-5, atol=1e-5)


def test_the_checkpointer_keeps_the_policys_memory(tmp_path):
    """Without the Grower's state, a resumed policy forgets its germination and grows a
    second seed; with ``grower=`` it makes the uninterrupted run's decisions."""
    model, opt, grower, _, _ = _run(3)
    ckpt = checkpoint.Checkpointer(tmp_path)
    ckpt.save(3, model, opt, grower=grower)
    fresh, _, fresh_grower, _, _ = _run(0)
    restored = ckpt.load(fresh, lambda m: torch.optim.Adam(m.parameters()), grower=fresh_grower)
    assert restored.optimizer is fresh_grower.optimizer
    assert fresh_grower.policy.germinations == 1 and fresh_grower.epoch == 3
