"""Fold the grown seeds into a plain model: :func:`merge_and_unload`
(``MorphogeneticModel.merge_and_unload``).

Every FOSSILIZED seed becomes a :class:`MergedSeed` at the point where it grew:
plain PyTorch computing what the slot computed there in eval mode,

- ``lerp``: ``lerp(h, s, clamp(a, 0, 1))`` with ``s = seed(h)``; a fossilized seed
  without a gate (alpha 1) is just ``seed(h)``;
- ``valve``: ``h * (1 + w * tanh(s - h))`` with ``w = clamp(a, 0, 1)``;

where ``a`` is the slot's alpha, times the gate ``gate(h)`` for a gated blend. Every
empty, culled or embargoed slot is removed. What comes back is the host module
itself, its own class: for a grafted model the user's module, whose points keep
their forward hooks (they now call the merged seeds, registered as the point
submodule's child ``grown_seed``), for a built-in host the host with its slots
replaced. It holds no ``SeedSlot`` and calls no ``kasmina`` op, so
``torch.export.export`` gives a graph of ATen ops and an AOTInductor package of it
runs in a process that never imports this package.

What a merged model cannot do: grow further (it has no slots), or reload through
its class's ``from_pretrained`` (a Hugging Face class with an added ``grown_seed``
submodule has keys that class does not know): deploy it with ``torch.export`` /
AOTInductor, or keep the grown model with ``save_pretrained``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kasmina_fast.hosts.graft import ModuleHost, _submodule
from kasmina_fast.lifecycle import SeedStage

S = SeedStage
UNFINISHED = ("refuse", "drop", "keep")
_GROWING = (S.GERMINATED, S.TRAINING, S.BLENDING, S.PROBATIONARY)


class MergedSeed(nn.Module):
    """A seed joined to its host's features at a fixed alpha (see the module docstring).

    Args:
        seed: the seed module (``s = seed(h)``).
        alpha: the slot's alpha.
        mode: ``"lerp"`` or ``"valve"``.
        gate: a gated blend's gate (``gate(h)`` is a per-sample factor of alpha), or None.
    """

    def __init__(self, seed: nn.Module, alpha: float, mode: str, gate: nn.Module | None = None) -> None:
        super().__init__()
        if mode not in ("lerp", "valve"):
            raise ValueError(f"MergedSeed: mode must be 'lerp' or 'valve', got {mode!r}")
        self.seed = seed
        self.gate = gate
        self.mode = mode
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        #: alpha at 1 without a gate: lerp is the seed's output itself, valve needs no w
        self.unit = gate is None and float(alpha) >= 1.0

    def forward(self, h: Tensor) -> Tensor:
        s = self.seed(h)
        if self.unit:
            return s if self.mode == "lerp" else torch.addcmul(h, h, torch.tanh(s - h))
        a = self.alpha if self.gate is None else self.alpha * self.gate(h)
        w = a.clamp(0, 1).to(h.dtype)
        if self.mode == "valve":  # h (1 + w t) as h + h (w t): four passes, not five
            return torch.addcmul(h, h, torch.tanh(s - h) * w)
        return torch.lerp(h, s, w)


def _merged(slot, unfinished: str) -> MergedSeed | None:
    """What replaces ``slot``: its seed merged, or None (the slot goes)."""
    stage, st = slot.stage, slot.state
    keep = stage == S.FOSSILIZED or (unfinished == "keep" and stage in (S.BLENDING, S.PROBATIONARY))
    if not keep or slot.seed is None:  # (a TRAINING or GERMINATED seed's value is the host's)
        return None
    gate = slot.alpha_schedule if slot.alpha_schedule is not None and slot.alpha_schedule.gated else None
    merged = MergedSeed(slot.seed, float(slot.alpha), st.blend_mode, gate).to(slot.alpha.device)
    merged.eval()
    if stage != S.FOSSILIZED:  # kept as it is now: frozen
        merged.requires_grad_(False)
    return merged


def merge_and_unload(model, unfinished: str = "refuse") -> nn.Module:
    """See :meth:`MorphogeneticModel.merge_and_unload` and the module docstring."""
    if unfinished not in UNFINISHED:
        raise ValueError(
            f"merge_and_unload: unfinished must be one of {', '.join(UNFINISHED)}, got {unfinished!r}"
        )
    slots = model.seed_slots
    if unfinished == "refuse":
        for sid, slot in slots.items():
            if slot.stage in _GROWING:
                raise ValueError(
                    f"merge_and_unload: slot {sid!r} holds seed {slot.state.seed_id!r} in {slot.stage.name}, "
                    "not finished; fossilize or cull it, or pass unfinished='drop' (remove it) or "
                    "unfinished='keep' (inline it at its current alpha, frozen)"
                )
    host = model.host
    merged = {sid: _merged(slot, unfinished) for sid, slot in slots.items()}
    if isinstance(host, ModuleHost):
        user = host.model
        for sid, seed in merged.items():
            point = _submodule(user, sid)
            hook = host._hooks[sid]
            host.slots[sid.replace(".", "-")] = nn.Identity()
            if seed is None:
                hook.remove_from(point)
            else:
                point.add_module("grown_seed", seed)
                hook.slot = seed
        out: nn.Module = user
    else:
        for sid, seed in merged.items():
            host.unregister_slot(sid)
            if seed is not None:
                host.register_slot(sid, seed)
        out = host
    for slot in slots.values():  # the grown model is consumed: its slots hold nothing
        slot.seed = slot.alpha_schedule = None
    model._slots.clear()
    return out
