"""Loading of the compiled op library ``kasmina_fast._C``.

The library holds the ``torch.library`` registrations of the ``kasmina`` ops,
so it is loaded with ``torch.ops.load_library``; it is also a Python module
with one eager-only helper (``param_gradient_stats``, imported by
``kasmina_fast.ops.norms``). Loading is defensive: a missing build or an ABI
break after a torch upgrade leaves the package usable on the eager reference;
the reason is kept for ``backends.status()`` and reported once as a warning.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch

LOADED: bool = False
REASON: str = ""
#: Path of the op library (what ``torch.ops.load_library`` takes: an AOTInductor package
#: that calls the ops needs it loaded, and nothing else of this package).
LIBRARY: str = ""


def _load() -> tuple[bool, str]:
    if os.environ.get("KASMINA_FAST_NO_EXTENSION") == "1":
        return False, "disabled by KASMINA_FAST_NO_EXTENSION=1"
    spec = importlib.util.find_spec("kasmina_fast._C")
    if spec is None or spec.origin is None:
        return False, "the C++ extension kasmina_fast._C was not built (reinstall with --no-build-isolation)"
    try:
        torch.ops.load_library(spec.origin)
    except (OSError, RuntimeError) as exc:
        return False, f"kasmina_fast._C failed to load ({exc}); rebuild it against torch {torch.__version__}"
    global LIBRARY
    LIBRARY = spec.origin
    return True, f"loaded from {os.path.basename(spec.origin)}"


LOADED, REASON = _load()
if not LOADED and os.environ.get("KASMINA_FAST_NO_EXTENSION") != "1":
    warnings.warn(f"kasmina_fast: {REASON}; using the eager reference", RuntimeWarning, stacklevel=2)


def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when the op ``kasmina::<op>`` has a kernel registered for the key."""
    return LOADED and torch._C._dispatch_has_kernel_for_dispatch_key(f"kasmina::{op}", dispatch_key)
