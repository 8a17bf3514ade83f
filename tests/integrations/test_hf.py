"""GrowthCallback in a real Hugging Face Trainer run (a small GPT-2 built from a
config, on the CPU): the seed grows to BLENDING, its parameters (and its gate's)
are in the Trainer's optimizer and train at the Trainer's scheduled lr, and a run
resumed from a checkpoint taken mid-BLENDING gives the same next losses, stages
and weights as the uninterrupted run."""

from __future__ import annotations

import inspect

import pytest
import torch

import kasmina_fast as kf

transformers = pytest.importorskip("transformers", reason="needs the hf extra (transformers)")
pytest.importorskip("accelerate", reason="Trainer needs accelerate")

from kasmina_fast.integrations.hf import GROWTH_KEY, GrowthCallback  # noqa: E402
from tests.utils import LM_POINTS, LM_T, LM_VOCAB, grown_lm  # noqa: E402

VOCAB, T, SLOT = LM_VOCAB, LM_T, LM_POINTS["gpt2"]
PERMISSIVE = kf.QualityGates(
    min_training_improvement=-1e9, min_blending_epochs=1, min_seed_gradient_ratio=0.0
)


class Tokens(torch.utils.data.Dataset):
    """Sequences with a learnable rule (each token is the previous plus one), plus a
    column the model does not take (the Trainer drops it by the forward's signature)."""

    def __init__(self, n: int, offset: int = 0) -> None:
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        start = (7 * (i + self.offset)) % VOCAB
        ids = (start + torch.arange(T)) % VOCAB
        return {"input_ids": ids, "labels": ids, "note": i}


def _grown(name: str = "gpt2"):
    return grown_lm(name, gates=PERMISSIVE)


class Recorder(transformers.TrainerCallback):
    """Every step's learning rates per param group."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append([g["lr"] for g in optimizer.param_groups])


def _trainer(out, resume=None, name="gpt2", max_steps=12):
    model = _grown(name)
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=4,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    policy = kf.HeuristicPolicy(germinate_at=0, blend_algorithm_id="gated", fossilize_at=-1e9)
    growth, recorder = GrowthCallback(policy), Recorder()
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=Tokens(64),
        eval_dataset=Tokens(16, offset=1000),
        callbacks=[growth, recorder],
    )
    trainer.train(resume_from_checkpoint=resume)
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    return model, trainer, growth, recorder, losses


def test_trainer_sees_the_users_arguments():
    grown = _grown()
    params = inspect.signature(grown.forward).parameters
    assert "input_ids" in params and "labels" in params


def test_growth_in_trainer_and_exact_resume(tmp_path):
    model, trainer, growth, recorder, losses = _trainer(tmp_path / "a")
    slot = model.seed_slots[SLOT]
    stages = [r.transitions for r in growth.reports]
    assert stages[0] == {SLOT: ("DORMANT", "GERMINATED", "TRAINING")}  # every stage of the epoch
    assert stages[1] == {SLOT: ("TRAINING", "BLENDING")}
    assert slot.stage == kf.SeedStage.PROBATIONARY and slot.alpha_schedule.gated
    # the seed's and the gate's parameters are in the Trainer's optimizer, in groups of their own
    opt = trainer.optimizer
    groups = [{id(p) for p in g["params"]} for g in opt.param_groups]
    assert len(groups) == 4  # the Trainer's decay / no-decay groups, the seed's, the gate's
    assert {id(p) for p in slot.seed_parameters()} == groups[2] | groups[3]
    assert all(opt.state[p] for p in slot.seed_parameters())  # they trained (Adam state)
    # at every step the seed's groups got the lr the schedule gave the host's groups
    for lrs in recorder.lrs:
        assert all(lr == pytest.approx(lrs[0], rel=1e-12) for lr in lrs)
    assert recorder.lrs[2][0] != recorder.lrs[6][0]  # (the schedule moves)
    # (steps 1, 3, 5: no save there, which takes the seeds' groups out while it writes)
    assert len(recorder.lrs[0]) == 2 and len(recorder.lrs[2]) == 3 and len(recorder.lrs[4]) == 4
    # the checkpoint mid-BLENDING: the model's tensors (seed, gate and lifecycle included,
    # the tied weight once) and the training state beside them
    ckpt = tmp_path / "a" / "checkpoint-8"
    from safetensors.torch import load_file

    saved = load_file(str(ckpt / "model.safetensors"))
    slot_key = "host.slots." + SLOT.replace(".", "-")
    assert (
        GROWTH_KEY in saved and f"{slot_key}._extra_state" in saved and f"{slot_key}.seed.fc2.weight" in saved
    )
    assert "host.model.lm_head.weight" not in saved and "host.model.transformer.wte.weight" in saved
    assert len(torch.load(ckpt / "optimizer.pt", weights_only=True)["param_groups"]) == 2
    assert [r.transitions for r in growth.reports][3] == {}  # epoch 3 (step 8): still BLENDING

    resumed, trainer_b, growth_b, _, losses_b = _trainer(tmp_path / "a", resume=str(ckpt))
    assert sorted(losses_b) == list(range(1, 13))  # 1-8 from the checkpoint's log
    for step in (9, 10, 11, 12):
        assert losses_b[step] == losses[step], step
    assert [r.transitions for r in growth_b.reports] == stages[4:]
    assert resumed.seed_slots[SLOT].stage == slot.stage
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    assert len(trainer_b.optimizer.param_groups) == 4


def test_refuses_a_run_without_evaluation(tmp_path):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True)
    trainer = transformers.Trainer(
        model=_grown(), args=args, train_dataset=Tokens(8), callbacks=[GrowthCallback()]
    )
    with pytest.raises(ValueError, match="eval_strategy"):
        trainer.train()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, eval_strategy="steps", save_strategy="steps",
        load_best_model_at_end=True, report_to=[], use_cpu=True,
    )  # fmt: skip
    trainer = transformers.Trainer(
        model=_grown(),
        args=args,
        train_dataset=Tokens(8),
        eval_dataset=Tokens(8),
        callbacks=[GrowthCallback()],
    )
    with pytest.raises(ValueError, match="load_best_model_at_end"):
        trainer.train()


#: run in a fresh process: the grafted model built anew, the saved file loaded with
#: load_state_dict (strict), the logits and stages written out
RELOAD = """
import sys, torch
from safetensors.torch import load_file
sys.path.insert(0, {root!r})
import kasmina_fast as kf
from tests.utils import grown_lm
model = grown_lm({name!r}, gates=kf.QualityGates()).eval()
model.load_state_dict(load_file({path!r}))
ids = torch.load({ids!r})
with torch.no_grad():
    logits = model(input_ids=ids).logits
stages = {{s: slot.stage.name for s, slot in model.seed_slots.items()}}
torch.save({{"logits": logits, "stages": stages}}, {out!r})
"""


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_save_model_and_reload_in_a_fresh_process(tmp_path, name):
    import subprocess
    import sys
    from pathlib import Path

    model, trainer, _growth, _, _ = _trainer(tmp_path / "run", name=name, max_steps=8)
    slot = next(iter(model.seed_slots.values()))
    assert slot.stage in (kf.SeedStage.BLENDING, kf.SeedStage.PROBATIONARY) and slot.seed is not None
    trainer.save_model(str(tmp_path / "final"))  # a safetensors file of model.state_dict()
    ids = torch.randint(0, VOCAB, (3, T), generator=torch.Generator().manual_seed(5))
    torch.save(ids, tmp_path / "ids.pt")
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids).logits
    root = str(Path(__file__).resolve().parents[2])
    for saved in (
        tmp_path / "final" / "model.safetensors",
        tmp_path / "run" / "checkpoint-8" / "model.safetensors",
    ):
        script = RELOAD.format(
            root=root, name=name, path=str(saved), ids=str(tmp_path / "ids.pt"), out=str(tmp_path / "o.pt")
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root)
        assert done.returncode == 0, done.stderr[-3000:]
        got = torch.load(tmp_path / "o.pt")
        assert got["stages"] == {s: x.stage.name for s, x in model.seed_slots.items()}
        assert torch.equal(got["logits"], want), saved  # bit-equal
