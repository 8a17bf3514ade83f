"""Counterfactuals in one forward or in K: ``MorphogeneticModel.counterfactual_forward``
with K = 1 + number of slots settings (as trained, then each slot's alpha at 0)
against K separate eval passes with ``force_alpha``. A ``CNNHost`` (width 32, 3
blocks), three slots in BLENDING, batches of 3x16x16, eval mode, no grad.

Floor: the same arithmetic either way (K x B samples); the batched form saves
K - 1 rounds of per-call host work (it pays while the host work dominates: small
batches), but runs the host's kernels on K times the activations (on a CPU, past
its caches: measured slower at batch 64, bench/RESULTS.md).

    pytest bench/test_bench_counterfactual.py --benchmark-group-by=group
    python -m bench.test_bench_counterfactual     (the two interleaved)
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import kasmina_fast as kf
from bench.workloads import interleaved

BATCHES = (8, 64)
SLOTS = ["early", "mid", "late"]


def make(variant: str, batch: int = 8):
    torch.manual_seed(0)
    gates = kf.QualityGates(min_training_improvement=-1e9, min_blending_epochs=1, min_seed_gradient_ratio=0.0)
    host = kf.CNNHost(num_classes=10, base_channels=32, n_blocks=3)
    model = kf.MorphogeneticModel(host, slots=SLOTS, gates=gates)
    for sid in SLOTS:
        model.germinate_seed("conv_light", slot=sid)
        model.advance_stage(kf.SeedStage.TRAINING, slot=sid)
    for _ in range(3):
        for s in model.seed_slots.values():
            s.state.metrics.record_accuracy(50.0)
        model.step_epoch()
    assert all(s.stage == kf.SeedStage.BLENDING for s in model.seed_slots.values())
    model.eval()
    x = torch.randn(batch, 3, 16, 16)
    configs = [{}] + [{sid: 0.0} for sid in SLOTS]

    @torch.no_grad()
    def batched():
        model.counterfactual_forward(x, configs)

    @torch.no_grad()
    def separate():
        for config in configs:
            with contextlib.ExitStack() as stack:
                for sid, alpha in config.items():
                    stack.enter_context(model.seed_slots[sid].force_alpha(alpha))
                model(x)

    return batched if variant == "batched" else separate


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("variant", ["separate", "batched"])
def test_counterfactual_passes(benchmark, variant, batch):
    fn = make(variant, batch)
    benchmark.group = f"counterfactual-cnnhost-k{1 + len(SLOTS)}-b{batch}-cpu"
    benchmark.extra_info.update(variant=variant)
    benchmark.pedantic(fn, rounds=20, iterations=1, warmup_rounds=2)


if __name__ == "__main__":  # python -m bench.test_bench_counterfactual
    for batch in BATCHES:
        med = interleaved({v: make(v, batch) for v in ("separate", "batched")}, rounds=40, warmup=3)
        for v, ms in med.items():
            print(f"batch {batch:>3}  {v:<9} {ms:8.3f} ms for {1 + len(SLOTS)} settings")
        print(f"batch {batch:>3}  separate / batched: {med['separate'] / med['batched']:.2f}x")
