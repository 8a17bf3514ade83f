"""The benchmark cases' ``reference`` backend swaps every fast op the lifecycle calls
for the eager reference (a "reference" step that ran a fast op would flatter it), and
no source file cites a document the repository does not hold."""

from __future__ import annotations

import pathlib
import re

import torch

import kasmina_fast as kf
from kasmina_fast.cli.cases import selected

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_reference_backend_runs_no_kasmina_op_in_a_slot():
    torch.manual_seed(0)
    called = []
    for mode in ("lerp", "valve"):
        slot = kf.SeedSlot("s", 8, task_config=kf.TaskConfig("cnn"))
        slot.germinate("conv_light", blend_mode=mode)
        slot.advance_stage(kf.SeedStage.TRAINING)
        x = torch.randn(2, 8, 6, 6, requires_grad=True)
        with selected("reference"), torch.profiler.profile() as prof:
            slot(x).sum().backward()  # TRAINING: the STE
            with slot.force_alpha(0.5):
                slot(x).sum().backward()  # blend or valve
        called += [e.name for e in prof.events() if e.name.startswith("kasmina::")]
    assert not called, called


def test_no_source_cites_a_file_the_repository_lacks():
    cited = re.compile(r"\b([A-Z][A-Z_]+\.md)\b")
    package = pathlib.Path(kf.__file__).resolve().parent  # (the installed one, where CI tests a wheel)
    dirs = [package, *(ROOT / d for d in ("csrc", "triton_kernels", "bench", "tests"))]
    suffixes = {".py", ".h", ".cpp", ".cu", ".cuh", ".sh"}
    missing = set()
    for d in (d for d in dirs if d.is_dir()):
        for f in d.rglob("*"):
            if f.suffix in suffixes and f.is_file():
                for name in cited.findall(f.read_text(errors="ignore")):
                    if not any(ROOT.rglob(name)):
                        missing.add(f"{f}: {name}")
    assert not missing, sorted(missing)
