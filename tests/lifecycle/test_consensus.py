"""DDP consensus with 2 gloo processes on the CPU: ranks that see different
accuracies still take identical decisions, a gate that only one rank would
pass is not taken (and nobody deadlocks), and a single-process run needs no
process group."""

from __future__ import annotations

import json
import pathlib

import torch.distributed as dist
import torch.multiprocessing as mp

from kasmina_fast import SeedStage, agree
from tests.utils import make_slot

S = SeedStage


def _worker(rank: int, world: int, init_file: str, out_dir: str, scenario: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        slot = make_slot()
        slot.germinate("norm", "s1")
        log = []
        for ep in range(10):  # TRAINING 3, BLENDING 5, then PROBATIONARY
            m = slot.state.metrics
            m.seed_gradient_norm_ratio = 0.3
            if scenario == "different":
                acc = 50.0 + ep * (1.0 if rank == 0 else 2.0) + 0.1 * rank  # both improve, differently
                cf = 2.0 + rank
            elif scenario == "one_rank":  # only rank 0 improves
                acc = 50.0 + (ep if rank == 0 else 0.0)
                cf = 3.0
            else:  # "split_counterfactual": same accuracies, only rank 1 sees a negative counterfactual
                acc = 50.0 + ep
                cf = -1.0 if rank == 1 else 3.0
            m.record_accuracy(acc)
            if slot.stage == S.PROBATIONARY:
                m.counterfactual_contribution = cf
            slot.step_epoch()
            log.append(slot.stage.name)
        advanced = slot.advance_stage(S.BLENDING if slot.stage == S.TRAINING else S.FOSSILIZED).passed
        log.append(f"advance:{advanced}:{slot.stage.name}")
        pathlib.Path(out_dir, f"rank{rank}.json").write_text(json.dumps(log))
    finally:
        dist.destroy_process_group()


def run(scenario: str, tmp_path) -> list[list[str]]:
    init = tmp_path / "init"
    mp.spawn(_worker, args=(2, str(init), str(tmp_path), scenario), nprocs=2, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_ranks_with_different_accuracies_decide_identically(tmp_path):
    logs = run("different", tmp_path)
    assert logs[0] == logs[1], logs
    assert "BLENDING" in logs[0] and "PROBATIONARY" in logs[0]
    assert logs[0][-1] == "advance:True:FOSSILIZED"


def test_a_gate_only_one_rank_would_pass_is_not_taken(tmp_path):
    logs = run("one_rank", tmp_path)
    assert logs[0] == logs[1], logs
    assert set(logs[0][:-1]) == {"TRAINING"}, "rank 1 never improves: no unanimous G2"
    assert logs[0][-1] == "advance:False:TRAINING"


def test_agree_without_a_process_group():
    assert not dist.is_initialized()
    assert agree(True) and not agree(False)


def test_split_counterfactual_neither_culls_nor_fossilizes(tmp_path):
    logs = run("split_counterfactual", tmp_path)
    assert logs[0] == logs[1], logs
    assert logs[0][-2] == "PROBATIONARY", "a cull needs every rank's vote"
    assert logs[0][-1] == "advance:False:PROBATIONARY", "G5 passes on rank 0 only: not unanimous"
