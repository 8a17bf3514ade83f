"""What grafting costs: a training step (forward, loss, backward, SGD) of a small
Hugging Face ``ResNetForImageClassification``, same run:

- ``bare``: the user's model as it is;
- ``grafted-empty``: ``kasmina_fast.graft`` with empty slots after the stem and both
  stages (three forward hooks, each calling an empty ``SeedSlot``). Target: <= 1.02x bare;
- ``hand-written-seed``: a ``conv_light`` seed written into the model by hand after
  stage 1 (``torch.lerp(h, seed(h.detach()), alpha)``, a 0-d alpha: what a CNN slot
  computes in BLENDING);
- ``grafted-blending``: the same seed grafted there, in BLENDING. Target: <= 1.1x
  hand-written.

    pytest bench/test_bench_graft.py --benchmark-group-by=group
    python -m bench.test_bench_graft     (the variants interleaved, round by round)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kasmina_fast as kf
from bench.workloads import interleaved
from kasmina_fast.cli import hf
from kasmina_fast.cli.cases import sync

pytest.importorskip("transformers", reason="the hf extra is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH = 128 if DEVICE == "cuda" else 32
POINTS = ["resnet.embedder", "resnet.encoder.stages.0", "resnet.encoder.stages.1"]
SEED_AT = "resnet.encoder.stages.1"


class HandWrittenSlot(nn.Module):
    """A stage followed by a seed blended in by hand."""

    def __init__(self, stage: nn.Module, seed: nn.Module, alpha: float) -> None:
        super().__init__()
        self.stage = stage
        self.seed = seed
        self.register_buffer("alpha", torch.tensor(alpha))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stage(x)
        return torch.lerp(h, self.seed(h.detach()), self.alpha)


def blending(model: kf.MorphogeneticModel) -> kf.SeedSlot:
    """The seed at ``SEED_AT`` through TRAINING into BLENDING, one ramp step in."""
    model.germinate_seed("conv_light", slot=SEED_AT)
    model.advance_stage(kf.SeedStage.TRAINING, slot=SEED_AT)
    slot = model.seed_slots[SEED_AT]
    for acc in (50, 51, 52):
        slot.state.metrics.seed_gradient_norm_ratio = 1.0
        slot.state.metrics.record_accuracy(acc)
        model.step_epoch()
    slot.state.metrics.record_accuracy(53)
    model.step_epoch()
    assert slot.stage == kf.SeedStage.BLENDING and 0 < float(slot.alpha) < 1, slot.stage
    return slot


VARIANTS = ("bare", "grafted-empty", "hand-written-seed", "grafted-blending")


def make_step(variant: str):
    """The training step of ``variant`` (built from the same initial weights)."""
    torch.manual_seed(0)
    model = hf.resnet(num_classes=10, in_channels=3, widths=(32, 64)).to(DEVICE)
    x = torch.randn(BATCH, 3, 32, 32, device=DEVICE)
    y = torch.randint(0, 10, (BATCH,), device=DEVICE)
    net: nn.Module = model
    if variant.startswith("grafted"):
        net = kf.graft(model, POINTS, example_input=x[:2])
        if variant == "grafted-blending":
            blending(net)
    elif variant == "hand-written-seed":
        stages = model.resnet.encoder.stages
        seed = kf.BlueprintRegistry.create("cnn", "conv_light", 64).to(DEVICE)
        stages[1] = HandWrittenSlot(stages[1], seed, alpha=1 / 3).to(DEVICE)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(pixel_values=x).logits, y).backward()
        opt.step()
        sync(DEVICE)

    return step


@pytest.mark.parametrize("variant", VARIANTS)
def test_graft_step(benchmark, variant):
    step = make_step(variant)
    benchmark.group = f"graft-hf-resnet-b{BATCH}-{DEVICE}"
    benchmark.extra_info.update(variant=variant, device=DEVICE)
    benchmark.pedantic(step, rounds=40 if DEVICE == "cpu" else 100, iterations=1, warmup_rounds=5)


if __name__ == "__main__":  # python -m bench.test_bench_graft
    med = interleaved({v: make_step(v) for v in VARIANTS}, rounds=60, per_round=3, warmup=5)
    for v, ms in med.items():
        print(f"{v:<20} {ms:8.3f} ms")
    print(f"grafted-empty / bare:                 {med['grafted-empty'] / med['bare']:.3f} (target <= 1.02)")
    print(
        f"grafted-blending / hand-written-seed: {med['grafted-blending'] / med['hand-written-seed']:.3f} "
        "(target <= 1.1)"
    )
