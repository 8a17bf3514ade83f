"""The public fast ops. Importing this package loads ``torch.ops.kasmina``
(when the op library is built) and registers its fake kernels."""

from kasmina_fast.ops import registration  # noqa: F401  (fakes before any trace)
from kasmina_fast.ops.blend import blend, blend_with_isolation
from kasmina_fast.ops.norms import foreach_norm, gradient_stats, param_gradient_stats
from kasmina_fast.ops.ste import ste, ste_forward
from kasmina_fast.ops.valve import valve

__all__ = [
    "blend",
    "blend_with_isolation",
    "foreach_norm",
    "gradient_stats",
    "param_gradient_stats",
    "ste",
    "ste_forward",
    "valve",
]
