"""DDP around a MorphogeneticModel with 2 gloo processes (kasmina_fast/examples/ddp.py),
on CNNHost and on a grafted plain nn.Module:
seeds germinate, blend, fossilize and get culled on both ranks at the same
steps, and the final parameters are identical on both ranks."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.multiprocessing as mp

from kasmina_fast.examples.ddp import run


@pytest.mark.parametrize("host", ["cnn", "graft"])
def test_two_rank_ddp_lifecycle_keeps_ranks_identical(tmp_path, host):
    mp.spawn(run, args=(2, str(tmp_path / "init"), 10, str(tmp_path), True, host), nprocs=2, join=True)
    logs = [json.loads((tmp_path / f"log{r}.json").read_text()) for r in range(2)]
    assert logs[0] == logs[1], logs
    befores = [line.split(" > ")[0].split(",") for line in logs[0]]  # each epoch, before step_epoch
    afters = [line.split(" > ")[1].split(",") for line in logs[0]]
    assert befores[1] == ["GERMINATED", "GERMINATED"] and afters[1] == ["TRAINING", "TRAINING"], logs[0]
    mids = [a[0] for a in afters]
    lates = [a[1] for a in afters]
    assert {"TRAINING", "BLENDING", "FOSSILIZED"} <= set(mids), mids
    assert "EMBARGOED" in lates, lates
    p0, p1 = (torch.load(tmp_path / f"params{r}.pt") for r in range(2))
    assert p0.shape == p1.shape and torch.equal(p0, p1)


def _example(*args: str):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "kasmina_fast.examples.ddp", "--epochs", "8", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_ddp_example_killed_rank_resumes_exactly(tmp_path):
    """A rank SIGKILLed between saves; ``--resume`` continues with the uninterrupted
    run's losses and stages (RNG, optimizer with the seeds' groups, Grower restored)."""
    import os
    import signal

    full = _example("--checkpoint-dir", str(tmp_path / "full"))
    out, _ = full.communicate(timeout=300)
    assert full.returncode == 0, out[-3000:]
    want = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(want) == 8, out
    job, pids, seen = _example("--checkpoint-dir", str(tmp_path / "killed")), {}, []
    for line in job.stdout:
        seen.append(line)
        for rank, pid in re.findall(r"rank (\d+) pid (\d+)", line):
            pids[int(rank)] = int(pid)
        if line.startswith("saved epoch 3"):
            os.kill(pids[1], signal.SIGKILL)
            break
    rest, _ = job.communicate(timeout=120)
    assert job.returncode != 0, "".join(seen) + rest
    resumed = _example("--checkpoint-dir", str(tmp_path / "killed"), "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    got = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(got) >= 4 and got == want[-len(got) :]
