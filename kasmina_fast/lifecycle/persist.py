"""The growth state's one encoding.

Everything growth adds to a checkpoint (a slot's lifecycle, the plane's
germination counters, the seeds' optimizer groups, a ``Grower``'s state) is
encoded one way: the bytes ``torch.save(obj)`` writes, read back with
``torch.load(weights_only=True)`` (tensors and primitives only, no code). In a
state dict the bytes are a 1-d ``uint8`` tensor, so ``model.state_dict()`` holds
tensors only and a safetensors file can carry it; in a DCP checkpoint they are a
bytes entry. :func:`decode` also takes the dicts that checkpoints written before
this encoding hold.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import Tensor


def encode_bytes(obj: Any, what: str = "kasmina_fast: the growth state") -> bytes:
    """``obj`` (tensors and primitives) as the bytes of ``torch.save``; refused with a
    TypeError that names ``what``, here rather than at load time, when ``weights_only``
    cannot read it back."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:
        reason = str(exc).split("WeightsUnpickler error: ")[-1].split(". ")[0]
        raise TypeError(
            f"{what} must hold what torch.load(weights_only=True) reads (tensors, numbers, strings, "
            f"lists, tuples, dicts): {reason}"
        ) from None
    return data


def encode(obj: Any) -> Tensor:
    """:func:`encode_bytes` as a 1-d uint8 CPU tensor (a state-dict entry)."""
    return torch.frombuffer(bytearray(encode_bytes(obj)), dtype=torch.uint8)


def decode(value: Any) -> Any:
    """What :func:`encode` or :func:`encode_bytes` encoded (a uint8 tensor on any
    device, bytes or a binary stream); any other value, e.g. the dict a checkpoint
    written before this encoding holds, is returned as it is."""
    if isinstance(value, Tensor):
        if value.dtype != torch.uint8 or value.dim() != 1:
            raise ValueError(
                f"kasmina_fast: an encoded growth state is a 1-d uint8 tensor, got {value.dtype} "
                f"of shape {list(value.shape)}"
            )
        value = value.detach().cpu().numpy().tobytes()
    if isinstance(value, (bytes, bytearray)):
        value = io.BytesIO(value)
    if isinstance(value, io.IOBase):
        value.seek(0)
        return torch.load(value, weights_only=True)
    return value


#: the state-dict key of the training state (the seeds' optimizer groups, a Grower's
#: state) in a Hugging Face Trainer checkpoint and a Lightning callback's state
GROWTH_KEY = "kasmina_growth"
