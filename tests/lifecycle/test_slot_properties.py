"""Hypothesis over random call sequences: the slot never makes a transition
outside the diagram, and every error is a documented one."""

from __future__ import annotations

import itertools

import hypothesis.strategies as st
import torch
from hypothesis import HealthCheck, given, settings

from kasmina_fast import SeedShapeError, SeedStage, is_valid_transition
from tests.utils import make_slot

S = SeedStage

ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("germinate"), st.sampled_from(["norm", "noop", "attention", "lora", "nope"])),
        st.tuples(st.just("epoch"), st.floats(0, 100), st.one_of(st.none(), st.floats(-5, 5))),
        st.tuples(st.just("advance"), st.sampled_from(list(S))),
        st.tuples(st.just("cull"), st.just("r")),
        st.tuples(st.just("forward"), st.one_of(st.none(), st.floats(-1, 2))),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=ACTIONS)
def test_random_call_sequences(actions):
    events = []
    slot = make_slot(events=events, embargo_epochs=2)
    x = torch.randn(2, 8, 4, 4)
    for action in actions:
        kind = action[0]
        if kind == "germinate":
            try:
                slot.germinate(action[1])
            except RuntimeError as e:  # slot busy or embargoed
                assert slot.state is not None and ("already holds" in str(e) or "culled" in str(e))
            except ValueError as e:  # unknown blueprint
                assert action[1] in ("nope", "lora") and "unknown blueprint" in str(e)
                assert not isinstance(e, SeedShapeError)
        elif kind == "epoch":
            if slot.state is not None:
                slot.state.metrics.seed_gradient_norm_ratio = 0.5
                slot.state.metrics.record_accuracy(action[1])
                if action[2] is not None:
                    slot.state.metrics.counterfactual_contribution = action[2]
            slot.step_epoch()
        elif kind == "advance":
            before = slot.stage
            result = slot.advance_stage(action[1])
            assert result.passed == (
                slot.stage == action[1] != before or (result.passed and before == action[1])
            )
        elif kind == "cull":
            before = slot.stage
            done = slot.cull(action[1])
            assert done == (before in (S.GERMINATED, S.TRAINING, S.BLENDING, S.PROBATIONARY))
        else:
            out = slot(x, override_alpha=action[1])
            assert out.shape == x.shape and torch.isfinite(out).all()
    changes = [  # a germination is announced by SEED_GERMINATED alone: DORMANT -> GERMINATED
        (S[e.data["from"]], S[e.data["to"]])
        if e.event_type.value == "SEED_STAGE_CHANGED"
        else (S.DORMANT, S.GERMINATED)
        for e in events
        if e.event_type.value in ("SEED_STAGE_CHANGED", "SEED_GERMINATED")
    ]
    for a, b in changes:
        assert is_valid_transition(a, b), (a, b)
    for (_, b), (a2, _) in itertools.pairwise(changes):
        assert b == a2, "stage changes chain"
