"""The demo end to end at a tiny size: a decided seed, events in order, a
valid plot, reproducibility, usage errors."""

from __future__ import annotations

import pytest

from kasmina_fast.__main__ import main
from kasmina_fast.cli.demo import DemoConfig, run

TINY = dict(epochs=12, batch_size=32, steps_per_epoch=6, germinate_epoch=1, patience=3, quiet=True)


@pytest.mark.parametrize("task", ["digits", "text"])
def test_demo_reaches_a_decision_with_events_in_order(task):
    result = run(DemoConfig(task=task, **TINY))
    kinds = [e.event_type.value for e in result.events]
    assert kinds[:2] == ["SEED_GERMINATED", "SEED_STAGE_CHANGED"]
    assert "SEED_FOSSILIZED" in kinds or "SEED_CULLED" in kinds, kinds
    stages = [e.data["to"] for e in result.events if e.event_type.value == "SEED_STAGE_CHANGED"]
    order = ["TRAINING", "BLENDING", "PROBATIONARY", "FOSSILIZED"]
    decided = "FOSSILIZED" if "FOSSILIZED" in stages else "CULLED"
    kept = [s for s in stages[: stages.index(decided) + 1] if s in order or s == "CULLED"]
    assert kept[: len(kept) - 1] == order[: len(kept) - 1], stages
    s = result.summary
    assert s["outcome"] in ("SEED_FOSSILIZED", "SEED_CULLED")
    assert s["params_grown"] == s["params_host_alone"] + s["seed_params_added"]
    assert s["accuracy_grown"] == result.history[-1]["val_acc"]
    assert s["step_ms_fast"] > 0 and s["step_ms_reference"] > 0
    assert len(result.history) == TINY["epochs"]


def test_demo_is_reproducible():
    a = run(DemoConfig(seed=3, **TINY))
    b = run(DemoConfig(seed=3, **TINY))
    assert [(h["val_acc"], h["stage"], h["alpha"]) for h in a.history] == [
        (h["val_acc"], h["stage"], h["alpha"]) for h in b.history
    ]


def test_demo_plot_is_a_png(tmp_path, capsys):
    path = tmp_path / "timeline.png"
    argv = [
        "demo",
        "--quiet",
        "--epochs",
        "6",
        "--steps-per-epoch",
        "3",
        "--batch-size",
        "16",
        "--plot",
        str(path),
    ]
    assert main(argv) == 0
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    from PIL import Image

    with Image.open(path) as img:
        assert img.size[0] > 400 and img.size[1] > 300
    out = capsys.readouterr().out
    assert "summary" in out and "fwd+bwd, eager reference ops" in out


@pytest.mark.parametrize(
    "argv", [["demo", "--task", "images"], ["demo", "--epochs", "many"], ["demo", "--backend", "fastest"]]
)
def test_demo_bad_flags_are_usage_errors(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


@pytest.mark.parametrize("task", ["digits", "text"])
def test_demo_slots_by_the_spec_names(task, capsys):
    """`--slots early mid late` as in the spec's CLI table; the seed grows in the first."""
    argv = ["demo", "--task", task, "--quiet", "--epochs", "3", "--steps-per-epoch", "2", "--batch-size", "8"]
    assert main([*argv, "--slots", "late", "mid"]) == 0
    assert "summary" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"demo: .*got \['deep'\]; available: .*early.*mid.*late"):
        main([*argv, "--slots", "deep"])


def test_demo_refuses_a_missing_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="no CUDA device"):
        main(["demo", "--device", "cuda"])


def test_the_host_alone_is_the_same_run_without_the_seed(monkeypatch):
    """Same initial weights and batches: before germination the two runs are identical."""
    import kasmina_fast.cli.demo as demo

    runs = []
    train = demo._train

    def spy(*args, **kw):
        out = train(*args, **kw)
        runs.append(out)
        return out

    monkeypatch.setattr(demo, "_train", spy)
    result = run(DemoConfig(**TINY | {"germinate_epoch": 3, "epochs": 5}))
    alone, grown = runs
    assert [h["val_acc"] for h in alone["history"][:3]] == [h["val_acc"] for h in grown["history"][:3]]
    assert all(h["stage"] == "DORMANT" for h in alone["history"])
    assert result.summary["accuracy_host_alone"] == alone["history"][-1]["val_acc"]
    assert alone["model"].total_params == result.summary["params_host_alone"]


@pytest.mark.parametrize(("task", "host"), [("digits", "hf-resnet"), ("text", "gpt2")])
def test_demo_on_hugging_face_models(task, host, capsys):
    pytest.importorskip("transformers", reason="the hf extra (in .ci/requirements.txt) is not installed")
    argv = ["demo", "--task", task, "--host", host, "--epochs", "4", "--steps-per-epoch", "3"]
    assert main([*argv, "--batch-size", "8", "--quiet"]) == 0
    out = capsys.readouterr().out
    want = {"hf-resnet": "ResNetForImageClassification", "gpt2": "GPT2LMHeadModel"}[host]
    assert "task, host" in out and want in out and "growth paid" in out


def test_demo_names_the_extra_when_transformers_is_missing(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    with pytest.raises(SystemExit, match=r"pip install 'kasmina-fast\[hf\]'"):
        main(["demo", "--host", "hf-resnet", "--epochs", "1", "--quiet"])


def test_demo_refuses_a_host_of_the_other_task():
    with pytest.raises(SystemExit, match="--host gpt2 is not a host of --task digits"):
        main(["demo", "--host", "gpt2"])


def test_the_progress_bar_counts_batches_of_the_epochs_total(capsys):
    assert main(["demo", "--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "8"]) == 0
    err = capsys.readouterr().err
    assert "host alone epoch  0:" in err and "grown epoch  1:" in err, err[-500:]
    assert "0/3 [" in err and "batch/s" in err, err[-500:]  # done / the epoch's total


def test_the_summary_counts_the_seed_of_the_slot_it_grew_in():
    """``--slots late mid``: the seed grows in ``late`` (the first given), not in the
    first in host order."""
    s = run(DemoConfig(slots=("late", "mid"), quiet=True)).summary
    assert s["outcome"] == "SEED_FOSSILIZED", s
    assert s["seed_params_added"] > 0
    assert s["params_grown"] == s["params_host_alone"] + s["seed_params_added"]
