"""GrowthCallback in a real Lightning run (a grafted CNN, on the CPU): the seed grows
to BLENDING, its parameters (and its gate's) are in the trainer's optimizer and
train at the scheduled lr, and ``fit(ckpt_path=...)`` from a checkpoint taken
mid-BLENDING gives the same next losses, stages and weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kasmina_fast as kf
from kasmina_fast.lifecycle import persist

L = pytest.importorskip("lightning.pytorch", reason="needs the lightning extra")

from kasmina_fast.integrations.lightning import GrowthCallback  # noqa: E402

PERMISSIVE = kf.QualityGates(
    min_training_improvement=-1e9, min_blending_epochs=1, min_seed_gradient_ratio=0.0
)


def _data(n: int, seed: int) -> torch.utils.data.TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=gen)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    return torch.utils.data.TensorDataset(x, y)


class Module(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
        )  # fmt: skip
        tc = kf.TaskConfig(topology="cnn", blending_steps=4)
        self.model = kf.graft(
            net, ["2"], example_input=torch.zeros(2, 3, 8, 8), task_config=tc, gates=PERMISSIVE
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.05 * s))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Recorder(L.Callback):
    def __init__(self) -> None:
        self.losses: dict[int, float] = {}
        self.lrs: list[list[float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"])
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def _fit(root, ckpt_path=None):
    module = Module()
    policy = kf.HeuristicPolicy(germinate_at=0, blend_algorithm_id="gated", fossilize_at=-1e9)
    growth, recorder = GrowthCallback(policy), Recorder()
    saver = L.callbacks.ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer = L.Trainer(
        max_epochs=7,
        callbacks=[growth, recorder, saver],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    loader = torch.utils.data.DataLoader(_data(64, 1), batch_size=16)
    val = torch.utils.data.DataLoader(_data(32, 2), batch_size=16)
    trainer.fit(module, loader, val, ckpt_path=ckpt_path)
    return module, trainer, growth, recorder


def test_growth_in_lightning_and_exact_resume(tmp_path):
    module, trainer, growth, recorder = _fit(tmp_path)
    slot = module.model.seed_slots["2"]
    transitions = [r.transitions for r in growth.reports]
    assert transitions[0] == {"2": ("DORMANT", "GERMINATED", "TRAINING")} and transitions[1] == {
        "2": ("TRAINING", "BLENDING")
    }
    assert slot.alpha_schedule.gated
    opt = trainer.optimizers[0]
    assert len(opt.param_groups) == 3  # yours, the seed's, the gate's
    assert {id(p) for p in slot.seed_parameters()} == {
        id(p) for g in opt.param_groups[1:] for p in g["params"]
    }
    assert all(opt.state[p] for p in slot.seed_parameters())
    for lrs in recorder.lrs:  # every step, the seed's groups at the schedule's lr
        assert all(lr == pytest.approx(lrs[0], rel=1e-12) for lr in lrs)
    assert [len(x) for x in recorder.lrs[::4]] == [1, 2, 3, 3, 3, 3, 3]
    # the last checkpoint, loaded the Lightning way into a fresh module: the grown model
    loaded = Module.load_from_checkpoint(tmp_path / "epoch=6.ckpt").eval()
    assert loaded.model.seed_slots["2"].stage == slot.stage and loaded.model.seed_slots["2"].seed is not None
    for (name, a), b in zip(module.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    x = _data(8, 3).tensors[0]
    with torch.no_grad():
        assert torch.equal(loaded.model(x), module.eval().model(x))
    module.train()
    ckpt = tmp_path / "epoch=3.ckpt"  # taken mid-BLENDING: the alpha ramp half done
    extra = torch.load(ckpt, weights_only=True)["state_dict"]["model.host.slots.2._extra_state"]
    saved = persist.decode(extra)["state"]
    assert (saved["stage"], saved["alpha"]) == (kf.SeedStage.BLENDING, 0.5)
    resumed, trainer_b, growth_b, recorder_b = _fit(tmp_path / "b", ckpt_path=str(ckpt))
    assert sorted(recorder_b.losses) == list(range(17, 29))
    for step in range(17, 29):
        assert recorder_b.losses[step] == recorder.losses[step], step
    assert [r.transitions for r in growth_b.reports] == transitions[4:]
    for (name, a), b in zip(module.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    assert len(trainer_b.optimizers[0].param_groups) == 3


class DenseModule(L.LightningModule):
    """A tabular classifier whose hidden features are ``[B, C]``: a dense point."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
        self.model = kf.graft(net, ["1"], example_input=torch.zeros(2, 12), gates=PERMISSIVE)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.model(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        return F.cross_entropy(self.model(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def test_a_dense_point_grows_in_lightning():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 12, generator=gen)
    data = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long())
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    growth = GrowthCallback(kf.HeuristicPolicy(germinate_at=0, blend_algorithm_id="gated"))
    trainer = L.Trainer(
        max_epochs=3, callbacks=[growth], logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    module = DenseModule()
    trainer.fit(module, loader, loader)
    slot = module.model.seed_slots["1"]
    assert module.model.host.topologies == {"1": "dense"} and slot.state.blueprint_id == "mlp"
    assert growth.reports[0].transitions.get("1") == ("DORMANT", "GERMINATED", "TRAINING")
    assert slot.stage in (kf.SeedStage.TRAINING, kf.SeedStage.BLENDING)
    in_opt = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert {id(p) for p in slot.seed_parameters()} <= in_opt
