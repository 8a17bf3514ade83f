"""kasmina_fast.checkpoint on one process: atomic saves (every point a writer can be
killed at, made deterministic by failing the step after it, and real SIGKILLs at
random points), the whole training state (scheduler, RNG, extra, the seeds' own
param groups) and an exact resume; Checkpointer's step folders, pruning, latest()
and asynchronous saves. The sharded, multi-rank kill tests are in
tests/hosts/test_fsdp.py and the examples' tests."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import kasmina_fast as kf
from kasmina_fast import checkpoint

PERMISSIVE = kf.QualityGates(
    min_training_improvement=-1e9, min_blending_epochs=1, min_seed_gradient_ratio=0.0
)


def _model() -> kf.MorphogeneticModel:
    torch.manual_seed(0)
    host = kf.CNNHost(num_classes=4, base_channels=4, n_blocks=3)
    tc = kf.TaskConfig(topology="cnn", blending_steps=4)
    return kf.MorphogeneticModel(host, slots=["mid", "late"], task_config=tc, gates=PERMISSIVE)


def _adam(model):
    return torch.optim.AdamW(model.host_parameters(), lr=3e-3)


def _sched(opt):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.1 * s))


class Run:
    """A growing run (Grower, a gated seed, a scheduler) whose data comes from the
    global RNG, so that an exact resume needs the RNG state too."""

    def __init__(self) -> None:
        self.model = _model()
        self.opt = _adam(self.model)
        self.sched = _sched(self.opt)
        self.x_val = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(9))
        self.y_val = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(9))
        policy = kf.HeuristicPolicy("conv_light", slots=["mid"], germinate_at=0, blend_algorithm_id="gated")
        self.grower = kf.Grower(
            self.model, self.opt, evaluate=self.evaluate, lr_scheduler=self.sched, policy=policy
        )

    @torch.no_grad()
    def evaluate(self) -> float:
        return -100.0 * F.cross_entropy(self.model(self.x_val), self.y_val).item()

    def epoch(self) -> list[float]:
        losses = []
        for _ in range(3):
            x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))  # the global RNG
            loss = F.cross_entropy(self.model(x), y)
            self.opt.zero_grad()
            loss.backward()
            self.grower.after_backward()
            self.opt.step()
            self.sched.step()
            losses.append(loss.item())
        self.grower.end_epoch()
        return losses

    def save(self, folder, epoch: int) -> None:
        extra = {"epoch": epoch, "grower": self.grower.state_dict()}
        checkpoint.save(self.model, self.opt, folder, lr_scheduler=self.sched, extra=extra)

    @classmethod
    def resume(cls, folder) -> tuple[Run, int]:
        run = cls()
        restored = checkpoint.load(run.model, folder, _adam, lr_scheduler=_sched)
        run.opt, run.sched = restored.optimizer, restored.lr_scheduler
        run.grower.optimizer, run.grower.lr_scheduler = run.opt, run.sched
        run.grower.load_state_dict(restored.extra["grower"])
        return run, restored.extra["epoch"]


def test_exact_resume_mid_blending(tmp_path):
    """Scheduler, RNG, the seed's and gate's own groups, the Grower: the same next losses."""
    run = Run()
    for _e in range(4):
        run.epoch()
    assert run.model.seed_slots["mid"].stage == kf.SeedStage.BLENDING
    assert len(run.opt.param_groups) == 3  # the host's, the seed's, the gate's (sync_optimizer)
    run.save(tmp_path / "ckpt", epoch=4)
    want = [run.epoch() for _ in range(3)]
    stages = [s.stage for s in run.model.seed_slots.values()]
    torch.manual_seed(1234)  # the resumed run's RNG must come from the checkpoint
    resumed, epoch = Run.resume(tmp_path / "ckpt")
    assert epoch == 4 and len(resumed.opt.param_groups) == 3
    assert resumed.sched.last_epoch == run.sched.last_epoch - 9
    got = [resumed.epoch() for _ in range(3)]
    assert got == want
    assert [s.stage for s in resumed.model.seed_slots.values()] == stages
    for a, b in zip(run.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def _saved_epoch(folder) -> int:
    _run, epoch = Run.resume(folder)
    return epoch


@pytest.mark.parametrize("fail_at", ["dcp", "marker", "first_rename", "second_rename", "cleanup"])
def test_a_save_stopped_at_any_point_leaves_a_complete_checkpoint(tmp_path, monkeypatch, fail_at):
    """A second save into the same folder stopped at each step: the folder (or its .old
    twin, between the renames) still loads, the earlier or the new checkpoint whole."""
    folder = tmp_path / "ckpt"
    run = Run()
    run.epoch()
    run.save(folder, epoch=1)
    run.epoch()

    class Killed(Exception):
        pass

    def die(*a, **k):
        raise Killed

    if fail_at == "dcp":
        monkeypatch.setattr(
            checkpoint.dcp, "save", lambda state, checkpoint_id: (os.makedirs(checkpoint_id), die())
        )
    elif fail_at == "marker":
        monkeypatch.setattr(checkpoint, "_fsync_dir", die)
    elif fail_at in ("first_rename", "second_rename"):
        real, calls = os.rename, []

        def rename(src, dst):
            if str(src).endswith(("ckpt", "ckpt.tmp")):  # the swap's renames (DCP renames files too)
                calls.append(src)
                if len(calls) == (1 if fail_at == "first_rename" else 2):
                    raise Killed
            real(src, dst)

        monkeypatch.setattr(checkpoint.os, "rename", rename)
    else:
        real_rmtree = checkpoint.shutil.rmtree
        monkeypatch.setattr(
            checkpoint.shutil,
            "rmtree",
            lambda p, ignore_errors=False: (
                die()
                if str(p).endswith(".old") and os.path.exists(p)
                else real_rmtree(p, ignore_errors=ignore_errors)
            ),
        )
    with pytest.raises(Killed):
        run.save(folder, epoch=2)
    monkeypatch.undo()
    # the new one only once the swap is done; between the renames, the old one is in ckpt.old
    want = 2 if fail_at == "cleanup" else 1
    assert _saved_epoch(folder) == want
    run.save(folder, epoch=3)  # the next save recovers from whatever was left
    assert _saved_epoch(folder) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_folder_without_its_marker_is_refused(tmp_path):
    run = Run()
    run.save(tmp_path / "ckpt", epoch=0)
    (tmp_path / "ckpt" / checkpoint.MARKER).unlink()
    with pytest.raises(FileNotFoundError, match=r"ckpt.*no complete checkpoint"):
        Run.resume(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Run.resume(tmp_path / "missing")


def test_checkpointer_keeps_the_newest_and_loads_the_latest(tmp_path):
    run = Run()
    ckpt = checkpoint.Checkpointer(tmp_path, keep=2)
    assert ckpt.latest() is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        ckpt.load(run.model, _adam)
    for step in (1, 2, 3):
        run.epoch()
        ckpt.save(step, run.model, run.opt, lr_scheduler=run.sched, extra={"epoch": step})
    (tmp_path / "step-9.tmp").mkdir()  # an interrupted save of a later step: ignored
    (tmp_path / "step-8").mkdir()  # a folder without its marker: ignored
    assert ckpt.steps() == [2, 3] and ckpt.latest() == 3
    ckpt.save(4, run.model, run.opt, lr_scheduler=run.sched, extra={"epoch": 4})
    assert not (tmp_path / "step-9.tmp").exists()  # cleaned by the next save
    assert ckpt.steps() == [3, 4]
    fresh = Run()
    assert ckpt.load(fresh.model, _adam, step=3, lr_scheduler=_sched).extra == {"epoch": 3}
    with pytest.raises(TypeError, match="extra must hold"):
        ckpt.save(5, run.model, run.opt, extra={"bad": object()})
    assert ckpt.load(Run().model, _adam).extra == {"epoch": 4}
    with pytest.raises(ValueError, match="keep"):
        checkpoint.Checkpointer(tmp_path, keep=0)


def test_async_save_equals_a_synchronous_one(tmp_path):
    run = Run()
    for _ in range(3):
        run.epoch()
    sync_ckpt = checkpoint.Checkpointer(tmp_path / "sync")
    async_ckpt = checkpoint.Checkpointer(tmp_path / "async", async_save=True)
    rng = torch.get_rng_state()
    sync_ckpt.save(3, run.model, run.opt, lr_scheduler=run.sched, extra={"epoch": 3})
    torch.set_rng_state(rng)
    async_ckpt.save(3, run.model, run.opt, lr_scheduler=run.sched, extra={"epoch": 3})
    assert async_ckpt.latest() is None  # still being written: not complete yet
    async_ckpt.wait()
    assert async_ckpt.latest() == 3
    a, b = Run(), Run()
    sync_ckpt.load(a.model, _adam)
    async_ckpt.load(b.model, _adam)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


#: a process that saves forever: every parameter filled with the step, into
#: Checkpointer step folders and, again and again, into one folder
CHILD = """
import sys, time, torch
import kasmina_fast as kf
from kasmina_fast import checkpoint
# argv[2] = K > 0: stop at the K-th moment of saving (a save's files written, no marker
# yet; or right before a rename of the swap), say so and wait for the kill
stop_at, moments = int(sys.argv[2]), [0]
def moment():
    moments[0] += 1
    if moments[0] == stop_at:
        print("stopped", flush=True)
        time.sleep(3600)
def wrap(fn, after):
    def wrapped(*args, **kwargs):
        if not after:
            moment()
        out = fn(*args, **kwargs)
        if after:
            moment()
        return out
    return wrapped
checkpoint.dcp.save = wrap(checkpoint.dcp.save, after=True)
checkpoint.os.rename = wrap(checkpoint.os.rename, after=False)
torch.manual_seed(0)
model = kf.MorphogeneticModel(kf.CNNHost(num_classes=4, base_channels=8), slots=["mid"])
model.germinate_seed("conv_light", slot="mid")
opt = torch.optim.SGD(model.parameters(), lr=0.1)
ckpt = checkpoint.Checkpointer(sys.argv[1] + "/steps", keep=2)
step = (ckpt.latest() or 0) + 1
print("ready", flush=True)
while True:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(step)
    ckpt.save(step, model, opt, extra={"step": step})
    checkpoint.save(model, opt, sys.argv[1] + "/one", extra={"step": step})
    step += 1
"""


def _check_loads(folder_or_ckpt) -> int:
    model = kf.MorphogeneticModel(kf.CNNHost(num_classes=4, base_channels=8), slots=["mid"])
    make = lambda m: torch.optim.SGD(m.parameters(), lr=0.1)  # noqa: E731
    if isinstance(folder_or_ckpt, checkpoint.Checkpointer):
        restored = folder_or_ckpt.load(model, make)
    else:
        restored = checkpoint.load(model, folder_or_ckpt, make)
    step = restored.extra["step"]
    assert model.seed_slots["mid"].seed is not None
    assert all(bool((p == step).all()) for p in model.parameters()), step  # all of one save
    return step


@pytest.mark.slow
def test_sigkill_at_random_points_of_saves(tmp_path):
    """A real process killed with SIGKILL many times, every other time at a random
    moment and otherwise at a random one of the moments inside a save (its files
    written but no marker, or before a rename of the swap: deterministic, whatever the
    machine's speed): the newest complete checkpoint always loads whole, and the next
    run goes on from it."""
    rnd = random.Random(0)
    steps = checkpoint.Checkpointer(tmp_path / "steps", keep=2)
    last, torn = 0, 0
    for i in range(8):
        stop_at = rnd.randint(1, 6) if i % 2 else 0
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), str(stop_at)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready"
        if stop_at:
            assert proc.stdout.readline().strip() == "stopped"
        else:
            time.sleep(rnd.uniform(0.2, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        torn += any(p.name.endswith((".tmp", ".old")) for p in [*tmp_path.iterdir(), *steps.root.iterdir()])
        step = _check_loads(steps)
        assert step >= last and len(steps.steps()) <= 3  # keep=2, plus one mid-swap
        last = step
        if (tmp_path / "one").exists() or (tmp_path / "one.old").exists():
            _check_loads(tmp_path / "one")
    assert last > 1 and torn >= 4  # (the 4 kills at a moment inside a save at least)


def test_a_scheduled_prune_survives_dcp(tmp_path):
    run = Run()
    for _ in range(4):
        run.epoch()
    slot = run.model.seed_slots["mid"]
    assert slot.stage == kf.SeedStage.BLENDING
    run.model.schedule_prune(3, slot="mid", reason="fading")
    run.epoch()
    run.save(tmp_path / "ckpt", epoch=5)
    want = [(run.epoch(), float(slot.alpha)) for _ in range(2)]  # (the global RNG: the original first)
    resumed, _ = Run.resume(tmp_path / "ckpt")
    again = resumed.model.seed_slots["mid"]
    assert again.state.prune_epochs == 2 and all(not p.requires_grad for p in again.seed_parameters())
    assert [(resumed.epoch(), float(again.alpha)) for _ in range(2)] == want
    assert again.stage == slot.stage == kf.SeedStage.CULLED and again.state.cull_reason == "fading"
