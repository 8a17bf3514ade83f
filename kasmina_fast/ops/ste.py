"""``kasmina_fast.ste``: the straight-through estimator of the TRAINING stage.

The value is ``host`` (the seed does not change the activations); the
gradient ``g`` reaches both ``host`` and ``seed``, so the seed learns from the
task loss while the host's activations stay untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kasmina_fast import backends, reference
from kasmina_fast.ops import _checks


def _reference(host: Tensor, seed: Tensor) -> Tensor:
    _checks.check_ste(host, seed)
    return reference.ste(host, seed)


_native = torch.ops.kasmina.ste.default

_impls = {"reference": _reference, "cpp": _native, "cuda": _native}
if backends.triton_usable():
    from kasmina_fast.ops import triton_ops

    _impls["triton"] = triton_ops.triton_ste
    from kasmina_fast.ops import triton_op

    _impls["triton_op"] = triton_op.triton_op_ste
backends.register("ste", _impls)


def ste(host: Tensor, seed: Tensor) -> Tensor:
    """Straight-through estimator: returns a tensor equal to ``host`` whose
    gradient flows unchanged to both ``host`` and ``seed``.

    ``seed`` must match ``host`` in shape, dtype and device (ValueError otherwise).
    """
    return (backends.CUDA if host.is_cuda else backends.CPU).ste(host, seed)


#: The specification's name for :func:`ste`.
ste_forward = ste
