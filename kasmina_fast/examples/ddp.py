"""DistributedDataParallel around a MorphogeneticModel, while seeds germinate,
blend, fossilize and get culled.

    python -m kasmina_fast.examples.ddp --world-size 2      (gloo, CPU)
    python -m kasmina_fast.examples.ddp --host graft        (a plain nn.Module, grafted)
    python -m kasmina_fast.examples.ddp --checkpoint-dir DIR [--resume]   (a killed job continues)

The pattern:

1. Every rank makes the same architecture change at the same step:
   ``germinate_seed`` / ``cull_seed`` are called by the controller on all
   ranks, and every gate decision inside ``step_epoch`` / ``advance_stage``
   is agreed by a MIN all-reduce (unanimous), so ranks cannot diverge.
2. :class:`kasmina_fast.Grower` runs the growth protocol: its ``end_epoch``
   averages the metric over the ranks (so the policy decides the same
   everywhere) and keeps the optimizer in step (``sync_optimizer``). When
   ``architecture_version`` changes (parameters appeared or disappeared),
   wrap the model in ``DistributedDataParallel`` again: building DDP
   broadcasts rank 0's parameters and buffers, so a new seed starts identical
   on every rank.
3. Use ``find_unused_parameters=True``: a slot's gate is unused once the seed
   is fossilized, and a culled seed's parameters leave the model.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kasmina_fast import CNNHost, Grower, MorphogeneticModel, QualityGates, SeedStage, TaskConfig, graft
from kasmina_fast.checkpoint import Checkpointer


def _batch(gen: torch.Generator, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable toy task: the class is the brightest of 4 image quadrants."""
    x = torch.randn(n, 3, 16, 16, generator=gen)
    y = torch.randint(0, 4, (n,), generator=gen)
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, :, r * 8 : r * 8 + 8, q * 8 : q * 8 + 8] += 1.5
    return x, y


def user_model() -> nn.Module:
    """A network as anyone writes it, with no slot in it: ``graft`` adds them."""

    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
        )

    return nn.Sequential(
        block(3, 8), block(8, 16), block(16, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)
    )


def run(
    rank: int,
    world: int,
    init_file: str,
    epochs: int,
    out_dir: str | None,
    permissive: bool,
    host: str = "cnn",
    checkpoint_dir: str | None = None,
    resume: bool = False,
) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # the DDP wrappers live in _train and are freed when it returns, while the process
        # group is still registered (a wrapper freed after destroy_process_group takes the
        # group down with it, from a destructor that can wait on a gloo thread for the GIL)
        _train(rank, epochs, out_dir, permissive, host, checkpoint_dir, resume)
        gc.collect()  # (and any reference cycle holding one)
        dist.barrier()  # no rank tears the group down while another still talks
    finally:
        dist.destroy_process_group()


def _train(
    rank: int,
    epochs: int,
    out_dir: str | None,
    permissive: bool,
    host: str,
    checkpoint_dir: str | None,
    resume: bool,
) -> None:
    torch.manual_seed(0)
    gates = QualityGates(min_training_improvement=-100.0, min_seed_gradient_ratio=0.0) if permissive else None
    task = TaskConfig(topology="cnn", max_epochs=epochs, blending_steps=3)
    if host == "graft":  # the slots after the second and the third block of the user's model
        example = _batch(torch.Generator().manual_seed(0), 2)[0]
        model = graft(user_model(), ["1", "2"], example_input=example, task_config=task, gates=gates)
    else:
        model = MorphogeneticModel(
            CNNHost(num_classes=4, base_channels=8), slots=["mid", "late"], task_config=task, gates=gates
        )
    mid, late = model.slot_ids

    def policy(model, epoch, metric):  # the controller: the same decisions on every rank
        if epoch == 0:
            model.germinate_seed("conv_light", slot=mid)
            model.germinate_seed("norm", slot=late)
        if epoch == 2:
            model.cull_seed(slot=late, reason="controller")
        if model.seed_slots[mid].stage == SeedStage.PROBATIONARY:
            model.advance_stage(SeedStage.FOSSILIZED, slot=mid)

    x_val, y_val = _batch(torch.Generator().manual_seed(7 + rank), 64)

    @torch.no_grad()
    def evaluate() -> float:  # differs per rank: the Grower averages it over the ranks
        model.eval()
        acc = (model(x_val).argmax(1) == y_val).float().mean().item() * 100
        model.train()
        # permissive (the test): a stand-in for a seed that helps, 5 points while it is on
        return acc + (5.0 if permissive and not model.seed_slots[mid].alpha_is_forced else 0.0)

    def make_optimizer(m: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)

    ckpt = Checkpointer(checkpoint_dir, keep=2) if checkpoint_dir is not None else None
    start, restored = 0, None
    if resume:  # the seeds, the optimizer (and the seeds' own groups), every rank's RNG
        restored = ckpt.load(model, make_optimizer)
        start = restored.extra["epoch"]
    opt = restored.optimizer if restored is not None else make_optimizer(model)
    grower = Grower(model, opt, evaluate=evaluate, policy=policy)  # new seeds join opt, culled leave
    if restored is not None:
        grower.load_state_dict(restored.extra["grower"])
    ddp = DistributedDataParallel(model, find_unused_parameters=True)  # broadcasts rank 0's state
    version = model.architecture_version
    log: list[str] = []
    sys.stdout.write(f"rank {rank} pid {os.getpid()}\n")  # one write, read by the kill test
    sys.stdout.flush()
    for epoch in range(start, epochs):
        gen = torch.Generator().manual_seed(1000 * (epoch + 1) + rank)  # every rank its own data
        for _ in range(3):
            x, y = _batch(gen)
            loss = F.cross_entropy(ddp(x), y)
            opt.zero_grad()
            loss.backward()  # DDP averages gradients across ranks
            grower.after_backward()  # gradient telemetry, no sync
            opt.step()
        before = ",".join(s.stage.name for s in model.seed_slots.values())
        report = grower.end_epoch()  # gate decisions agreed, the policy, the optimizer synced
        if report.architecture_version != version:  # parameters appeared or left: wrap again
            ddp = DistributedDataParallel(model, find_unused_parameters=True)
            version = report.architecture_version
        log.append(before + " > " + ",".join(s.stage.name for s in model.seed_slots.values()))
        if rank == 0:
            print(f"epoch {epoch}: loss {loss.item():.6f}  {log[-1]}", flush=True)
        if ckpt is not None:
            ckpt.save(epoch + 1, model, opt, extra={"epoch": epoch + 1, "grower": grower.state_dict()})
            if rank == 0:
                print(f"saved epoch {epoch}", flush=True)
    if out_dir is not None:
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        torch.save(flat, Path(out_dir) / f"params{rank}.pt")
        (Path(out_dir) / f"log{rank}.json").write_text(json.dumps(log))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--host", choices=("cnn", "graft"), default="cnn", help="CNNHost, or a grafted nn.Module")
    ap.add_argument("--checkpoint-dir", metavar="DIR", help="a checkpoint after every epoch (step-N folders)")
    ap.add_argument("--resume", action="store_true", help="continue from the newest one in --checkpoint-dir")
    args = ap.parse_args(argv)
    if args.resume and (args.checkpoint_dir is None or Checkpointer(args.checkpoint_dir).latest() is None):
        raise SystemExit("ddp example: --resume needs --checkpoint-dir with a complete checkpoint")
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(
            run,
            args=(
                args.world_size,
                str(Path(d) / "init"),
                args.epochs,
                None,
                False,
                args.host,
                args.checkpoint_dir,
                args.resume,
            ),
            nprocs=args.world_size,
        )


if __name__ == "__main__":
    main()
