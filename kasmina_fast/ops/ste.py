"""``kasmina_fast.ste``: the straight-through estimator of the TRAINING stage.

The value is ``host`` (the seed does not change the activations); the
gradient ``g`` reaches both ``host`` and ``seed``, so the seed learns from the
task loss while the host's activations stay untouched. The op returns a copy
of host (a custom op may not return an alias of its input).

:func:`ste` is ``torch.ops.kasmina.ste``; without the op library it is the
eager reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kasmina_fast import _extension, reference
from kasmina_fast.ops import _checks


def _reference(host: Tensor, seed: Tensor) -> Tensor:
    _checks.check_ste(host, seed)
    return reference.ste(host, seed)


_ste = torch.ops.kasmina.ste.default if _extension.LOADED else _reference


def ste(host: Tensor, seed: Tensor) -> Tensor:
    """Straight-through estimator: returns a tensor equal to ``host`` whose
    gradient flows unchanged to both ``host`` and ``seed``.

    ``seed`` must match ``host`` in shape, dtype and device (ValueError otherwise).
    """
    return _ste(host, seed)


#: The specification's name for :func:`ste`.
ste_forward = ste
