"""``HeuristicPolicy``: when to germinate, fossilize and cull.

A policy is any callable ``policy(model, epoch, metric)`` that acts on a
:class:`MorphogeneticModel` through its public methods (``germinate_seed``,
``advance_stage``, ``cull_seed``). It runs once per epoch, after the metric and
the counterfactuals are recorded and ``step_epoch()`` has run, on every rank with
the same inputs (``Grower`` averages the metric across ranks), so every rank
makes the same decisions.

The heuristic grows one seed at a time:

- germinate in the first empty slot of ``slots`` at epoch ``germinate_at`` (and at
  every later epoch with no seed growing, up to ``max_germinations``), or
  (``germinate_at=None``) on a plateau: the best metric of the last
  ``plateau_epochs`` epochs beats the best before them by less than
  ``min_improvement``; the seed starts TRAINING at once (G1);
- fossilize a PROBATIONARY seed whose counterfactual contribution is at least
  ``fossilize_at`` (G5 still checks it);
- cull a seed that stays in TRAINING more than ``patience`` epochs (it stalled:
  G2 kept refusing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kasmina_fast.lifecycle.gates import MIN_FOSSILIZE_CONTRIBUTION
from kasmina_fast.lifecycle.stages import SeedStage

S = SeedStage
_GROWING = (S.GERMINATED, S.TRAINING, S.BLENDING, S.PROBATIONARY)
#: the default blueprint of each topology
DEFAULT_BLUEPRINT = {"cnn": "conv_light", "transformer": "mlp", "dense": "mlp"}


class HeuristicPolicy:
    """The default policy of :class:`kasmina_fast.Grower` (see the module docstring).

    Args:
        blueprint: the seed's blueprint (default: ``conv_light`` for CNN slots,
            ``mlp`` for transformer slots).
        slots: where seeds may grow, in order of preference (default: every slot).
        germinate_at: germinate at the end of this epoch, and again at the end of
            every later epoch in which no seed is growing (after a fossilization or a
            cull), until ``max_germinations``: pass ``max_germinations=1`` for one seed.
            None: germinate on a plateau.
        plateau_epochs, min_improvement: the plateau test (metric units).
        fossilize_at: the counterfactual contribution that fossilizes (metric units).
        patience: epochs in TRAINING before a stalled seed is culled.
        max_germinations: germinations over the policy's life (None: no bound).
        blend_algorithm_id: the blend of the seeds it germinates.
        blend_mode: how they join the host (``"lerp"`` or ``"valve"``, see ``SeedSlot.germinate``).
        blueprint_options: passed to the blueprint.
    """

    def __init__(
        self,
        blueprint: str | None = None,
        slots: Sequence[str] | None = None,
        *,
        germinate_at: int | None = None,
        plateau_epochs: int = 3,
        min_improvement: float = 0.1,
        fossilize_at: float = MIN_FOSSILIZE_CONTRIBUTION,
        patience: int = 5,
        max_germinations: int | None = None,
        blend_algorithm_id: str = "sigmoid",
        blend_mode: str = "lerp",
        **blueprint_options: bool | int | float | str,
    ) -> None:
        if plateau_epochs < 1 or patience < 0:
            raise ValueError(
                f"HeuristicPolicy: plateau_epochs must be >= 1 and patience >= 0, "
                f"got {plateau_epochs} and {patience}"
            )
        self.blueprint = blueprint
        self.slots = None if slots is None else list(slots)
        self.germinate_at = germinate_at
        self.plateau_epochs = int(plateau_epochs)
        self.min_improvement = float(min_improvement)
        self.fossilize_at = float(fossilize_at)
        self.patience = int(patience)
        self.max_germinations = max_germinations
        self.blend_algorithm_id = blend_algorithm_id
        self.blend_mode = blend_mode
        self.blueprint_options = blueprint_options
        self.history: list[float] = []  # the metric since the last germination
        self.germinations = 0

    def __call__(self, model: Any, epoch: int, metric: float) -> list[str]:
        """Act on ``model``; returns what it did, one line per decision."""
        self.history.append(float(metric))
        decisions = []
        for sid, slot in model.seed_slots.items():
            st = slot.state
            if st is None:
                continue
            cf = st.metrics.counterfactual_contribution
            if slot.stage == S.PROBATIONARY and cf is not None and cf >= self.fossilize_at:
                if model.advance_stage(S.FOSSILIZED, slot=sid).passed:
                    decisions.append(f"fossilize {sid}")
            elif slot.stage == S.TRAINING and st.metrics.epochs_in_current_stage > self.patience:
                model.cull_seed(slot=sid, reason="stalled in TRAINING")
                decisions.append(f"cull {sid}")
        if self._should_germinate(model, epoch):
            sid = self._free_slot(model)
            if sid is not None:
                topology = model.seed_slots[sid].task_config.topology
                blueprint = self.blueprint or DEFAULT_BLUEPRINT[topology]
                model.germinate_seed(
                    blueprint,
                    slot=sid,
                    blend_algorithm_id=self.blend_algorithm_id,
                    blend_mode=self.blend_mode,
                    **self.blueprint_options,
                )
                model.advance_stage(S.TRAINING, slot=sid)  # G1 at once: it trains from the next step
                self.germinations += 1
                self.history.clear()
                decisions.append(f"germinate {blueprint} in {sid}")
        return decisions

    def _should_germinate(self, model: Any, epoch: int) -> bool:
        if self.max_germinations is not None and self.germinations >= self.max_germinations:
            return False
        if any(s.stage in _GROWING for s in model.seed_slots.values()):
            return False  # one seed grows at a time
        if self.germinate_at is not None:
            return epoch >= self.germinate_at
        n = self.plateau_epochs
        if len(self.history) <= n:
            return False
        return max(self.history[-n:]) - max(self.history[:-n]) < self.min_improvement

    def _free_slot(self, model: Any) -> str | None:
        for sid in self.slots or model.slot_ids:
            slot = model.seed_slots[sid]
            if slot.state is not None:
                continue
            limit = model.max_seeds_per_slot
            if limit is not None and model.germinations[sid] >= limit:
                continue
            if model.max_seeds is not None and model.count_active_seeds() >= model.max_seeds:
                return None
            return sid
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to make the same decisions (primitives only)."""
        return {"history": list(self.history), "germinations": self.germinations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [float(x) for x in state["history"]]
        self.germinations = int(state["germinations"])
