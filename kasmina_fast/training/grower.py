"""``Grower``: the growth protocol around any training loop, in two calls.

::

    grower = kf.Grower(model, opt, evaluate=val_accuracy, lr_scheduler=sched)
    for epoch in range(epochs):
        for x, y in loader:
            loss_fn(model(x), y).backward()
            grower.after_backward()   # gradient telemetry: device tensors, no sync
            opt.step(); sched.step(); opt.zero_grad()
        grower.end_epoch()            # measure, step the lifecycle, decide, sync the optimizer

``end_epoch`` does, in this order, what every epoch of growth needs: the one
host sync of the gradient telemetry; ``evaluate()`` once, and once more per
BLENDING/PROBATIONARY slot with that slot's alpha forced to 0 (its
counterfactual contribution = metric - metric without it); the metric recorded
for every seed; ``step_epoch()`` on every slot (a culled slot frees itself only
there); the policy; :func:`sync_optimizer`. Under ``torch.distributed`` the
metric and the counterfactuals are averaged over the ranks first, so the policy
makes the same decisions everywhere (gate decisions are agreed by the slots).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from kasmina_fast.lifecycle.policy import HeuristicPolicy
from kasmina_fast.lifecycle.stages import SeedStage
from kasmina_fast.training.optimizer import find_plane, sync_optimizer

S = SeedStage


@dataclasses.dataclass
class EpochReport:
    """What :meth:`Grower.end_epoch` measured and decided."""

    epoch: int
    metric: float
    #: slot -> metric minus the metric with that slot's alpha forced to 0
    counterfactuals: dict[str, float]
    #: slot -> every stage it was in during the epoch, in order (the stage before, then
    #: each stage it entered: ``("DORMANT", "GERMINATED", "TRAINING")``), for every slot
    #: whose stage changed
    transitions: dict[str, tuple[str, ...]]
    #: what the policy returned (HeuristicPolicy: one line per decision)
    decisions: Any
    #: the optimizer's param groups changed (rebuild DDP when architecture_version changed)
    optimizer_changed: bool
    architecture_version: int


class Grower:
    """Runs the growth protocol of a :class:`MorphogeneticModel` in a plain loop.

    Args:
        model: the grown model (or a module holding it: DDP, a compiled module).
        optimizer: trains the model; new seeds join it, culled ones leave it.
        evaluate: ``evaluate() -> float``, the validation metric, higher is better
            (e.g. accuracy in percent: the gates' thresholds are in its units).
            Called once per epoch plus once per blending slot; put the model in
            eval mode and under ``torch.no_grad()`` inside it.
        lr_scheduler: the optimizer's schedule; new groups follow it.
        policy: ``policy(model, epoch, metric)``; default :class:`HeuristicPolicy`.
        telemetry_every: capture gradient telemetry every this many ``after_backward`` calls.
        average_over_ranks: under ``torch.distributed``, average the metric and
            counterfactuals over the ranks (so every rank's policy sees the same numbers).
            Turn it off only if ``evaluate`` already returns the same numbers on every
            rank: ranks that decide differently call different collectives.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        evaluate: Callable[[], float],
        lr_scheduler: Any = None,
        policy: Callable[[Any, int, float], Any] | None = None,
        telemetry_every: int = 1,
        average_over_ranks: bool = True,
    ) -> None:
        if telemetry_every < 1:
            raise ValueError(f"Grower: telemetry_every must be >= 1, got {telemetry_every}")
        self.plane = find_plane(model)
        self.model = model
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.evaluate = evaluate
        self.policy = HeuristicPolicy() if policy is None else policy
        self.telemetry_every = int(telemetry_every)
        self.average_over_ranks = average_over_ranks
        self.epoch = 0
        self._calls = 0
        self._telemetry: dict[str, dict[str, Tensor]] = {}
        sync_optimizer(optimizer, model, lr_scheduler)  # seeds that exist already

    def after_backward(self) -> None:
        """Gradient telemetry of every live seed (device tensors, no host sync);
        call after ``loss.backward()``, before the optimizer step zeroes nothing."""
        self._calls += 1
        if self._calls % self.telemetry_every:
            return
        for sid, slot in self.plane._slots.items():  # (the slots themselves: no dict copy per step)
            if slot.seed is not None:
                stats = slot.capture_gradient_telemetry()
                if stats is not None:
                    self._telemetry[sid] = stats

    def end_epoch(self) -> EpochReport:
        """Measure, record, ``step_epoch()``, run the policy, sync the optimizer."""
        plane = self.plane
        slots = plane.seed_slots
        for sid, stats in self._telemetry.items():
            slots[sid].materialize_gradient_telemetry(stats)
        self._telemetry.clear()
        metric = float(self.evaluate())
        counterfactuals = {}
        for sid, slot in slots.items():
            if slot.stage in (S.BLENDING, S.PROBATIONARY):
                with slot.force_alpha(0.0):
                    counterfactuals[sid] = metric - float(self.evaluate())
        metric, counterfactuals = self._averaged(metric, counterfactuals)
        for sid, slot in slots.items():
            if slot.state is not None:
                slot.state.metrics.record_accuracy(metric)
                slot.state.metrics.counterfactual_contribution = counterfactuals.get(sid)
        before = {sid: (s.stage.name, s.stage_changes) for sid, s in slots.items()}
        plane.step_epoch()
        decisions = self.policy(plane, self.epoch, metric)
        changed = sync_optimizer(self.optimizer, self.model, self.lr_scheduler)
        transitions = {}
        for sid, s in slots.items():
            stage, count = before[sid]
            if s.stage_changes > count:
                transitions[sid] = (stage, *list(s.stage_log)[count - s.stage_changes :])
        report = EpochReport(
            self.epoch, metric, counterfactuals, transitions, decisions, changed, plane.architecture_version
        )
        self.epoch += 1
        return report

    def _averaged(self, metric: float, cfs: dict[str, float]) -> tuple[float, dict[str, float]]:
        import torch.distributed as dist

        if not (self.average_over_ranks and dist.is_available() and dist.is_initialized()):
            return metric, cfs
        world = dist.get_world_size()
        if world == 1:
            return metric, cfs
        device = self.plane.seed_slots[self.plane.slot_ids[0]].device
        if dist.get_backend() == "gloo":
            device = torch.device("cpu")
        # the counterfactual slots are the same on every rank (stages are agreed)
        t = torch.tensor([metric, *cfs.values()], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        values = (t / world).tolist()
        return values[0], dict(zip(cfs, values[1:]))

    def state_dict(self) -> dict[str, Any]:
        """The loop's own state: the epoch, the policy's, and the telemetry captured since
        the last ``end_epoch`` (CPU tensors; ``weights_only`` loads it all). The model's
        lifecycle is in the model's state dict."""
        policy_state = self.policy.state_dict() if hasattr(self.policy, "state_dict") else None
        telemetry = {sid: t["stats"].cpu() for sid, t in self._telemetry.items()}
        return {"epoch": self.epoch, "calls": self._calls, "policy": policy_state, "telemetry": telemetry}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self._calls = int(state["calls"])
        if state.get("policy") is not None and hasattr(self.policy, "load_state_dict"):
            self.policy.load_state_dict(state["policy"])
        slots = self.plane.seed_slots
        self._telemetry = {
            sid: {"stats": t.to(slots[sid].device)} for sid, t in state.get("telemetry", {}).items()
        }
