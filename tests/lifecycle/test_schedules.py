"""Alpha schedules: endpoints, monotone ramps, gated shapes, the catalog."""

from __future__ import annotations

import itertools

import pytest
import torch

from kasmina_fast import BLEND_ALGORITHMS, GatedBlend, LinearBlend, SigmoidBlend, create_blend_algorithm


@pytest.mark.parametrize("schedule", [LinearBlend(), SigmoidBlend(), SigmoidBlend(3.0), GatedBlend(4)])
def test_ramp_endpoints_and_monotone(schedule):
    ts = [i / 20 for i in range(21)]
    values = [schedule.ramp(t) for t in ts]
    assert values[0] == pytest.approx(0.0, abs=1e-12) and values[-1] == pytest.approx(1.0, abs=1e-12)
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert schedule.ramp(-1) == pytest.approx(0.0, abs=1e-12) and schedule.ramp(2) == pytest.approx(1.0)


def test_gated_blend_shapes_and_start_open():
    cnn = GatedBlend(6, "cnn")
    g = cnn.per_sample(torch.randn(5, 6, 4, 4))
    assert g.shape == (5, 1, 1, 1) and (g > 0.99).all() and g.requires_grad
    tr = GatedBlend(8, "transformer").per_sample(torch.randn(3, 7, 8))
    assert tr.shape == (3, 1, 1)


def test_catalog_and_unknown_id():
    assert set(BLEND_ALGORITHMS) == {"linear", "sigmoid", "cosine", "gated"}
    assert isinstance(create_blend_algorithm("gated", 4, "cnn"), GatedBlend)
    with pytest.raises(
        ValueError, match="unknown blend algorithm 'exp'; available: cosine, gated, linear, sigmoid"
    ):
        create_blend_algorithm("exp", 4, "cnn")
    with pytest.raises(ValueError, match="steepness"):
        SigmoidBlend(0)
    with pytest.raises(ValueError, match="steepness"):
        SigmoidBlend(float("inf"))
