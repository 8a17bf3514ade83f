"""The README's and docs/' examples run as written (docs that match the code)."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
DOCS = README.parent / "docs"


def test_readme_usage_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    scope: dict = {}
    exec(compile(blocks[0], str(README), "exec"), scope)
    stats = scope["stats"]
    assert stats.shape == (4,) and stats[3] == 0.0  # finite gradients
    assert 0.0 < stats[2] <= 10.0  # the seed's gradient ratio


def test_readme_lifecycle_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "lifecycle.md").read_text(), flags=re.S)
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

    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "compile.md").read_text(), flags=re.S)
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
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "hosts.md").read_text(), flags=re.S)
    block = next((b for b in blocks if 'kf.graft(net, ["0", "2"]' in b), None)
    assert block is not None, "docs/hosts.md has no graft example"
    scope: dict = {}
    exec(compile(block, str(DOCS / "hosts.md"), "exec"), scope)
    grown, grown_gpt = scope["grown"], scope["grown_gpt"]
    assert grown.slot_ids == ["0", "2"] and grown.seed_slots["2"].stage.name == "TRAINING"
    assert grown_gpt.host.topologies == {"transformer.h.1": "transformer"}
    assert scope["logits"].shape == (2, 16, 50257)


def _blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_every_python_block_is_tested():
    """Each block of README.md and docs/*.md is run by one of the tests here."""
    marks = ["stats =", "kf.SeedSlot(", "torch.compile(model, fullgraph=True)", 'kf.graft(net, ["0", "2"]']
    marks += ["kf.Grower(", "integrations.hf import", "integrations.lightning import"]
    marks += ["model.save_pretrained(", "aoti_compile_and_package"]
    for path in [README, *sorted(DOCS.glob("*.md"))]:
        for block in _blocks(path):
            assert any(m in block for m in marks), f"{path.name}: a python block no test runs:\n{block[:200]}"


def test_readme_training_loop_examples_run(tmp_path, monkeypatch, capsys):
    """The three forms of "Grow in your training loop": plain, Trainer, Lightning."""
    import pytest
    import torch

    monkeypatch.chdir(tmp_path)  # the Trainer writes into ./out
    blocks = _blocks(README)
    plain = next(b for b in blocks if "kf.Grower(" in b)
    scope: dict = {}
    exec(compile(plain, str(README), "exec"), scope)
    grower, model, opt = scope["grower"], scope["model"], scope["opt"]
    assert grower.epoch == 12 and model.germinations["2"] >= 1
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters()}
    assert "germinate conv_light in 2" in capsys.readouterr().out

    # "Save, reload and deploy" continues the plain example
    save = next(b for b in blocks if "model.save_pretrained(" in b)
    trained = scope["model"]
    exec(compile(save, str(README), "exec"), scope)
    assert scope["fresh"].seed_slots["2"].stage == trained.seed_slots["2"].stage
    assert scope["fresh"].seed_slots["2"].seed is not None
    assert type(scope["plain"]) is torch.nn.Sequential and scope["program"].graph
    assert scope["grower"].epoch == 12 and scope["grower"].policy.germinations >= 1
    assert scope["model"].seed_slots["2"].stage == trained.seed_slots["2"].stage
    assert scope["grower"].optimizer is scope["opt"]

    pytest.importorskip("accelerate", reason="the hf extra (in .ci/requirements.txt) is not installed")
    hf = next(b for b in blocks if "integrations.hf import" in b)
    hf_scope: dict = {}
    exec(compile(hf, str(README), "exec"), hf_scope)
    grown, trainer = hf_scope["grown"], hf_scope["trainer"]
    assert grown.seed_slots["transformer.h.1"].stage.name == "TRAINING"
    assert {id(p) for p in grown.seed_parameters()} <= {
        id(p) for g in trainer.optimizer.param_groups for p in g["params"]
    }

    pytest.importorskip("lightning", reason="the lightning extra (in .ci/requirements.txt) is not installed")
    lit = next(b for b in blocks if "integrations.lightning import" in b)
    scope = {}
    exec(compile(lit, str(README), "exec"), scope)  # runs on its own
    module = scope["trainer"].lightning_module
    assert module.model.seed_slots["0"].stage.name == "TRAINING"
    assert torch.is_tensor(next(iter(module.model.seed_parameters())))


def test_deploy_example_runs(tmp_path, monkeypatch):
    """docs/deploy.md: a dense seed fossilized, merged, exported and run from an
    AOTInductor package."""
    import torch

    monkeypatch.chdir(tmp_path)
    block = next(b for b in _blocks(DOCS / "deploy.md") if "aoti_compile_and_package" in b)
    scope: dict = {}
    exec(compile(block, str(DOCS / "deploy.md"), "exec"), scope)
    assert type(scope["merged"]) is torch.nn.Sequential and hasattr(scope["merged"][1], "grown_seed")
    assert (tmp_path / "merged.pt2").is_file()
