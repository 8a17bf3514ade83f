"""DDP around a MorphogeneticModel with 2 gloo processes (kasmina_fast/examples/ddp.py),
on CNNHost and on a grafted plain nn.Module:
seeds germinate, blend, fossilize and get culled on both ranks at the same
steps, and the final parameters are identical on both ranks."""

from __future__ import annotations

import json

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
