"""Several alpha settings in one forward: :func:`counterfactual_forward`.

A counterfactual (the model with a slot's alpha forced, e.g. to 0) usually costs one
more forward per setting. Here the batch is repeated K times, one block per
setting, and every slot that a setting overrides blends with a per-sample alpha
(``[K*B, 1, ...]``: the override in its blocks, the slot's own alpha, gated or not,
in the others) through the same ``blend`` op: one forward of K*B samples instead of
K of B, the same per-sample math. Only per-sample computations keep the blocks
apart: run it in eval mode (a BatchNorm in training mode mixes the batch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from kasmina_fast.lifecycle.stages import FEATURE_DIMS


def _batch_size(inputs: Any) -> int:
    tensors = [t for t in _leaves(inputs) if isinstance(t, Tensor)]
    if not tensors or tensors[0].ndim == 0:
        raise ValueError("counterfactual_forward: the inputs hold no tensor with a batch dimension first")
    return tensors[0].shape[0]


def _leaves(inputs: Any) -> list[Any]:
    if isinstance(inputs, Mapping):
        return list(inputs.values())
    if isinstance(inputs, tuple):
        return list(inputs)
    return [inputs]


def _repeat(value: Any, k: int, batch: int, name: str) -> Any:
    if not isinstance(value, Tensor):
        return value
    if value.ndim == 0 or value.shape[0] != batch:
        raise ValueError(
            f"counterfactual_forward: argument {name} has shape {list(value.shape)}; every tensor "
            f"argument must carry the batch ({batch}) first"
        )
    return value.repeat(k, *([1] * (value.ndim - 1)))


def _split(output: Any, k: int, batch: int) -> list[Any]:
    """The forward's output cut into its K blocks, each of the output's own type."""
    if isinstance(output, Tensor):
        if output.ndim == 0 or output.shape[0] != k * batch:
            raise ValueError(
                f"counterfactual_forward: the output has shape {list(output.shape)}, not the batch "
                f"({k} x {batch}) first; a reduced output (a loss) cannot be split per setting"
            )
        return list(output.chunk(k))
    if isinstance(output, Mapping):  # a Hugging Face ModelOutput: its fields that are set
        parts = {key: _split(v, k, batch) for key, v in output.items()}
        return [type(output)(**{key: p[i] for key, p in parts.items()}) for i in range(k)]
    if isinstance(output, (tuple, list)):
        parts = [_split(v, k, batch) for v in output]
        blocks = [[p[i] for p in parts] for i in range(k)]
        if hasattr(output, "_fields"):  # a namedtuple
            return [type(output)(*b) for b in blocks]
        return [type(output)(b) for b in blocks]
    raise TypeError(f"counterfactual_forward: cannot split an output of type {type(output).__name__}")


def counterfactual_forward(model: Any, inputs: Any, configs: Sequence[Mapping[str, float]]) -> list[Any]:
    """``model``'s output for each alpha setting in ``configs``, in one batched forward.

    ``inputs``: a tensor, a tuple of arguments or a dict of keyword arguments (every
    tensor with the batch first). ``configs``: one ``{slot_id: alpha}`` per setting
    (``{}``: as trained). Returns one output per setting, equal to a separate pass
    with those alphas forced (``slot.force_alpha``).
    """
    configs = [dict(c) for c in configs]
    if not configs:
        raise ValueError(
            "counterfactual_forward: configs is empty (give at least {} for the model as trained)"
        )
    slots = model.seed_slots
    for c in configs:
        unknown = [sid for sid in c if sid not in slots]
        if unknown:
            raise ValueError(f"counterfactual_forward: no slot {unknown[0]!r}; slots: {', '.join(slots)}")
    k, batch = len(configs), _batch_size(inputs)
    set_slots = []
    try:
        for sid, slot in slots.items():
            if not any(sid in c for c in configs):
                continue
            ones = [1] * (FEATURE_DIMS[slot.task_config.topology] - 1)  # [K*B, 1, ...] per sample
            mask = torch.tensor([sid in c for c in configs], device=slot.device)
            values = torch.tensor([float(c.get(sid, 0.0)) for c in configs], dtype=slot.alpha.dtype)
            slot._block_alpha = (
                mask.repeat_interleave(batch).view(k * batch, *ones),
                values.to(slot.device).repeat_interleave(batch).view(k * batch, *ones),
            )
            set_slots.append(slot)
        if isinstance(inputs, Mapping):
            out = model(**{n: _repeat(v, k, batch, repr(n)) for n, v in inputs.items()})
        elif isinstance(inputs, tuple):
            out = model(*[_repeat(v, k, batch, f"#{i}") for i, v in enumerate(inputs)])
        else:
            out = model(_repeat(inputs, k, batch, "#0"))
    finally:
        for slot in set_slots:
            slot._block_alpha = None
    return _split(out, k, batch)
