"""``SeedSlot``: one seed location in a host network (spec 2.1, 4.1).

The slot is thin: its forward is one fast op (``ste`` in TRAINING, ``blend``
after it) with alpha held in a 0-d buffer, so alpha ramps and
``override_alpha`` never recompile a compiled caller; every Python decision
(stages, gates, schedules) happens in ``step_epoch`` / ``advance_stage`` /
``cull``, outside the forward. Each decision that could differ between DDP
ranks goes through one MIN all-reduce that every rank reaches in the same
order (``consensus.agree``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from kasmina_fast.blueprints import BlueprintRegistry
from kasmina_fast.lifecycle import persist
from kasmina_fast.lifecycle.consensus import agree
from kasmina_fast.lifecycle.gates import QualityGates
from kasmina_fast.lifecycle.isolation import GradientIsolationMonitor
from kasmina_fast.lifecycle.schedules import BlendAlgorithm, check_blend_algorithm, create_blend_algorithm
from kasmina_fast.lifecycle.stages import (
    GateResult,
    SeedStage,
    TaskConfig,
    is_active_stage,
    is_failure_stage,
    is_valid_transition,
)
from kasmina_fast.lifecycle.state import SeedMetrics, SeedState
from kasmina_fast.lifecycle.telemetry import TelemetryEvent, TelemetryEventType
from kasmina_fast.ops import blend, ste, valve

S = SeedStage
_SCHEDULED = (S.BLENDING, S.PROBATIONARY, S.FOSSILIZED)
#: epochs in TRAINING without a gradient measurement before the slot warns (once per seed)
STALL_WARNING_EPOCHS = 3
#: stage changes a slot remembers (``SeedSlot.stage_log``)
STAGE_LOG = 32
logger = logging.getLogger("kasmina_fast")


#: How a seed joins its host once blending: ``lerp`` = ``kasmina.blend`` (the seed
#: replaces the host's features as alpha goes to 1), ``valve`` = ``kasmina.valve`` (the
#: seed scales them by ``1 + alpha tanh(seed - host)``, within ``[1 - alpha, 1 + alpha]``).
BLEND_MODES = ("lerp", "valve")


def _check_blend_mode(mode: str, where: str) -> None:
    if mode not in BLEND_MODES:
        raise ValueError(
            f"SeedSlot.{where}: blend_mode must be one of {', '.join(BLEND_MODES)}, got {mode!r}"
        )


def _check_target(value: float, epochs: int | None, where: str) -> None:
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(
            f"SeedSlot.{where}: alpha_target must be in (0, 1], got {value} (use cull to remove)"
        )
    if epochs is not None and int(epochs) < 1:
        raise ValueError(f"SeedSlot.{where}: blend_epochs must be >= 1, got {epochs}")


def _delivers_events(method):
    """The slot's change completes before any telemetry callback runs: events are queued
    while ``method`` runs and delivered after it, so a callback that raises raises from
    a consistent slot (a cull done, no orphan seed attached)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self._event_queue is not None:  # nested in another such call: that one delivers
            return method(self, *args, **kwargs)
        self._event_queue = []
        try:
            result = method(self, *args, **kwargs)
        except BaseException:
            self._deliver()
            raise
        self._deliver(raise_first=True)
        return result

    return wrapper


class SeedShapeError(AssertionError, ValueError):
    """A seed changed the feature shape (an AssertionError per the spec, and a ValueError)."""


class SeedSlot(nn.Module):
    """Manages the seed at one injection point.

    Args:
        slot_id: unique name of the injection point.
        channels: channels (CNN), embedding width (transformer) or features (dense) at that point.
        device: where the seed lives.
        gates: quality gates (default ``QualityGates()``).
        on_telemetry: called with every :class:`TelemetryEvent` (not in fast_mode).
        fast_mode: no telemetry events (``on_telemetry`` is not called). It never
            weakens a gate: the gradient telemetry still works and G2 still needs it.
        task_config: topology and dwell settings (default: CNN, 25 epochs).
        embargo_epochs: epochs in EMBARGOED after a cull (then 1 in RESETTING).
    """

    def __init__(
        self,
        slot_id: str,
        channels: int,
        device: torch.device | str = "cpu",
        gates: QualityGates | None = None,
        on_telemetry: Callable[[TelemetryEvent], None] | None = None,
        fast_mode: bool = False,
        task_config: TaskConfig | None = None,
        *,
        embargo_epochs: int = 5,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"SeedSlot: channels must be >= 1, got {channels}")
        self.slot_id = slot_id
        self.channels = int(channels)
        self.gates = gates or QualityGates()
        self.on_telemetry = on_telemetry
        self.fast_mode = bool(fast_mode)
        self.task_config = task_config or TaskConfig(topology="cnn")
        self.embargo_epochs = int(embargo_epochs)
        self.seed: nn.Module | None = None
        self.alpha_schedule: BlendAlgorithm | None = None
        self._state: SeedState | None = None
        self.register_buffer("alpha", torch.zeros((), device=device))
        self.isolation_monitor = GradientIsolationMonitor()
        self._host_module: tuple = ()  # a tuple: the host is not registered as a child
        # What forward reads are plain module attributes (bools, a tensor or None),
        # *reassigned* on every change (never mutated in place): torch.compile guards
        # on those, while a stage tested with `in frozenset(...)` or read from a
        # nested object was seen to escape its guards (a stale graph after a stage
        # change, torch 2.13). tests/lifecycle/test_slot_compile.py checks this.
        self._stage = S.DORMANT
        self._active = False  # the seed takes part in forward
        self._use_ste = False  # TRAINING: straight-through estimator
        self._isolate = False  # seed input detached from the host
        self._gated = False  # a per-sample gate scales alpha
        self._valve = False  # the seed's blend_mode is "valve"
        self._forced_alpha: Tensor | None = None
        #: (mask, values), both [N, 1, ...]: samples where mask holds take values as alpha
        #: (MorphogeneticModel.counterfactual_forward); None otherwise
        self._block_alpha: tuple[Tensor, Tensor] | None = None
        self._probe_cache: dict[tuple[str, int, str], Tensor] = {}
        self._germinations = 0
        self._event_queue: list[TelemetryEvent] | None = None  # see _delivers_events
        self._captured = False  # capture_gradient_telemetry ran for this seed
        self._stall_warned = False
        #: every stage change in order (the newest STAGE_LOG), counted by stage_changes:
        #: what ``Grower`` reports as an epoch's transitions
        self.stage_log: collections.deque[str] = collections.deque(maxlen=STAGE_LOG)
        self.stage_changes = 0
        #: Called with every module the slot creates (a seed, a gated blend's gate)
        #: before it is used: how a sharded host shards them (MorphogeneticModel sets it).
        self.place_module: Callable[[nn.Module], None] | None = None

    # ---- properties -----------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.alpha.device

    @property
    def stage(self) -> SeedStage:
        return self._stage

    @property
    def state(self) -> SeedState | None:
        """The seed's :class:`SeedState` (None without a seed); its stage moves only
        through this slot (``advance_stage``, ``step_epoch``, ``cull``)."""
        return self._state

    @state.setter
    def state(self, value: SeedState | None) -> None:
        raise RuntimeError(
            f"SeedSlot {self.slot_id!r}: the state is the slot's own; germinate(), cull() and "
            "load_state_dict() change it, and advance_stage() / step_epoch() move its stage"
        )

    @property
    def is_active(self) -> bool:
        """A live seed is in the slot (GERMINATED to FOSSILIZED)."""
        return self.seed is not None

    @property
    def active_seed_params(self) -> int:
        """Parameters of the live seed and its schedule (0 without one)."""
        return sum(p.numel() for p in self.seed_parameters())

    @property
    def alpha_is_forced(self) -> bool:
        """``force_alpha`` is in effect (e.g. while a counterfactual is measured)."""
        return self._forced_alpha is not None

    @property
    def isolate_gradients(self) -> bool:
        """Seed input detached from the host: in TRAINING; in BLENDING/PROBATIONARY for CNN
        and dense points (transformers co-adapt); never once FOSSILIZED."""
        return self._isolate

    def _set_stage(self, stage: SeedStage) -> None:
        """Mirror the stage into the flags forward reads (see __init__)."""
        self._stage = stage
        self._active = is_active_stage(stage) and self.seed is not None
        self._use_ste = stage == S.TRAINING
        if stage == S.TRAINING:
            self._isolate = True
        elif stage in (S.BLENDING, S.PROBATIONARY):
            self._isolate = self.task_config.topology != "transformer"
        else:
            self._isolate = False
        schedule = self.alpha_schedule
        # a fossilized gated seed keeps its gate: it computes what it computed in PROBATIONARY
        self._gated = stage in _SCHEDULED and schedule is not None and schedule.gated
        self._valve = self._state is not None and self._state.blend_mode == "valve"

    def seed_parameters(self) -> list[nn.Parameter]:
        """The seed's parameters and its schedule's (a gated blend's gate): what an optimizer trains."""
        params = [] if self.seed is None else list(self.seed.parameters())
        if self.alpha_schedule is not None:
            params += list(self.alpha_schedule.parameters())
        return params

    # ---- forward --------------------------------------------------------------------------

    def forward(self, host_features: Tensor, override_alpha: float | Tensor | None = None) -> Tensor:
        """Host features through the slot: unchanged without an active seed, the STE in
        TRAINING, ``blend`` (or ``valve``, the seed's ``blend_mode``) after it.
        ``override_alpha`` (thread-safe) or ``force_alpha`` fix alpha for this call
        (e.g. 0 for the counterfactual)."""
        if not self._active:
            return host_features
        seed_in = host_features.detach() if self._isolate else host_features
        seed_out = self.seed(seed_in)
        if (
            self._use_ste
            and override_alpha is None
            and self._forced_alpha is None
            and self._block_alpha is None
        ):
            return ste(host_features, seed_out)
        alpha = self._alpha_for(seed_in, override_alpha)
        if self._valve:
            return valve(host_features, seed_out, alpha, self._isolate)
        return blend(host_features, seed_out, alpha)

    def _alpha_for(self, seed_in: Tensor, override_alpha: float | Tensor | None) -> Tensor | float:
        """Alpha for this call; a gate reads the seed's input (detached when isolated, so
        that the host's input gradient is exactly ``(1 - w) g``)."""
        if override_alpha is not None:
            return override_alpha
        if self._forced_alpha is not None:
            return self._forced_alpha
        alpha = self.alpha * self.alpha_schedule(seed_in) if self._gated else self.alpha
        if self._block_alpha is not None:  # (in TRAINING self.alpha is 0: the STE's value)
            mask, values = self._block_alpha
            alpha = torch.where(mask, values, alpha)
        return alpha

    @contextlib.contextmanager
    def force_alpha(self, value: float) -> Iterator[None]:
        """Fix alpha inside the block (nests; not thread-safe: use ``override_alpha`` with DDP/threads)."""
        previous = self._forced_alpha
        self._forced_alpha = torch.full((), float(value), device=self.device)
        try:
            yield
        finally:
            self._forced_alpha = previous

    # ---- lifecycle ------------------------------------------------------------------------

    @_delivers_events
    def germinate(
        self,
        blueprint_id: str,
        seed_id: str | None = None,
        host_module: nn.Module | Iterable[nn.Parameter] | None = None,
        blend_algorithm_id: str = "sigmoid",
        *,
        alpha_target: float = 1.0,
        blend_epochs: int | None = None,
        blend_mode: str = "lerp",
        **blueprint_options: bool | int | float | str,
    ) -> SeedState:
        """Create a seed from a blueprint (``blueprint_options`` go to its factory), check it
        keeps the feature shape, and enter GERMINATED (G0). The forward stays the host's
        until the next ``step_epoch()`` (or ``advance_stage(SeedStage.TRAINING)``) passes
        G1 and starts TRAINING. In BLENDING alpha ramps to ``alpha_target`` over
        ``blend_epochs`` step_epochs (default: the task config's ``blending_steps``) and
        holds there; below 1 the seed stays in BLENDING (G3 needs 1) until
        :meth:`set_alpha_target` moves it. ``blend_mode`` (``BLEND_MODES``): how the
        seed joins the host from BLENDING on, FOSSILIZED included.

        Raises:
            RuntimeError: the slot holds a seed that is not failed, or is still cleaning up after a cull.
            ValueError: unknown blueprint, topology, option or blend algorithm (listing what exists).
            SeedShapeError: the seed changes the feature shape.
        """
        if self.state is not None:
            st = self.state
            if is_failure_stage(st.stage):
                raise RuntimeError(
                    f"SeedSlot {self.slot_id!r}: seed {st.seed_id!r} was culled and the slot is in "
                    f"{st.stage.name}; it can germinate again once DORMANT"
                )
            raise RuntimeError(
                f"SeedSlot {self.slot_id!r} already holds seed {st.seed_id!r} in {st.stage.name}; "
                "cull it first"
            )
        check_blend_algorithm(blend_algorithm_id)
        _check_blend_mode(blend_mode, "germinate")
        _check_target(alpha_target, blend_epochs, "germinate")
        seed = BlueprintRegistry.create(
            self.task_config.topology, blueprint_id, self.channels, **blueprint_options
        ).to(self.device)
        self._check_shape(seed, blueprint_id)
        self._germinations += 1
        state = SeedState(
            seed_id=seed_id or f"{self.slot_id}-{blueprint_id}-{self._germinations}",
            blueprint_id=blueprint_id,
            slot_id=self.slot_id,
            stage=S.DORMANT,
            blend_algorithm_id=blend_algorithm_id,
            blend_mode=blend_mode,
            blueprint_options=dict(blueprint_options),
            alpha_target=float(alpha_target),
            blend_epochs=int(blend_epochs or 0),
        )
        g0 = self.gates.check(S.GERMINATED, state)
        if not g0.passed:
            raise ValueError(f"SeedSlot {self.slot_id!r}: {g0.message}")
        self._place(seed)
        self.seed = seed
        self._state = state
        self._captured = self._stall_warned = False
        state._held_by(self.slot_id)
        self.attach_host(host_module)
        state.metrics.seed_param_count = sum(p.numel() for p in seed.parameters())
        self._transition(S.GERMINATED, announce=False)  # SEED_GERMINATED says it
        self._emit(
            TelemetryEventType.SEED_GERMINATED,
            {
                "blueprint_id": blueprint_id,
                "seed_id": state.seed_id,
                "params": state.metrics.seed_param_count,
            },
        )
        return state

    def attach_host(self, host_module: nn.Module | Iterable[nn.Parameter] | None) -> None:
        """The host whose gradients the G2 telemetry compares with the seed's
        (call again after restoring a checkpoint)."""
        if host_module is not None and not isinstance(host_module, nn.Module):
            host_module = list(host_module)
        self._host_module = () if host_module is None else (host_module,)
        self.isolation_monitor.register(host_module, self.seed)
        if self.state is not None:
            self.state.metrics.host_param_count = self.isolation_monitor.host_param_count

    @_delivers_events
    def advance_stage(self, target_stage: SeedStage) -> GateResult:
        """Try to move the seed to ``target_stage`` through its gate (agreed across ranks).

        PROBATIONARY -> FOSSILIZED happens only here (G5), never automatically.
        A failure stage is refused (use :meth:`cull`), as is any edge not in the diagram.
        """
        target = SeedStage(target_stage)
        st = self.state
        if st is None:
            result = GateResult(None, False, 0.0, (), ("seed_present",), "no seed in the slot")
        elif is_failure_stage(target):
            result = GateResult(
                None, False, 0.0, (), ("not_failure_stage",), f"use cull() to reach {target.name}"
            )
        elif st.stage == S.PROBATIONARY and target == S.BLENDING:
            result = GateResult(
                None, False, 0.0, (), ("valid_transition",), "use set_alpha_target() to go back to BLENDING"
            )
        elif not is_valid_transition(st.stage, target):
            result = GateResult(
                None, False, 0.0, (), ("valid_transition",), f"no transition {st.stage.name} -> {target.name}"
            )
        else:
            result = self.gates.check(target, st)
        agreed = agree(result.passed, self.device)
        if result.passed and not agreed:
            result = dataclasses.replace(
                result, passed=False, message=result.message + "; not unanimous across ranks"
            )
        if agreed:
            outcome = self._outcome_payload() if target == S.FOSSILIZED else None  # (before the stage resets)
            self._transition(target)
            if outcome is not None:
                self._emit(TelemetryEventType.SEED_FOSSILIZED, outcome)
        return result

    @_delivers_events
    def set_alpha_target(self, value: float, epochs: int | None = None) -> None:
        """Ramp alpha from where it is to ``value`` over ``epochs`` step_epochs (default:
        the task config's ``blending_steps``) and hold it there. For a seed that holds:
        BLENDING with its ramp done, or PROBATIONARY (a target below 1 takes it back to
        BLENDING, its gate kept). Alpha stays the slot's 0-d buffer: no recompile.

        Raises:
            RuntimeError: no seed, or one that is not holding (TRAINING, mid-ramp, FOSSILIZED...).
            ValueError: ``value`` outside (0, 1] or ``epochs`` < 1.
        """
        _check_target(value, epochs, "set_alpha_target")
        st = self.state
        if st is not None and st.prune_epochs > 0:
            raise RuntimeError(f"SeedSlot {self.slot_id!r}: seed {st.seed_id!r} is being pruned")
        steps = self._ramp_steps(st) if st is not None else 0
        holding = st is not None and (
            st.stage == S.PROBATIONARY or (st.stage == S.BLENDING and st.blending_step >= steps)
        )
        if not holding:
            where = "no seed" if st is None else f"seed {st.seed_id!r} in {st.stage.name}"
            raise RuntimeError(
                f"SeedSlot {self.slot_id!r}: set_alpha_target needs a seed that holds its alpha "
                f"(BLENDING with its ramp done, or PROBATIONARY); {where}"
            )
        if st.stage == S.PROBATIONARY:
            if value >= 1.0:
                return  # there already
            self._transition(S.BLENDING)  # back, keeping the schedule and alpha
        st.alpha_start, st.alpha_target = float(self.alpha), float(value)
        st.blend_epochs, st.blending_step = int(epochs or 0), 0

    @_delivers_events
    def schedule_prune(self, epochs: int, reason: str = "scheduled_prune") -> bool:
        """Fade alpha from where it is to 0 over ``epochs`` step_epochs, then cull with
        ``reason``; the seed's and gate's parameters are frozen meanwhile
        (``requires_grad=False``), the host still trains through the blend. A seed not
        yet blending, or ``epochs=0``, is culled at once. Returns True when the seed was
        culled now.

        Raises:
            RuntimeError: no live seed, or a FOSSILIZED one (it is part of the host).
        """
        st = self.state
        if st is None or is_failure_stage(st.stage) or st.stage == S.FOSSILIZED:
            where = "no live seed" if st is None or is_failure_stage(st.stage) else "a FOSSILIZED seed"
            raise RuntimeError(f"SeedSlot {self.slot_id!r}: schedule_prune needs a seed to prune; {where}")
        if int(epochs) < 0:
            raise ValueError(f"SeedSlot.schedule_prune: epochs must be >= 0, got {epochs}")
        if int(epochs) == 0 or st.stage not in (S.BLENDING, S.PROBATIONARY):
            return self.cull(reason)
        if st.stage == S.PROBATIONARY:
            self._transition(S.BLENDING)  # the fade runs in BLENDING (schedule and alpha kept)
        st.prune_epochs = st.prune_total = int(epochs)
        st.prune_from, st.prune_reason = float(self.alpha), reason
        self._freeze_if_pruning()
        return False

    def _ramp_steps(self, st: SeedState) -> int:
        """The step_epochs of the seed's current alpha ramp."""
        return st.blend_epochs or self.task_config.blending_steps

    def _freeze_if_pruning(self) -> None:
        if self.state is not None and self.state.prune_epochs > 0:
            for p in self.seed_parameters():
                p.requires_grad_(False)

    @_delivers_events
    def cull(self, reason: str = "manual") -> bool:
        """Remove the seed. False (nothing done) for FOSSILIZED seeds, an empty slot or
        a seed already culled."""
        st = self.state
        if st is None or is_failure_stage(st.stage) or st.stage == S.FOSSILIZED:
            return False
        outcome = {"reason": reason, **self._outcome_payload(params=False)}  # (before the stage resets)
        st.cull_reason = reason
        st.epochs_since_cull = 0
        self._transition(S.CULLED)
        self._emit(TelemetryEventType.SEED_CULLED, outcome)
        self.seed = None
        self._set_stage(S.CULLED)
        self.alpha_schedule = None
        self.alpha.zero_()
        st.alpha = 0.0
        st.metrics.current_alpha = 0.0
        self.isolation_monitor.reset()
        return True

    @_delivers_events
    def step_epoch(self) -> None:
        """Mechanical progression, once per epoch after ``metrics.record_accuracy``."""
        st = self.state
        if st is None:
            return
        stage = st.stage
        if is_failure_stage(stage):
            self._step_cleanup(st)
        elif stage == S.GERMINATED:  # no dwell: G1 at the first epoch boundary
            if agree(self.gates.check(S.TRAINING, st).passed, self.device):
                self._transition(S.TRAINING)
        elif stage == S.TRAINING:
            self._warn_if_unmeasured(st)
            ready = st.metrics.epochs_in_current_stage >= self.task_config.training_dwell
            ok = ready and self.gates.check(S.BLENDING, st).passed
            if agree(ok, self.device):
                self._transition(S.BLENDING)
        elif stage == S.BLENDING and st.prune_epochs > 0:  # a scheduled prune: fade, then cull
            st.prune_epochs -= 1
            self._set_alpha(st.prune_from * st.prune_epochs / st.prune_total)
            if agree(st.prune_epochs == 0, self.device):
                self.cull(st.prune_reason or "scheduled_prune")
        elif stage == S.BLENDING:
            steps = self._ramp_steps(st)
            if st.blending_step < steps:  # the ramp from alpha_start to alpha_target, then hold
                st.blending_step += 1
                if st.blending_step >= steps:
                    self._set_alpha(st.alpha_target)  # exactly
                else:
                    ramp = self.alpha_schedule.ramp(st.blending_step / steps)
                    self._set_alpha(st.alpha_start + (st.alpha_target - st.alpha_start) * ramp)
            ramp_done = st.blending_step >= steps  # the ramp completes, then G3 is asked
            if agree(ramp_done and self.gates.check(S.PROBATIONARY, st).passed, self.device):
                self._transition(S.PROBATIONARY)
        elif stage == S.PROBATIONARY:
            cf = st.metrics.counterfactual_contribution
            timeout = st.metrics.epochs_in_current_stage >= self.task_config.probation_timeout
            negative = cf is not None and cf <= 0
            if agree(timeout or negative, self.device):
                self.cull("probation_timeout" if timeout else "negative_counterfactual")

    def _warn_if_unmeasured(self, st: SeedState) -> None:
        """One warning per seed that sits in TRAINING with no gradient statistics (G2
        cannot pass then), naming the call that is missing."""
        m = st.metrics
        if (
            self._stall_warned
            or m.gradient_measurements > 0
            or m.epochs_in_current_stage < STALL_WARNING_EPOCHS
        ):
            return
        self._stall_warned = True
        missing = (
            "materialize_gradient_telemetry(stats) once per epoch, with what "
            "capture_gradient_telemetry() returned"
            if self._captured
            else "capture_gradient_telemetry() after loss.backward() (and materialize_gradient_telemetry() "
            "once per epoch)"
        )
        logger.warning(
            "SeedSlot %r: seed %r has spent %d epochs in TRAINING without a gradient measurement, so G2 "
            "cannot pass; call slot.%s, or use kasmina_fast.Grower",
            self.slot_id,
            st.seed_id,
            m.epochs_in_current_stage,
            missing,
        )

    def _step_cleanup(self, st: SeedState) -> None:
        if st.stage == S.CULLED:
            self._transition(S.EMBARGOED)
            st.epochs_since_cull = 1
        elif st.stage == S.EMBARGOED:
            if st.epochs_since_cull >= self.embargo_epochs:
                self._transition(S.RESETTING)
            else:
                st.epochs_since_cull += 1
        elif st.stage == S.RESETTING:
            self._transition(S.DORMANT)
            self._state = None
            self._set_stage(S.DORMANT)

    # ---- gradient telemetry ---------------------------------------------------------------

    def capture_gradient_telemetry(self) -> dict[str, Tensor] | None:
        """Launch the fused gradient-norm op; device tensors, no sync (None without a
        seed). Call after ``loss.backward()``."""
        if self.seed is None or self.state is None:
            return None
        self._captured = True
        return self.isolation_monitor.check_isolation_async()

    def materialize_gradient_telemetry(self, async_stats: dict[str, Tensor] | None) -> None:
        """The one host sync: store the parameter-normalised gradient ratio for G2 and
        mark the seed unhealthy if any gradient was NaN or inf."""
        if async_stats is None or self.state is None:
            return
        ok, stats = self.isolation_monitor.materialize_isolation_stats(async_stats)
        self.state.metrics.seed_gradient_norm_ratio = stats["seed_gradient_norm_ratio"]
        self.state.metrics.gradient_measurements += 1
        if not ok:
            self.state.is_healthy = False

    # ---- reports --------------------------------------------------------------------------

    def get_state_report(self) -> dict[str, Any]:
        st = self.state
        report: dict[str, Any] = {
            "slot_id": self.slot_id,
            "stage": self.stage.name,
            "alpha": float(self.alpha),
            "isolate_gradients": self.isolate_gradients,
        }
        if st is not None:
            report |= {
                "seed_id": st.seed_id,
                "blueprint_id": st.blueprint_id,
                "blend_algorithm_id": st.blend_algorithm_id,
                "blend_mode": st.blend_mode,
                "is_healthy": st.is_healthy,
                "cull_reason": st.cull_reason,
                "metrics": dataclasses.asdict(st.metrics),
            }
        return report

    # ---- internals ------------------------------------------------------------------------

    def _transition(self, target: SeedStage, announce: bool = True) -> None:
        st = self.state
        old = st.stage
        if not is_valid_transition(old, target):
            raise RuntimeError(f"SeedSlot {self.slot_id!r}: invalid transition {old.name} -> {target.name}")
        st._move_to(target)
        self.stage_log.append(target.name)
        self.stage_changes += 1
        st.stage_history.append((int(target), st.metrics.epochs_total))
        st.metrics.start_stage()
        if target == S.BLENDING and old == S.TRAINING:  # (from PROBATIONARY: a retarget keeps all)
            schedule = create_blend_algorithm(st.blend_algorithm_id, self.channels, self.task_config.topology)
            self.alpha_schedule = self._place(schedule.to(self.device))
            self.isolation_monitor.register(self._host_module[0] if self._host_module else None, self.seed)
            st.blending_step = 0
            st.metrics.accuracy_at_blending_start = st.metrics.current_val_accuracy
            self._set_alpha(0.0)
        elif target == S.FOSSILIZED:
            self._set_alpha(1.0)
        self._set_stage(target)
        if announce:
            self._emit(TelemetryEventType.SEED_STAGE_CHANGED, {"from": old.name, "to": target.name})

    def _place(self, module: nn.Module) -> nn.Module:
        if self.place_module is not None and any(True for _ in module.parameters()):
            self.place_module(module)
        return module

    def _set_alpha(self, value: float) -> None:
        self.alpha.fill_(value)
        self.state.alpha = float(value)
        self.state.metrics.current_alpha = float(value)

    def _outcome_payload(self, params: bool = True) -> dict[str, Any]:
        st = self.state
        m = st.metrics
        out = {
            "blueprint_id": st.blueprint_id,
            "seed_id": st.seed_id,
            "improvement": m.total_improvement,
            "blending_delta": m.blending_delta,
            "counterfactual": m.counterfactual_contribution,
            "epochs_total": m.epochs_total,
            "epochs_in_stage": m.epochs_in_current_stage,
        }
        if params:
            out["params_added"] = m.seed_param_count
        return out

    def _emit(self, kind: TelemetryEventType, data: dict[str, Any]) -> None:
        if self.fast_mode or self.on_telemetry is None:
            return
        st = self.state
        epoch = st.metrics.epochs_total if st is not None else 0
        event = TelemetryEvent(kind, self.slot_id, st.seed_id if st else None, epoch, data)
        if self._event_queue is not None:
            self._event_queue.append(event)
        else:
            self.on_telemetry(event)

    def _deliver(self, raise_first: bool = False) -> None:
        """Every queued event to the callback; the first exception a callback raised is
        raised after all were delivered (with ``raise_first``), else dropped."""
        queue, self._event_queue = self._event_queue or [], None
        error = None
        for event in queue:
            try:
                self.on_telemetry(event)
            except Exception as exc:
                error = error or exc
        if raise_first and error is not None:
            raise error

    def _probe(self) -> Tensor:
        topology = self.task_config.topology
        key = (topology, self.channels, str(self.device))
        if key not in self._probe_cache:
            if topology == "cnn":
                probe = torch.randn(1, self.channels, 32, 32, device=self.device)
                probe = probe.contiguous(memory_format=torch.channels_last)
            elif topology == "dense":
                probe = torch.randn(2, self.channels, device=self.device)
            else:
                probe = torch.randn(2, 8, self.channels, device=self.device)
            self._probe_cache[key] = probe
        return self._probe_cache[key]

    def _check_shape(self, seed: nn.Module, blueprint_id: str) -> None:
        probe = self._probe()
        was_training = seed.training
        seed.eval()
        with torch.no_grad():
            out = seed(probe)
        seed.train(was_training)
        if out.shape != probe.shape:
            raise SeedShapeError(
                f"SeedSlot {self.slot_id!r}: blueprint {blueprint_id!r} changes the feature shape: "
                f"input {list(probe.shape)}, output {list(out.shape)}"
            )

    def _apply(self, fn, recurse=True):
        self._probe_cache.clear()  # probes are per device: a move invalidates them
        if self._forced_alpha is not None:
            self._forced_alpha = fn(self._forced_alpha)
        return super()._apply(fn, recurse)

    # ---- checkpoints ----------------------------------------------------------------------

    def lifecycle_state(self) -> dict[str, Any]:
        """The lifecycle as primitives (what :meth:`restore` takes): the seed's state,
        the germination count, whether a schedule module exists."""
        st = self.state
        state = None
        if st is not None:
            state = dataclasses.asdict(st)
            state["stage"] = int(st.stage)
            state["previous_stage"] = int(st.previous_stage)
            state["stage_history"] = [list(x) for x in st.stage_history]
        return {
            "version": 1,
            "state": state,
            "germinations": self._germinations,
            "has_schedule": self.alpha_schedule is not None,
        }

    def get_extra_state(self) -> Tensor:
        """:meth:`lifecycle_state`, encoded as a uint8 tensor (``persist.encode``): the
        state dict holds tensors only (safetensors saves it, ``weights_only`` loads it)."""
        return persist.encode(self.lifecycle_state())

    def set_extra_state(self, extra: Tensor | dict[str, Any]) -> None:
        extra = persist.decode(extra)  # (a dict: a checkpoint written before the encoding)
        self._germinations = int(extra["germinations"])
        raw = extra["state"]
        if raw is None:
            self._state = None
            self._set_stage(S.DORMANT)
            return
        raw = dict(raw)
        metrics = SeedMetrics(**raw.pop("metrics"))
        raw["stage"] = SeedStage(raw["stage"])
        raw["previous_stage"] = SeedStage(raw["previous_stage"])
        raw["stage_history"] = [tuple(x) for x in raw["stage_history"]]
        self._state = SeedState(metrics=metrics, **raw)
        self._state._held_by(self.slot_id)

    def _modules_match(self, extra: dict[str, Any]) -> bool:
        """The slot already holds the seed and schedule modules ``extra`` describes (the
        same seed): a load then fills their parameters in place, so an optimizer built on
        them stays valid."""
        raw = extra["state"]
        live = raw is not None and not is_failure_stage(SeedStage(raw["stage"]))
        if live != (self.seed is not None) or (self.alpha_schedule is not None) != (
            live and extra["has_schedule"]
        ):
            return False
        st = self.state
        return not live or (
            st is not None and (st.seed_id, st.blueprint_id) == (raw["seed_id"], raw["blueprint_id"])
        )

    def _rebuild_modules(self, extra: dict[str, Any]) -> None:
        """The seed module and schedule that :meth:`lifecycle_state` output ``extra``
        describes, freshly built (and placed, see ``place_module``): the modules
        whose weights a checkpoint then loads."""
        raw = extra["state"]
        self.seed = None
        self.alpha_schedule = None
        if raw is not None and not is_failure_stage(SeedStage(raw["stage"])):
            seed = BlueprintRegistry.create(
                self.task_config.topology,
                raw["blueprint_id"],
                self.channels,
                **raw.get("blueprint_options", {}),
            )
            self.seed = self._place(seed.to(self.device))
            if extra["has_schedule"]:
                schedule = create_blend_algorithm(
                    raw["blend_algorithm_id"], self.channels, self.task_config.topology
                )
                self.alpha_schedule = self._place(schedule.to(self.device))

    def restore(self, extra: Tensor | dict[str, Any]) -> None:
        """Resume from :meth:`lifecycle_state` (or ``get_extra_state()``) output alone: the
        lifecycle state and fresh seed and schedule modules, whose weights the caller
        loads next (what ``kasmina_fast.checkpoint`` and ``from_pretrained`` do)."""
        extra = persist.decode(extra)
        self._rebuild_modules(extra)
        self.set_extra_state(extra)
        self._set_stage(self.state.stage if self.state is not None else S.DORMANT)
        self._freeze_if_pruning()
        if self._host_module:
            self.attach_host(self._host_module[0])
        else:
            self.isolation_monitor.register(None, self.seed)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        """Rebuilds the seed module and schedule the checkpoint describes before their
        weights load (also when the slot sits inside a larger model), so a fresh slot
        resumes in any stage with the same next decisions."""
        extra = state_dict.get(prefix + "_extra_state")
        if extra is not None:
            extra = persist.decode(extra)
        if extra is not None and not self._modules_match(extra):
            self._rebuild_modules(extra)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._set_stage(self.state.stage if self.state is not None else S.DORMANT)
        self._freeze_if_pruning()
        if self._host_module:
            self.attach_host(self._host_module[0])
        else:  # the caller re-attaches the host (MorphogeneticModel does it itself)
            self.isolation_monitor.register(None, self.seed)
