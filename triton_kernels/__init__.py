"""Triton kernels of kasmina-fast, installed as ``kasmina_fast.triton_kernels``.

Only ``@triton.jit`` kernels and the functions that launch them live here:
``blend.py`` (blend forward, fused backward, the STE copy), ``valve.py``
(valve forward and fused backward) and ``norms.py``
(multi-tensor sums of squares); ``layout.py`` holds the shared layout rule.
Each op's launching function is that op's kernel while the Triton backend is
selected (``kasmina_fast.backends`` registers it at the dispatcher). This
package imports triton only when its kernels are loaded.
"""

from __future__ import annotations

import importlib.util
import os


def status() -> str:
    """``"available"`` or why the Triton backend cannot run here."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    import torch

    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU tensors)"
    return "available"
