"""Seeds in an FSDP2-sharded model (TransformerHost, and a grafted Hugging Face GPT-2),
with 2 gloo processes on the CPU: the same model,
data and global batch give the same losses and final parameters sharded and in one
process, through germinate -> TRAINING -> BLENDING (a gated blend, whose gate is
sharded too) -> FOSSILIZED in one slot and a cull in another."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import kasmina_fast as kf
from tests.utils import end_worker

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="needs torch.distributed")

WORLD, EPOCHS, STEPS, BATCH, T = 2, 8, 2, 8, 8


def _model(kind: str = "builtin"):
    """``builtin``: TransformerHost, slots mid and late; ``graft``: a Hugging Face GPT-2
    grafted after its second and third block."""
    torch.manual_seed(0)
    gates = kf.QualityGates(min_blending_epochs=1, min_training_improvement=0.5, min_seed_gradient_ratio=1e-6)
    tc = kf.TaskConfig(topology="transformer", blending_steps=2)
    if kind == "graft":
        from kasmina_fast.cli import hf

        gpt = hf.gpt2(vocab_size=32, block_size=T, n_embd=16, n_layer=3, n_head=2)
        example = torch.zeros(2, T, dtype=torch.long)
        return kf.graft(
            gpt, ["transformer.h.1", "transformer.h.2"], example_input=example, task_config=tc, gates=gates
        )
    host = kf.TransformerHost(vocab_size=32, n_embd=16, n_head=2, n_layer=3, block_size=T)
    return kf.MorphogeneticModel(host, slots=["mid", "late"], task_config=tc, gates=gates)


def _logits(out):
    return out if isinstance(out, torch.Tensor) else out.logits


def _train(rank: int, sharded: bool, kind: str) -> tuple[list[float], list[str], dict[str, torch.Tensor]]:
    """The whole run; ``sharded``: this rank's half of every global batch."""
    model = _sharded(_model(kind)) if sharded else _model(kind)
    mid, late = model.slot_ids
    gen = torch.Generator().manual_seed(1)
    version, opt = None, None
    losses, stages = [], []
    for epoch in range(EPOCHS):
        if epoch == 1:
            model.germinate_seed("lora", slot=mid, blend_algorithm_id="gated")
            model.germinate_seed("mlp", slot=late)
        if epoch == 3:
            model.cull_seed(slot=late, reason="controller")
            culled = model.seed_slots[late]
            assert culled.seed is None and not list(culled.parameters())  # its shards are gone
        if model.architecture_version != version:
            opt, version = torch.optim.SGD(model.parameters(), lr=0.1), model.architecture_version
        for _ in range(STEPS):
            idx = torch.randint(0, 32, (BATCH, T + 1), generator=gen)
            if sharded:
                idx = idx.chunk(WORLD)[rank]
            logits = _logits(model(idx[:, :-1]))
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
        if model.seed_slots[mid].stage == kf.SeedStage.PROBATIONARY:
            assert model.advance_stage(kf.SeedStage.FOSSILIZED, slot=mid).passed
        stages.append(",".join(s.stage.name for s in model.seed_slots.values()))
    params = {}
    for name, p in model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        params[name] = full.detach().clone()
    return losses, stages, params


def _worker(rank: int, init: str, out: str, kind: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        losses, stages, params = _train(rank, sharded=True, kind=kind)
        if rank == 0:
            torch.save({"losses": losses, "stages": stages, "params": params}, out)
        end_worker()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["builtin", "graft"])
def test_sharded_lifecycle_equals_one_process(tmp_path, kind):
    if kind == "graft":
        pytest.importorskip("transformers", reason="the hf extra (in .ci/requirements.txt) is not installed")
    out = str(tmp_path / "sharded.pt")
    mp.spawn(_worker, args=(f"file://{tmp_path / 'init'}", out, kind), nprocs=WORLD, join=True)
    sharded = torch.load(out)
    losses, stages, params = _train(0, sharded=False, kind=kind)
    assert stages == sharded["stages"], json.dumps([stages, sharded["stages"]])
    assert "FOSSILIZED" in stages[-1].split(",")[0] and any("EMBARGOED" in s for s in stages), stages
    torch.testing.assert_close(torch.tensor(sharded["losses"]), torch.tensor(losses), rtol=1e-4, atol=1e-5)
    assert sharded["params"].keys() == params.keys()
    for name, p in params.items():
        torch.testing.assert_close(sharded["params"][name], p, rtol=1e-4, atol=1e-5, msg=name)


def _batch(seed: int):
    return torch.randint(0, 32, (BATCH, T + 1), generator=torch.Generator().manual_seed(seed))


def _step_loss(model, opt, idx, rank: int, sharded: bool, after_backward=None) -> float:
    if sharded:
        idx = idx.chunk(WORLD)[rank]
    loss = F.cross_entropy(_logits(model(idx[:, :-1])).reshape(-1, 32), idx[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    if after_backward is not None:
        after_backward()
    opt.step()
    shown = loss.detach().clone()
    if sharded:
        dist.all_reduce(shown)
        shown /= WORLD
    return shown.item()


def _next_losses(model, opt, rank: int, sharded: bool) -> list[float]:
    """The losses of the next two steps: the second follows the first Adam step, so it
    depends on the optimizer state as well as on the weights."""
    return [_step_loss(model, opt, _batch(11 + i), rank, sharded) for i in range(2)]


def _close(got: list[float], want: list[float]) -> None:
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-6)


def _adam(model):
    return torch.optim.Adam(model.parameters(), lr=1e-2)


def _sharded(model):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    blocks = model.host.model.transformer.h if isinstance(model.host, kf.ModuleHost) else model.host.stages
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _to_mid_blending(rank: int, sharded: bool):
    """A model in BLENDING (gated: a sharded gate) after a few Adam steps."""
    model = _model()
    if sharded:
        _sharded(model)
    model.germinate_seed("lora", slot="mid", blend_algorithm_id="gated")
    model.advance_stage(kf.SeedStage.TRAINING, slot="mid")
    opt, version = _adam(model), model.architecture_version
    for epoch in range(3):  # TRAINING, BLENDING (G2 at the 2nd epoch), one ramp step
        if model.architecture_version != version:
            opt, version = _adam(model), model.architecture_version
        _step_loss(model, opt, _batch(epoch), rank, sharded)
        slot = model.seed_slots["mid"]
        slot.state.metrics.seed_gradient_norm_ratio = 1.0
        slot.state.metrics.record_accuracy(50.0 + 2 * epoch)
        model.step_epoch()
    if model.architecture_version != version:
        opt = _adam(model)
    assert model.seed_slots["mid"].stage == kf.SeedStage.BLENDING
    _step_loss(model, opt, _batch(10), rank, sharded)  # the gate has weights and Adam state
    return model, opt


def _ckpt_worker(rank: int, init: str, ckpt: str, out: str, load: bool) -> None:
    """Mid-BLENDING on 2 ranks, saved to ``ckpt`` (or, ``load``, read back from it);
    rank 0 keeps the next ramp step's alpha and the next two losses in ``out``."""
    from kasmina_fast import checkpoint

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        if load:
            model = _sharded(_model())
            opt = checkpoint.load(model, ckpt, _adam).optimizer
        else:
            model, opt = _to_mid_blending(rank, sharded=True)
            checkpoint.save(model, opt, ckpt)
        model.step_epoch()  # the ramp moves on after the save, the same in every run
        loss = _next_losses(model, opt, rank, sharded=True)
        if rank == 0:
            torch.save({"loss": loss, "alpha": float(model.seed_slots["mid"].alpha)}, out)
        del model, opt
        end_worker()
    finally:
        dist.destroy_process_group()


def _spawned(tmp_path, name: str, ckpt: str, load: bool) -> dict:
    """``_ckpt_worker`` on 2 ranks; what its rank 0 kept."""
    out = tmp_path / f"{name}.pt"
    args = (f"file://{tmp_path / name}.init", ckpt, str(out), load)
    mp.spawn(_ckpt_worker, args=args, nprocs=WORLD, join=True)
    return torch.load(out)


def test_distributed_checkpoint_reshards_mid_blending(tmp_path):
    """Saved at 2 ranks mid-BLENDING, loaded at 1 and at 2: the next two losses are the
    uninterrupted run's (the second one after an Adam step: the optimizer state counts);
    saved at 1, loaded at 2: the same."""
    from kasmina_fast import checkpoint

    ckpt = str(tmp_path / "ckpt2")
    want = _spawned(tmp_path, "save2", ckpt, load=False)
    # 2 -> 1
    model = _model()
    opt = checkpoint.load(model, ckpt, _adam).optimizer
    assert model.seed_slots["mid"].stage == kf.SeedStage.BLENDING
    model.step_epoch()
    assert float(model.seed_slots["mid"].alpha) == want["alpha"]
    _close(_next_losses(model, opt, 0, sharded=False), want["loss"])
    # 2 -> 2
    got = _spawned(tmp_path, "load2", ckpt, load=True)
    assert got["alpha"] == want["alpha"]
    _close(got["loss"], want["loss"])
    # 1 -> 2
    ckpt1 = str(tmp_path / "ckpt1")
    model, opt = _to_mid_blending(0, sharded=False)
    checkpoint.save(model, opt, ckpt1)
    model.step_epoch()
    _close(_spawned(tmp_path, "load1", ckpt1, load=True)["loss"], _next_losses(model, opt, 0, sharded=False))


def test_fsdp_example_runs_under_torchrun_and_its_checkpoint_loads_in_one_process(tmp_path):
    import subprocess
    import sys

    from kasmina_fast import checkpoint
    from kasmina_fast.examples import fsdp

    ckpt = str(tmp_path / "ckpt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "kasmina_fast.examples.fsdp", "--epochs", "6", "--checkpoint", ckpt]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 6 and "FOSSILIZED" in lines[-1] and "EMBARGOED" in proc.stdout, proc.stdout
    host = kf.TransformerHost(vocab_size=fsdp.VOCAB, n_embd=32, n_head=4, n_layer=3, block_size=fsdp.T)
    model = kf.MorphogeneticModel(
        host, slots=["mid", "late"], task_config=kf.TaskConfig(topology="transformer")
    )
    checkpoint.load(model, ckpt, lambda m: torch.optim.AdamW(m.parameters()))
    assert model.seed_slots["mid"].stage == kf.SeedStage.FOSSILIZED
    assert model(torch.randint(0, fsdp.VOCAB, (2, fsdp.T))).shape == (2, fsdp.T, fsdp.VOCAB)


def _grower_train(rank: int, sharded: bool) -> tuple[list[float], list[str], list[list[str]]]:
    """Growth run by ``Grower`` on a learnable sequence task: its own optimizer surgery
    (no rebuild), the metric averaged over the ranks, the policy's decisions."""
    model = _sharded(_model()) if sharded else _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    val = (torch.arange(BATCH)[:, None] * 3 + torch.arange(T + 1)) % 32  # next token = this + 1

    @torch.no_grad()
    def evaluate() -> float:  # -100 x validation loss: each rank its half, Grower averages
        idx = val.chunk(WORLD)[rank] if sharded else val
        return (
            -100.0
            * F.cross_entropy(_logits(model(idx[:, :-1])).reshape(-1, 32), idx[:, 1:].reshape(-1)).item()
        )

    policy = kf.HeuristicPolicy(
        "lora", slots=["mid"], germinate_at=0, blend_algorithm_id="gated", fossilize_at=0.0
    )
    grower = kf.Grower(model, opt, evaluate=evaluate, policy=policy)
    gen = torch.Generator().manual_seed(1)
    losses, stages, decisions = [], [], []
    for _ in range(EPOCHS):
        for _ in range(STEPS):
            start = torch.randint(0, 32, (BATCH, 1), generator=gen)
            idx = (start + torch.arange(T + 1)) % 32
            losses.append(_step_loss(model, opt, idx, rank, sharded, grower.after_backward))
        report = grower.end_epoch()
        decisions.append(report.decisions)
        stages.append(",".join(s.stage.name for s in model.seed_slots.values()))
    return losses, stages, decisions


def _grower_worker(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        result = _grower_train(rank, sharded=True)
        gathered = [None] * WORLD
        dist.all_gather_object(gathered, list(result[1:]))
        if rank == 0:
            torch.save({"losses": result[0], "per_rank": gathered}, out)
        end_worker()
    finally:
        dist.destroy_process_group()


def test_grower_on_fsdp2_decides_alike_on_every_rank(tmp_path):
    """The same stages and policy decisions on both ranks, and as in one process."""
    out = str(tmp_path / "grower.pt")
    mp.spawn(_grower_worker, args=(f"file://{tmp_path / 'init'}", out), nprocs=WORLD, join=True)
    sharded = torch.load(out)
    assert sharded["per_rank"][0] == sharded["per_rank"][1]
    losses, stages, decisions = _grower_train(0, sharded=False)
    assert [stages, decisions] == sharded["per_rank"][0], json.dumps([stages, sharded["per_rank"][0]])
    assert decisions[0] == ["germinate lora in mid"] and any("BLENDING" in s for s in stages), stages
    torch.testing.assert_close(torch.tensor(sharded["losses"]), torch.tensor(losses), rtol=1e-4, atol=1e-5)


def _fsdp_example(*args: str):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "kasmina_fast.examples.fsdp", "--epochs", "7", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _epochs(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("epoch ")]


def _final_params(ckpt: str) -> dict[str, torch.Tensor]:
    from kasmina_fast import checkpoint
    from kasmina_fast.examples import fsdp

    host = kf.TransformerHost(vocab_size=fsdp.VOCAB, n_embd=32, n_head=4, n_layer=3, block_size=fsdp.T)
    model = kf.MorphogeneticModel(
        host, slots=["mid", "late"], task_config=kf.TaskConfig(topology="transformer")
    )
    checkpoint.load(model, ckpt, lambda m: torch.optim.AdamW(m.parameters()))
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", ["epoch 2:", "saved epoch 4"], ids=["during-a-save", "between-saves"])
def test_fsdp_example_killed_rank_resumes_exactly(tmp_path, kill_after):
    """2 FSDP2 ranks saving after every epoch; one rank SIGKILLed (during a save: right
    after epoch 2 is reported, while its checkpoint is written; or between saves,
    while epoch 5 trains). The same command with --resume continues from the newest
    complete checkpoint: the next losses, stages and final weights equal the run that
    was never interrupted."""
    import os
    import signal

    full = _fsdp_example(
        "--checkpoint-dir", str(tmp_path / "full"), "--checkpoint", str(tmp_path / "full.final")
    )
    out, _ = full.communicate(timeout=300)
    assert full.returncode == 0, out[-3000:]
    want = _epochs(out)
    assert len(want) == 7 and "FOSSILIZED" in want[-1], out

    steps, seen = str(tmp_path / "killed"), []
    job = _fsdp_example("--checkpoint-dir", steps)
    pids = {}
    for line in job.stdout:
        seen.append(line)
        for rank, pid in re.findall(r"rank (\d+) pid (\d+)", line):
            pids[int(rank)] = int(pid)
        if line.startswith(kill_after):
            os.kill(pids[1], signal.SIGKILL)
            break
    rest, _ = job.communicate(timeout=120)
    assert job.returncode != 0, "".join(seen) + rest  # the job died with its rank

    resumed = _fsdp_example(
        "--checkpoint-dir", steps, "--resume", "--checkpoint", str(tmp_path / "resumed.final")
    )
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    start = int(next(line for line in out.splitlines() if line.startswith("resumed from epoch")).split()[-1])
    assert start >= (2 if kill_after.startswith("epoch") else 5)
    assert _epochs(out) == want[start:]  # the same losses (6 decimals) and stages
    a, b = _final_params(str(tmp_path / "full.final")), _final_params(str(tmp_path / "resumed.final"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
