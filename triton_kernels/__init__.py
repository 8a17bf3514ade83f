"""Triton kernels of kasmina-fast, installed as ``kasmina_fast.triton_kernels``.

Only ``@triton.jit`` kernels and their launchers live here; the ops that call
them are registered in ``kasmina_fast.ops``.
"""

from __future__ import annotations

import os


def status() -> str:
    """``"available"`` or why the Triton backend cannot run here."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    import torch

    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU tensors)"
    return "no Triton kernels in this version yet"
