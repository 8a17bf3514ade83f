"""kasmina-fast: grow neural networks while they train.

The fast ops (``blend``, ``valve``, ``ste``, ``foreach_norm``, ``gradient_stats``) are
``torch.library`` custom ops in the ``kasmina`` namespace with fused C++,
CUDA and Triton kernels, checked against one eager reference
(:mod:`kasmina_fast.reference`). :mod:`kasmina_fast.backends` says which
kernels run here and lets you force one. :func:`graft` puts seed slots into
any ``nn.Module``; ``CNNHost`` and ``TransformerHost`` are built-in hosts.
:class:`Grower` (and the framework callbacks in :mod:`kasmina_fast.integrations`)
runs the growth protocol inside a training loop.
"""

from kasmina_fast import backends
from kasmina_fast.backends import available, use_backend
from kasmina_fast.blueprints import BlueprintRegistry, BlueprintSpec
from kasmina_fast.hosts import CNNHost, HostProtocol, ModuleHost, MorphogeneticModel, TransformerHost, graft
from kasmina_fast.lifecycle import *  # noqa: F403
from kasmina_fast.lifecycle import __all__ as _lifecycle_all
from kasmina_fast.ops import (
    blend,
    blend_with_isolation,
    foreach_norm,
    gradient_stats,
    ste,
    ste_forward,
    valve,
)
from kasmina_fast.training import EpochReport, Grower, sync_optimizer

__version__ = "0.1.0"

backends.set_backend(backends._env_choice)

__all__ = [
    *_lifecycle_all,
    "BlueprintRegistry",
    "BlueprintSpec",
    "CNNHost",
    "EpochReport",
    "Grower",
    "HostProtocol",
    "ModuleHost",
    "MorphogeneticModel",
    "TransformerHost",
    "available",
    "backends",
    "blend",
    "blend_with_isolation",
    "foreach_norm",
    "graft",
    "gradient_stats",
    "ste",
    "ste_forward",
    "sync_optimizer",
    "use_backend",
    "valve",
]
