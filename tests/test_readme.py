"""The README's usage example runs as written (docs that match the code)."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    scope: dict = {}
    exec(compile(blocks[0], str(README), "exec"), scope)
    stats = scope["stats"]
    assert stats.shape == (4,) and stats[3] == 0.0  # finite gradients
    assert 0.0 < stats[2] <= 10.0  # the seed's gradient ratio


def test_readme_lifecycle_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    block = next((b for b in blocks if "kf.SeedSlot(" in b), None)
    assert block is not None, "the README has no lifecycle example"
    scope: dict = {}
    exec(compile(block, str(README), "exec"), scope)
    out = capsys.readouterr().out
    assert "SEED_GERMINATED" in out and "TRAINING" in out
    assert scope["slot"].state is None or scope["slot"].stage.name in out


def test_readme_compile_example_runs():
    import torch
    from torch._dynamo.testing import CompileCounter

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    block = next(b for b in blocks if "torch.compile(model, fullgraph=True)" in b)
    counter = CompileCounter()
    torch._dynamo.reset()
    code = block.replace(
        "torch.compile(model, fullgraph=True)", "torch.compile(model, fullgraph=True, backend=_counter)"
    )
    scope: dict = {"_counter": counter}
    exec(compile(code, str(README), "exec"), scope)
    assert counter.frame_count == 1, "the alpha ramp must not recompile"


def test_readme_graft_example_runs():
    import pytest

    pytest.importorskip("transformers", reason="the hf extra (in .ci/requirements.txt) is not installed")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    block = next((b for b in blocks if "kf.graft(" in b), None)
    assert block is not None, "the README has no graft example"
    scope: dict = {}
    exec(compile(block, str(README), "exec"), scope)
    grown, grown_gpt = scope["grown"], scope["grown_gpt"]
    assert grown.slot_ids == ["0", "2"] and grown.seed_slots["2"].stage.name == "TRAINING"
    assert grown_gpt.host.topologies == {"transformer.h.1": "transformer"}
    assert scope["logits"].shape == (2, 16, 50257)
