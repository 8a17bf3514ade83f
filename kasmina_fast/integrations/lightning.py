"""Growth inside a Lightning ``Trainer``: :class:`GrowthCallback`.

::

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = kf.graft(net, ["2"], example_input=x)
        ...  # training_step, validation_step (returns the loss), configure_optimizers

    trainer = L.Trainer(max_epochs=20, callbacks=[GrowthCallback(policy)])
    trainer.fit(module, train_loader, val_loader)      # resume: ckpt_path="last"/a path

The callback runs :class:`kasmina_fast.Grower` with the trainer's optimizer and lr
scheduler: gradient telemetry before each optimizer step; at the end of each
training epoch the counterfactuals, ``step_epoch()``, the policy and the
optimizer and scheduler kept in sync.

Checkpoints: the lifecycle is in the module's state dict (a ``SeedSlot`` rebuilds
its seed from it when the checkpoint loads, so ``Module.load_from_checkpoint``
gives the grown model), and the callback's own state holds the Grower's and the
policy's state and the seeds' param groups (names and hyperparameters), encoded
as the Hugging Face callback and ``kasmina_fast.checkpoint`` encode them. On
``fit(ckpt_path=...)`` Lightning loads the model (seeds included), then
``configure_optimizers`` puts every parameter into your groups;
``on_fit_start`` moves the seeds' parameters back into groups of their own as
saved, so that Lightning then loads the optimizer's and the scheduler's state
into the same groups: training continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kasmina_fast.lifecycle import persist
from kasmina_fast.training import param_groups as _groups
from kasmina_fast.training.grower import Grower
from kasmina_fast.training.optimizer import find_plane

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - without the lightning extra
    raise ImportError(
        "kasmina_fast.integrations.lightning needs Lightning 2.x: pip install 'kasmina-fast[lightning]'"
    ) from exc


@torch.no_grad()
def negative_val_loss(trainer: pl.Trainer, module: pl.LightningModule) -> float:
    """The default score: -100 x the mean loss that ``module.validation_step`` returns
    over the validation set, weighted by batch size (its ``self.log`` calls are
    silenced for these passes). Higher is better."""
    loaders = trainer.val_dataloaders
    if loaders is None:
        raise ValueError("GrowthCallback: needs validation data (fit(..., val_dataloaders=...)) or evaluate=")
    if not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    was_training = module.training
    module.eval()
    module.log = lambda *a, **k: None  # an instance attribute shadows LightningModule.log
    module.log_dict = lambda *a, **k: None
    total, count = 0.0, 0
    try:
        for loader in loaders:
            for i, batch in enumerate(loader):
                batch = trainer.strategy.batch_to_device(batch)
                loss = module.validation_step(batch, i)
                if loss is None:
                    raise ValueError(
                        "GrowthCallback: validation_step must return the loss (or pass evaluate=)"
                    )
                first = batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values()))
                total += float(loss) * len(first)
                count += len(first)
    finally:
        del module.log, module.log_dict
        module.train(was_training)
    if count == 0:
        raise ValueError("GrowthCallback: the validation set is empty")
    return -100.0 * total / count


class GrowthCallback(pl.Callback):
    """Grows a grafted model inside a Lightning ``Trainer`` (see the module docstring).

    Args:
        policy: ``policy(model, epoch, metric)``; default :class:`kasmina_fast.HeuristicPolicy`.
        evaluate: ``evaluate(trainer, module) -> float``, higher is better; default
            :func:`negative_val_loss`. Called once per epoch, plus once per blending
            slot with its alpha forced to 0.
        telemetry_every: gradient telemetry every this many optimizer steps.
    """

    def __init__(
        self,
        policy: Callable[[Any, int, float], Any] | None = None,
        *,
        evaluate: Callable[[pl.Trainer, pl.LightningModule], float] | None = None,
        telemetry_every: int = 1,
    ) -> None:
        self.policy = policy
        self.evaluate = evaluate or negative_val_loss
        self.telemetry_every = telemetry_every
        self.grower: Grower | None = None
        self.plane: nn.Module | None = None
        self.reports: list[Any] = []
        self._trainer: pl.Trainer | None = None
        self._restored: dict[str, Any] | None = None

    @staticmethod
    def _optim(trainer: pl.Trainer) -> tuple[Any, Any]:
        if len(trainer.optimizers) != 1:
            raise ValueError(f"GrowthCallback: needs exactly one optimizer, got {len(trainer.optimizers)}")
        configs = trainer.lr_scheduler_configs
        if len(configs) > 1:
            raise ValueError(f"GrowthCallback: needs at most one lr scheduler, got {len(configs)}")
        return trainer.optimizers[0], configs[0].scheduler if configs else None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.plane = find_plane(pl_module)
        self._trainer = trainer
        optimizer, scheduler = self._optim(trainer)
        if self._restored is not None:  # before Lightning loads the optimizer: the saved groups
            _groups.add_groups(optimizer, self.plane, scheduler, self._restored["groups"])
        self.grower = Grower(
            pl_module,
            optimizer,
            evaluate=lambda: self.evaluate(trainer, pl_module),
            lr_scheduler=scheduler,
            policy=self.policy,
            telemetry_every=self.telemetry_every,
        )
        if self._restored is not None:
            self.grower.load_state_dict(self._restored["grower"])
            self._restored = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grower.after_backward()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.reports.append(self.grower.end_epoch())

    def state_dict(self) -> dict[str, Any]:
        if self.grower is None:
            return {}
        optimizer, scheduler = self._optim(self._trainer)
        training = _groups.training_state(self.plane, optimizer, scheduler, self.grower, with_state=False)
        return {persist.GROWTH_KEY: persist.encode(training)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # (an older checkpoint holds the training state as a plain dict)
        self._restored = persist.decode(state_dict.get(persist.GROWTH_KEY, state_dict)) or None


__all__ = ["GrowthCallback", "negative_val_loss"]
