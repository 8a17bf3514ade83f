"""What ``Grower`` costs against the same growth protocol written by hand: one epoch
(12 training steps of a ``CNNHost`` with two slots, a seed in TRAINING whose
gradient telemetry is captured every step, and the end of the epoch: the one sync,
validation, ``record_accuracy``, ``step_epoch``, the optimizer kept in sync).
Target: ``grower`` <= 1.01x ``hand-written``.

Floor: the Grower's own work is one Python call per step (a counter and a loop
over the slots, a few microseconds) and a few dict operations per epoch, against
steps of milliseconds: below what this machine resolves.

    pytest bench/test_bench_grower.py --benchmark-group-by=group
    python -m bench.test_bench_grower     (the two interleaved, round by round)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kasmina_fast as kf
from bench.workloads import interleaved
from kasmina_fast.cli.cases import sync

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH, STEPS = 32, 12
#: the seed stays in TRAINING (G2 never passes): every epoch does the same work
STRICT = kf.QualityGates(min_training_improvement=1e9)
VARIANTS = ("hand-written", "grower")


def make_epoch(variant: str):
    """One epoch of ``variant`` (the same model, data and work either way)."""
    torch.manual_seed(0)
    host = kf.CNNHost(num_classes=10, base_channels=32, n_blocks=3)
    model = kf.MorphogeneticModel(host, DEVICE, slots=["mid", "late"], gates=STRICT)
    model.germinate_seed("conv_light", slot="mid")
    model.advance_stage(kf.SeedStage.TRAINING, slot="mid")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    x = torch.randn(BATCH, 3, 16, 16, device=DEVICE)
    y = torch.randint(0, 10, (BATCH,), device=DEVICE)

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        acc = (model(x).argmax(1) == y).float().mean().item() * 100
        model.train()
        return acc

    def train(after_backward) -> None:
        for _ in range(STEPS):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            after_backward()
            opt.step()
            sched.step()

    if variant == "grower":
        grower = kf.Grower(model, opt, evaluate=evaluate, lr_scheduler=sched, policy=lambda *a: None)

        def epoch() -> None:
            train(grower.after_backward)
            grower.end_epoch()
            sync(DEVICE)

        return epoch

    slots = model.seed_slots
    telemetry: dict = {}

    def capture() -> None:
        for sid, slot in slots.items():
            if slot.seed is not None:
                telemetry[sid] = slot.capture_gradient_telemetry()

    def epoch() -> None:
        train(capture)
        for sid, stats in telemetry.items():
            slots[sid].materialize_gradient_telemetry(stats)
        telemetry.clear()
        metric = evaluate()
        cfs = {}
        for sid, slot in slots.items():
            if slot.stage in (kf.SeedStage.BLENDING, kf.SeedStage.PROBATIONARY):
                with slot.force_alpha(0.0):
                    cfs[sid] = metric - evaluate()
        for sid, slot in slots.items():
            if slot.state is not None:
                slot.state.metrics.record_accuracy(metric)
                slot.state.metrics.counterfactual_contribution = cfs.get(sid)
        model.step_epoch()
        kf.sync_optimizer(opt, model, sched)
        sync(DEVICE)

    return epoch


@pytest.mark.parametrize("variant", VARIANTS)
def test_grower_epoch(benchmark, variant):
    epoch = make_epoch(variant)
    benchmark.group = f"grower-cnnhost-b{BATCH}-{STEPS}steps-{DEVICE}"
    benchmark.extra_info.update(variant=variant, device=DEVICE)
    benchmark.pedantic(epoch, rounds=20 if DEVICE == "cpu" else 50, iterations=1, warmup_rounds=2)


if __name__ == "__main__":  # python -m bench.test_bench_grower
    med = interleaved({v: make_epoch(v) for v in VARIANTS}, rounds=60)
    for v, ms in med.items():
        print(f"{v:<14} {ms:8.3f} ms per epoch ({ms / STEPS:.3f} ms per step)")
    print(f"grower / hand-written: {med['grower'] / med['hand-written']:.4f} (target <= 1.01)")
