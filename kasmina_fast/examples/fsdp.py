"""A MorphogeneticModel sharded with FSDP2 while seeds germinate, blend, fossilize
and get culled, checkpointed with torch.distributed.checkpoint.

    torchrun --nproc-per-node 2 -m kasmina_fast.examples.fsdp [--checkpoint DIR]
    torchrun --nproc-per-node 2 -m kasmina_fast.examples.fsdp --checkpoint-dir DIR [--resume]

(gloo on the CPU, NCCL on GPUs.) The pattern:

1. ``fully_shard`` the host's blocks and the whole model once. Every seed and
   gated-blend gate that a slot creates later is sharded the same way, on the
   host's device mesh, from rank 0's initial weights
   (``kasmina_fast.hosts.plane.shard_like_host``; pass ``shard_module=`` to
   ``MorphogeneticModel`` to shard them your way).
2. Every rank makes the same architecture change at the same step, and every gate
   decision is agreed by the slots themselves. When
   ``model.architecture_version`` changes, build the optimizer again.
3. The gradient telemetry sees FSDP2's sharded gradients (DTensors) and returns the
   global numbers on every rank, with one all-reduce.
4. ``kasmina_fast.checkpoint.save`` / ``load`` write and read the model, the
   optimizer and the lifecycle state with DCP; a checkpoint loads into any
   number of ranks. With ``--checkpoint-dir`` a ``Checkpointer`` saves after every
   epoch, atomically; a killed job continues with ``--resume`` (the same command
   plus the flag) from the newest complete one, as if never stopped.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from kasmina_fast import MorphogeneticModel, QualityGates, SeedStage, TaskConfig, TransformerHost, checkpoint

VOCAB, T = 64, 16


def build(device: torch.device) -> MorphogeneticModel:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    host = TransformerHost(vocab_size=VOCAB, n_embd=32, n_head=4, n_layer=3, block_size=T)
    gates = QualityGates(min_blending_epochs=1, min_seed_gradient_ratio=1e-6)
    tc = TaskConfig(topology="transformer", blending_steps=3)
    model = MorphogeneticModel(host, device, slots=["mid", "late"], task_config=tc, gates=gates)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for stage in model.host.stages:
        fully_shard(stage, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=3e-3)


def train(
    epochs: int, checkpoint_dir: str | None, steps_dir: str | None = None, resume: bool = False
) -> list[str]:
    """``steps_dir``: a checkpoint after every epoch (``step-N`` folders, the newest two
    kept); ``resume``: continue from the newest complete one there."""
    rank, world = dist.get_rank(), dist.get_world_size()
    device = (
        torch.device("cuda", rank % torch.cuda.device_count())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    model = build(device)
    ckpt = checkpoint.Checkpointer(steps_dir, keep=2) if steps_dir is not None else None
    opt, version, log, start = None, None, [], 0
    if resume:
        if ckpt is None or ckpt.latest() is None:
            raise SystemExit("fsdp example: --resume needs --checkpoint-dir with a complete checkpoint")
        restored = ckpt.load(model, _adamw)  # the seeds, the optimizer, the RNG states, the epoch
        opt, version, start = restored.optimizer, model.architecture_version, restored.extra["epoch"]
        if rank == 0:
            print(f"resumed from epoch {start}", flush=True)
    for epoch in range(start, epochs):
        if epoch == 1:  # the controller's decisions: the same on every rank
            model.germinate_seed("lora", slot="mid", blend_algorithm_id="gated")
            model.germinate_seed("mlp", slot="late")
        if epoch == 3:
            model.cull_seed(slot="late", reason="controller")
        if model.architecture_version != version:
            opt, version = _adamw(model), model.architecture_version
        gen = torch.Generator().manual_seed(1000 + epoch)  # the epoch's global batches, on every rank
        for _ in range(4):
            idx = torch.randint(0, VOCAB, (8 * world, T + 1), generator=gen).chunk(world)[rank].to(device)
            loss = F.cross_entropy(model(idx[:, :-1]).reshape(-1, VOCAB), idx[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            telemetry = {sid: s.capture_gradient_telemetry() for sid, s in model.seed_slots.items()}
            opt.step()
        shown = loss.detach().clone()
        dist.all_reduce(shown)
        for sid, slot in model.seed_slots.items():
            slot.materialize_gradient_telemetry(telemetry[sid])
            if slot.state is not None:  # a stand-in for validation accuracy: the same on every rank
                slot.state.metrics.record_accuracy(100.0 - 10.0 * shown.item() / world)
                slot.state.metrics.counterfactual_contribution = 2.0
        model.step_epoch()
        if model.seed_slots["mid"].stage == SeedStage.PROBATIONARY:
            model.advance_stage(SeedStage.FOSSILIZED, slot="mid")
        log.append(",".join(s.stage.name for s in model.seed_slots.values()))
        if rank == 0:
            print(f"epoch {epoch}: loss {shown.item() / world:.6f}  {log[-1]}", flush=True)
        if ckpt is not None:
            ckpt.save(epoch + 1, model, opt, extra={"epoch": epoch + 1})
            if rank == 0:
                print(f"saved epoch {epoch}", flush=True)
    if checkpoint_dir is not None:
        checkpoint.save(model, opt, checkpoint_dir)
    return log


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--checkpoint", metavar="DIR", help="save a DCP checkpoint there at the end")
    ap.add_argument("--checkpoint-dir", metavar="DIR", help="a checkpoint after every epoch (step-N folders)")
    ap.add_argument("--resume", action="store_true", help="continue from the newest one in --checkpoint-dir")
    args = ap.parse_args(argv)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)  # torchrun sets RANK, WORLD_SIZE and the rendezvous
    try:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        sys.stdout.write(f"rank {dist.get_rank()} pid {os.getpid()}\n")  # one write, read by the kill test
        sys.stdout.flush()
        train(args.epochs, args.checkpoint, args.checkpoint_dir, args.resume)
        # the FSDP model is freed now, not at exit after the group is gone (a gloo
        # thread left joinable then aborts the process); then no rank tears the
        # group down while another still talks
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
