"""End-to-end training step of a grown network: CNNHost + one seed in BLENDING
with a gated (learnable per-sample) blend + gradient telemetry every step,
fast ops vs the eager reference ops (and the bare host), eager and under
torch.compile, same run.

    pytest bench/test_bench_step.py --benchmark-group-by=group

The slot's overhead is (step with slot) - (bare host step).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kasmina_fast as kf
from kasmina_fast.cli.cases import selected, sync

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH = 128 if DEVICE == "cuda" else 32


def grown_model():
    torch.manual_seed(0)
    model = kf.MorphogeneticModel(kf.CNNHost(base_channels=32), DEVICE, slots=["mid"])
    model.germinate_seed("conv_light", slot="mid", blend_algorithm_id="gated")
    model.advance_stage(kf.SeedStage.TRAINING, slot="mid")
    slot = model.seed_slots["mid"]
    for acc in (50, 51, 52):  # through TRAINING into BLENDING
        slot.state.metrics.seed_gradient_norm_ratio = 1.0
        slot.state.metrics.record_accuracy(acc)
        model.step_epoch()
    slot.state.metrics.record_accuracy(53)
    model.step_epoch()  # one ramp step: 0 < alpha < 1
    assert slot.stage == kf.SeedStage.BLENDING and 0 < float(slot.alpha) < 1
    return model


@pytest.mark.parametrize("variant", ["bare-host", "reference", "fast", "reference-compiled", "fast-compiled"])
def test_training_step(benchmark, variant):
    """``*-compiled``: the model under ``torch.compile`` (default mode), traced under
    that backend -- the fused ops inside a model's graph rather than alone."""
    model = grown_model()
    slot = model.seed_slots["mid"]
    if variant == "bare-host":
        model.host.unregister_slot("mid")
    backend = "reference" if variant.startswith("reference") else "auto"
    net = torch.compile(model) if variant.endswith("compiled") else model
    x = torch.randn(BATCH, 3, 32, 32, device=DEVICE)
    y = torch.randint(0, 10, (BATCH,), device=DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    benchmark.group = f"train-step-cnn-b{BATCH}-{DEVICE}"
    benchmark.extra_info.update(backend=variant, device=DEVICE)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        if variant != "bare-host":
            slot.materialize_gradient_telemetry(slot.capture_gradient_telemetry())
        opt.step()
        sync(DEVICE)

    with selected(backend):
        benchmark.pedantic(step, rounds=30 if DEVICE == "cpu" else 100, iterations=1, warmup_rounds=3)
