"""Growth inside Hugging Face ``transformers.Trainer``: :class:`GrowthCallback`.

::

    grown = kf.graft(model, ["transformer.h.1"], example_input={"input_ids": ids})
    trainer = Trainer(model=grown, args=args, train_dataset=train, eval_dataset=val,
                      callbacks=[GrowthCallback(policy)])
    trainer.train()            # later: trainer.train(resume_from_checkpoint=True)

The grafted model shows the user's forward signature, so ``Trainer`` keeps the
dataset columns as usual. The callback runs :class:`kasmina_fast.Grower`: gradient
telemetry before each optimizer step; at each evaluation the counterfactuals,
``step_epoch()``, the policy, and the Trainer's own optimizer and lr scheduler
kept in sync (new seeds join them, culled ones leave).

Saving. ``Trainer`` saves a model that is not a ``PreTrainedModel`` as a
safetensors file of ``model.state_dict()``: the grown model's state dict holds
tensors only (the lifecycle encoded as uint8 tensors, a tied weight once), so
``trainer.save_model()`` works, and its ``model.safetensors`` (or a
``checkpoint-N/model.safetensors``) loads into a freshly grafted model with
``load_state_dict``: the seeds are rebuilt. In a checkpoint, one more uint8 tensor,
``kasmina_growth``, carries what only a resumed run needs: the seeds' param groups
with their optimizer state and schedule entries (taken out of the optimizer and
the scheduler from the step the Trainer decides to save until ``on_save``, so
``optimizer.pt`` and ``scheduler.pt`` hold the groups the Trainer itself makes)
and the Grower's state (with the pending telemetry). On
``train(resume_from_checkpoint=...)`` the callback keeps the seeds aside while the
Trainer builds its optimizer and loads its state, then puts the seeds and their
groups back: training continues with the same stages and the same losses as if
never stopped. ``save_strategy="best"`` (decided after the callback's last look)
and ``load_best_model_at_end`` are refused.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kasmina_fast.lifecycle import persist
from kasmina_fast.training import param_groups as _groups
from kasmina_fast.training.grower import Grower
from kasmina_fast.training.optimizer import find_plane

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - without the hf extra
    raise ImportError(
        "kasmina_fast.integrations.hf needs Hugging Face transformers: pip install 'kasmina-fast[hf]'"
    ) from exc

#: the state-dict key that carries the training state in a Trainer checkpoint
GROWTH_KEY = persist.GROWTH_KEY


@torch.no_grad()
def negative_eval_loss(model: nn.Module, dataloader: Any) -> float:
    """The default score: -100 x the mean of ``model(**batch).loss`` over the evaluation
    set, weighted by batch size (higher is better; the gates' point thresholds then
    read as hundredths of a loss unit)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for batch in dataloader:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        out = model(**batch)
        loss = out["loss"] if isinstance(out, dict) else out[0]
        n = next(v for v in batch.values() if torch.is_tensor(v)).shape[0]
        total += float(loss) * n
        count += n
    model.train(was_training)
    if count == 0:
        raise ValueError("GrowthCallback: the evaluation set is empty")
    return -100.0 * total / count


def _growth_keys(plane: nn.Module, keys: Any) -> list[str]:
    """The ``keys`` (of ``plane``'s state dict) that growth owns: the slots' and every extra state."""
    slots = tuple(
        n + "." for n, m in plane.named_modules() if m is not plane and hasattr(m, "seed_parameters")
    )
    return [k for k in keys if k.endswith("_extra_state") or k.startswith(slots)]


def _value(option: Any) -> str:
    """A TrainingArguments strategy (an enum or a string) as its string."""
    return str(getattr(option, "value", option))


class GrowthCallback(TrainerCallback):
    """Grows a grafted model inside ``transformers.Trainer`` (see the module docstring).

    Args:
        policy: ``policy(model, epoch, metric)``; default :class:`kasmina_fast.HeuristicPolicy`.
        evaluate: ``evaluate(model, eval_dataloader) -> float``, higher is better; default
            :func:`negative_eval_loss`. Called once per evaluation, plus once per
            blending slot with its alpha forced to 0.
        model: the :class:`MorphogeneticModel`, where the Trainer's model only holds one.
        telemetry_every: gradient telemetry every this many optimizer steps.
    """

    def __init__(
        self,
        policy: Callable[[Any, int, float], Any] | None = None,
        *,
        evaluate: Callable[[nn.Module, Any], float] | None = None,
        model: nn.Module | None = None,
        telemetry_every: int = 1,
    ) -> None:
        self.policy = policy
        self.evaluate = evaluate or negative_eval_loss
        self.plane = model
        self.telemetry_every = telemetry_every
        self.grower: Grower | None = None
        self.reports: list[Any] = []
        self._eval_loader: Any = None
        self._restored: dict[str, Any] | None = None  # kasmina_growth of a checkpoint being resumed
        self._stash: dict[str, Any] | None = None  # the training state, while the Trainer saves
        self._hooks: list[Any] = []

    # ---- set-up -------------------------------------------------------------------------

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self._attach(model)

    def _attach(self, model: nn.Module | None) -> None:
        if self.plane is None:
            if model is None:
                raise TypeError("GrowthCallback: pass model= (the grown model)")
            self.plane = find_plane(model)
        if not self._hooks:
            self._hooks = [
                # (partials: the public hook API marks the callable, which a bound method refuses)
                self.plane.register_state_dict_post_hook(
                    functools.partial(GrowthCallback._saving_state_dict, self)
                ),
                self.plane.register_load_state_dict_pre_hook(
                    functools.partial(GrowthCallback._loading_state_dict, self)
                ),
            ]

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if _value(getattr(args, "save_strategy", "")) == "best" or getattr(
            args, "load_best_model_at_end", False
        ):
            raise ValueError(
                "GrowthCallback: save_strategy='best' and load_best_model_at_end are not supported (a best "
                "checkpoint's host weights would not match the seeds grown since)"
            )
        if _value(getattr(args, "eval_strategy", "no")) == "no":
            raise ValueError(
                "GrowthCallback: growth steps at each evaluation; set eval_strategy ('steps' or 'epoch') "
                "and an eval_dataset"
            )
        self._attach(model)
        self.grower = Grower(
            self.plane,
            optimizer,
            evaluate=lambda: self.evaluate(self.plane, self._eval_loader),
            lr_scheduler=lr_scheduler,
            policy=self.policy,
            telemetry_every=self.telemetry_every,
        )
        if self._restored is not None:
            self._resume(self._restored, optimizer, lr_scheduler)
            self._restored = None

    # ---- training -----------------------------------------------------------------------

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grower.after_backward()

    def on_step_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if control.should_save:
            self._arm(optimizer, lr_scheduler)

    on_epoch_end = on_step_end  # (save_strategy="epoch" decides there)

    def on_evaluate(
        self, args, state, control, optimizer=None, lr_scheduler=None, eval_dataloader=None, **kw
    ):
        if self.grower is None:  # an evaluation outside train()
            return
        self._disarm(optimizer, lr_scheduler)
        self._eval_loader = eval_dataloader
        self.reports.append(self.grower.end_epoch())
        self._eval_loader = None
        if control.should_save:
            self._arm(optimizer, lr_scheduler)

    def on_save(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self._disarm(optimizer, lr_scheduler)

    def on_train_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self._disarm(optimizer, lr_scheduler)

    # ---- checkpoints --------------------------------------------------------------------

    def _arm(self, optimizer, lr_scheduler) -> None:
        """The Trainer saves next: take the seeds' groups out of its optimizer and scheduler."""
        if self._stash is not None:
            return
        plane = self.plane
        self._stash = _groups.training_state(plane, optimizer, lr_scheduler, self.grower, with_state=True)
        _groups.remove_groups(optimizer, lr_scheduler, _groups.seed_group_indices(optimizer, plane))

    def _disarm(self, optimizer, lr_scheduler) -> None:
        if self._stash is not None:
            stash, self._stash = self._stash, None
            _groups.add_groups(optimizer, self.plane, lr_scheduler, stash["groups"])

    def _saving_state_dict(self, module, state_dict, prefix, local_metadata):
        """While the Trainer saves a checkpoint: the training state as ``kasmina_growth``."""
        if self._stash is None or prefix:
            return
        state_dict[GROWTH_KEY] = persist.encode(self._stash)  # (the Grower's pending telemetry in)

    def _loading_state_dict(self, module, state_dict, prefix, *args, **kwargs):
        """A Trainer checkpoint being loaded (the model set its ``kasmina_growth`` aside in
        ``training_state``): the seeds wait, with it, for on_train_begin, after the Trainer
        has built its optimizer and loaded its state."""
        training, module.training_state = module.training_state, None
        if training is None:
            return
        ours = [k[len(prefix) :] for k in state_dict if k.startswith(prefix)]
        model = {k: state_dict.pop(prefix + k) for k in _growth_keys(module, ours)}
        current = module.state_dict()  # the growth keys as they are now: nothing missing
        for key in _growth_keys(module, current):
            state_dict.setdefault(prefix + key, current[key])
        self._restored = {"model": model, **training}

    def _resume(self, growth: dict[str, Any], optimizer, lr_scheduler) -> None:
        plane = self.plane
        plane.load_state_dict(growth["model"], strict=False)  # rebuilds the seeds, loads their weights
        groups = growth.get("groups", growth.get("optimizer"))  # ("optimizer": an older checkpoint's key)
        _groups.add_groups(optimizer, plane, lr_scheduler, groups)
        self.grower.load_state_dict(growth["grower"])


__all__ = ["GROWTH_KEY", "GrowthCallback", "negative_eval_loss"]
