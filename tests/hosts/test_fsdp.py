"""Seeds in an FSDP2-sharded model, with 2 gloo processes on the CPU: the same model,
data and global batch give the same losses and final parameters sharded and in one
process, through germinate -> TRAINING -> BLENDING (a gated blend, whose gate is
sharded too) -> FOSSILIZED in one slot and a cull in another."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import kasmina_fast as kf

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="needs torch.distributed")

WORLD, EPOCHS, STEPS, BATCH, T = 2, 8, 2, 8, 8


def _model():
    torch.manual_seed(0)
    host = kf.TransformerHost(vocab_size=32, n_embd=16, n_head=2, n_layer=3, block_size=T)
    gates = kf.QualityGates(min_blending_epochs=1, min_training_improvement=0.5, min_seed_gradient_ratio=1e-6)
    tc = kf.TaskConfig(topology="transformer", blending_steps=2)
    return kf.MorphogeneticModel(host, slots=["mid", "late"], task_config=tc, gates=gates)


def _train(rank: int, sharded: bool) -> tuple[list[float], list[str], dict[str, torch.Tensor]]:
    """The whole run; ``sharded``: this rank's half of every global batch."""
    model = _model()
    if sharded:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (WORLD,))
        for stage in model.host.stages:
            fully_shard(stage, mesh=mesh)
        fully_shard(model, mesh=mesh)
    gen = torch.Generator().manual_seed(1)
    version, opt = None, None
    losses, stages = [], []
    for epoch in range(EPOCHS):
        if epoch == 1:
            model.germinate_seed("lora", slot="mid", blend_algorithm_id="gated")
            model.germinate_seed("mlp", slot="late")
        if epoch == 3:
            model.cull_seed(slot="late", reason="controller")
            late = model.seed_slots["late"]
            assert late.seed is None and not list(late.parameters())  # its shards are gone
        if model.architecture_version != version:
            opt, version = torch.optim.SGD(model.parameters(), lr=0.1), model.architecture_version
        for _ in range(STEPS):
            idx = torch.randint(0, 32, (BATCH, T + 1), generator=gen)
            if sharded:
                idx = idx.chunk(WORLD)[rank]
            logits = model(idx[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, 32), idx[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            telemetry = {sid: s.capture_gradient_telemetry() for sid, s in model.seed_slots.items()}
            opt.step()
            shown = loss.detach().clone()
            if sharded:
                dist.all_reduce(shown)
                shown /= WORLD
            losses.append(shown.item())
        for sid, slot in model.seed_slots.items():
            slot.materialize_gradient_telemetry(telemetry[sid])
            if slot.state is not None:
                slot.state.metrics.record_accuracy(50.0 + 2 * epoch)  # the same on every rank and run
                slot.state.metrics.counterfactual_contribution = 2.0
        model.step_epoch()
        if model.seed_slots["mid"].stage == kf.SeedStage.PROBATIONARY:
            assert model.advance_stage(kf.SeedStage.FOSSILIZED, slot="mid").passed
        stages.append(",".join(s.stage.name for s in model.seed_slots.values()))
    params = {}
    for name, p in model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        params[name] = full.detach().clone()
    return losses, stages, params


def _worker(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        losses, stages, params = _train(rank, sharded=True)
        if rank == 0:
            torch.save({"losses": losses, "stages": stages, "params": params}, out)
    finally:
        dist.destroy_process_group()


def test_sharded_lifecycle_equals_one_process(tmp_path):
    out = str(tmp_path / "sharded.pt")
    mp.spawn(_worker, args=(f"file://{tmp_path / 'init'}", out), nprocs=WORLD, join=True)
    sharded = torch.load(out)
    losses, stages, params = _train(0, sharded=False)
    assert stages == sharded["stages"], json.dumps([stages, sharded["stages"]])
    assert "FOSSILIZED" in stages[-1].split(",")[0] and any("EMBARGOED" in s for s in stages), stages
    torch.testing.assert_close(torch.tensor(sharded["losses"]), torch.tensor(losses), rtol=1e-4, atol=1e-5)
    assert sharded["params"].keys() == params.keys()
    for name, p in params.items():
        torch.testing.assert_close(sharded["params"][name], p, rtol=1e-4, atol=1e-5, msg=name)
