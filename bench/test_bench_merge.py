"""What merging buys at inference: the eval forward (no grad) of a grown model whose
seeds are FOSSILIZED, against the same model after ``merge_and_unload()``, same run.

A ``CNNHost`` (3 blocks, 32 base channels, batch 32 at 32x32) with a fossilized
``conv_light`` seed after ``early`` and ``mid``; ``lerp`` seeds (the grown model runs
``kasmina.blend`` at alpha 1, the merged one returns the seed's output), ``valve``
seeds, plain or gated (the grown model runs the fused ``kasmina.valve``, the merged
one its plain-torch expression: 3 or 4 elementwise passes). Target: merged no slower
than grown.

    pytest bench/test_bench_merge.py --benchmark-group-by=group
    python -m bench.test_bench_merge     (interleaved, round by round)
"""

from __future__ import annotations

import pytest
import torch

import kasmina_fast as kf
from bench.workloads import interleaved
from kasmina_fast.cli.cases import sync

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH = 128 if DEVICE == "cuda" else 32
SLOTS = ("early", "mid")
JOINS = {"lerp": ("linear", "lerp"), "valve": ("linear", "valve"), "gated-valve": ("gated", "valve")}


def fossilized(join: str) -> tuple[kf.MorphogeneticModel, torch.Tensor]:
    """The grown model (eval) with a fossilized seed in every slot, and its input."""
    algorithm, mode = JOINS[join]
    torch.manual_seed(0)
    model = kf.MorphogeneticModel(kf.CNNHost(num_classes=10, base_channels=32), DEVICE, slots=SLOTS)
    for sid in SLOTS:
        model.germinate_seed("conv_light", slot=sid, blend_algorithm_id=algorithm, blend_mode=mode)
        slot = model.seed_slots[sid]
        model.advance_stage(kf.SeedStage.TRAINING, slot=sid)
        for acc in range(50, 70):
            if slot.stage == kf.SeedStage.PROBATIONARY:
                break
            slot.state.metrics.seed_gradient_norm_ratio = 1.0
            slot.state.metrics.gradient_measurements += 1
            slot.state.metrics.record_accuracy(acc)
            slot.state.metrics.counterfactual_contribution = 2.0
            slot.step_epoch()
        assert model.advance_stage(kf.SeedStage.FOSSILIZED, slot=sid).passed
        with torch.no_grad():  # a trained seed, not the identity it was born as
            for p in slot.seed_parameters():
                p.add_(0.05 * torch.randn_like(p))
    return model.eval(), torch.randn(BATCH, 3, 32, 32, device=DEVICE)


def make_forward(join: str, merged: bool):
    model, x = fossilized(join)
    net = model.merge_and_unload() if merged else model

    def forward():
        with torch.no_grad():
            net(x)
        sync(DEVICE)

    return forward


VARIANTS = [(join, merged) for join in JOINS for merged in (False, True)]


@pytest.mark.parametrize(("join", "merged"), VARIANTS)
def test_merged_forward(benchmark, join, merged):
    forward = make_forward(join, merged)
    benchmark.group = f"merge-eval-forward-{join}-b{BATCH}-{DEVICE}"
    benchmark.extra_info.update(variant="merged" if merged else "grown", device=DEVICE)
    benchmark.pedantic(forward, rounds=40 if DEVICE == "cpu" else 100, iterations=1, warmup_rounds=5)


if __name__ == "__main__":  # python -m bench.test_bench_merge
    for join in JOINS:
        med = interleaved(
            {"grown": make_forward(join, False), "merged": make_forward(join, True)},
            rounds=80,
            per_round=3,
            warmup=5,
        )
        ratio = med["merged"] / med["grown"]
        grown, merged = med["grown"], med["merged"]
        print(f"{join:<12} grown {grown:7.3f} ms  merged {merged:7.3f} ms  merged/grown {ratio:.3f}")
