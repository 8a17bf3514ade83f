"""The public fast ops. Importing this package registers ``torch.ops.kasmina``."""

from kasmina_fast.ops import registration  # noqa: F401  (defines/loads the ops first)
from kasmina_fast.ops.blend import blend, blend_with_isolation
from kasmina_fast.ops.norms import foreach_norm, gradient_stats, param_gradient_stats
from kasmina_fast.ops.ste import ste, ste_forward

__all__ = [
    "blend",
    "blend_with_isolation",
    "foreach_norm",
    "gradient_stats",
    "param_gradient_stats",
    "ste",
    "ste_forward",
]
