"""torch.compile(fullgraph=True) of a SeedSlot over a whole lifecycle: no graph
break in any stage, no recompile while alpha ramps, and the total number of
compiles counted (and bounded: at most one per stage change or germination)."""

from __future__ import annotations

import torch
from torch._dynamo.testing import CompileCounterWithBackend

from kasmina_fast import SeedStage
from tests.utils import epoch, features, make_slot

S = SeedStage


def test_whole_lifecycle_compiles_once_per_stage():
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    slot = make_slot()
    compiled = torch.compile(slot, backend=counter, fullgraph=True)
    x = features(requires_grad=True)

    def step():
        """Compiled and eager agree in value and in the host's gradient (a stale
        graph from an earlier stage would not)."""
        x.grad = None
        out = compiled(x)
        out.square().sum().backward()
        got = x.grad.clone()
        x.grad = None
        eager = slot(x)
        eager.square().sum().backward()
        torch.testing.assert_close(out, eager)
        torch.testing.assert_close(got, x.grad)

    log = []
    step()  # empty slot
    log.append(("DORMANT", counter.frame_count))
    slot.germinate("norm")
    torch.nn.init.normal_(slot.seed.scale)  # the seed must change the features to tell stages apart
    acc = 50.0
    while slot.stage != S.PROBATIONARY:
        step()
        log.append((slot.stage.name, counter.frame_count))
        acc += 1.0
        epoch(slot, acc)
    ramp = [frames for stage, frames in log if stage == "BLENDING"]
    assert len(ramp) == 5 and len(set(ramp)) == 1, f"alpha ramp recompiled: {log}"
    frames = dict(log)
    assert log[1][0] == "GERMINATED" and frames["GERMINATED"] <= frames["DORMANT"] + 1, log
    step()
    with torch.no_grad():  # the counterfactual evaluation
        compiled(x, override_alpha=0.0)
    epoch(slot, acc, counterfactual=2.0)
    assert slot.advance_stage(S.FOSSILIZED).passed
    step()
    log.append(("FOSSILIZED", counter.frame_count))
    slot.cull("no-op: fossilized")
    step()
    # DORMANT, GERMINATED (the host's forward: at most one more), TRAINING, BLENDING,
    # PROBATIONARY, FOSSILIZED, and the override
    stage_changes = 6
    assert counter.frame_count <= stage_changes + 1, log
    print(f"compiles over a whole lifecycle: {counter.frame_count} ({log})")


def test_each_stage_of_a_gated_transformer_slot_compiles_fullgraph():
    torch._dynamo.reset()
    slot = make_slot("transformer", channels=16)
    slot.germinate("attention", blend_algorithm_id="gated")
    x = features("transformer", channels=16, requires_grad=True)
    acc = 50.0
    for _ in range(10):
        compiled = torch.compile(slot, backend="aot_eager", fullgraph=True)
        torch.nn.init.normal_(slot.seed.proj.weight)
        out = compiled(x)
        torch.testing.assert_close(out, slot(x))
        out.sum().backward()
        acc += 1.0
        epoch(slot, acc)
    assert slot.stage == S.PROBATIONARY
