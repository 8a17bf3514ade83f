"""Which kernels run the ``kasmina`` ops.

``torch.ops.kasmina`` has one name per op, and the dispatcher picks the kernel
by device:

=========== ================================================ ==================
backend     kernels                                          tensors
=========== ================================================ ==================
cpp         the C++ CPU kernels of the op library            CPU
cuda        the CUDA C++ kernels of the op library            CUDA
triton      the Triton kernels (``triton_kernels/``)         CUDA; CPU under
                                                             TRITON_INTERPRET=1
=========== ================================================ ==================

The library registers its own kernels at the CPU and CUDA keys. Selecting
``triton`` registers the Triton kernels (Python functions that launch them)
at the CUDA key, or at the CPU key under ``TRITON_INTERPRET=1`` (how the
tests run them without a GPU), over the library's; selecting anything else
removes them again. ``auto`` (the default) selects ``triton`` only where the
library has no CUDA kernels (a build without nvcc) and Triton can run, else
the library's own kernels: the measurements in bench/RESULTS.md favour the
CUDA C++ blend and STE. ``cpp`` and ``cuda`` both mean "the library's own
kernels" and differ only in what they require to be available.

The setting is process-wide (not per thread): ``KASMINA_FAST_BACKEND`` sets it
at import, :func:`use_backend` inside a ``with`` block. A traced, compiled or
exported graph names only the public ops, so it runs whatever backend is
selected when it runs. Without the op library (not built, or
``KASMINA_FAST_NO_EXTENSION=1``) the public functions are the eager reference
and no backend can be selected.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Iterator

import torch

from kasmina_fast import _extension

NAMES: tuple[str, ...] = ("cpp", "cuda", "triton")
CHOICES: tuple[str, ...] = ("auto", *NAMES)
OPS: tuple[str, ...] = (
    "blend",
    "blend_backward",
    "valve",
    "valve_backward",
    "ste",
    "foreach_norm",
    "gradient_stats",
)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton_status() -> str:
    if not _extension.LOADED:
        return (
            f"the Triton kernels run as kernels of the op library, which is not loaded ({_extension.REASON})"
        )
    try:
        tk = importlib.import_module("kasmina_fast.triton_kernels")
    except ImportError as exc:  # pragma: no cover - depends on the install
        return f"triton is not importable ({exc})"
    return tk.status()


def status() -> dict[str, str]:
    """Every backend with ``"available"`` or the reason it is not usable here."""
    out = {"cpp": "available" if _extension.LOADED else _extension.REASON}
    if not _extension.LOADED:
        out["cuda"] = _extension.REASON
    elif not _cuda_kernels:
        out["cuda"] = (
            "the extension was built without CUDA kernels (no CUDA torch or no CUDA toolkit at build time)"
        )
    elif not torch.cuda.is_available():
        out["cuda"] = "no CUDA device is visible"
    else:
        out["cuda"] = "available"
    out["triton"] = _triton_status()
    return out


def available() -> list[str]:
    """Names of the backends usable in this process."""
    return [name for name, why in status().items() if why == "available"]


_selected: str = "auto"
_triton_lib: torch.library.Library | None = None
# whether the library itself has CUDA kernels (read before any Triton registration)
_cuda_kernels: bool = _extension.has_kernel("blend", "CUDA")


def _triton_key() -> str:
    """The dispatch key the Triton kernels serve: CPU tensors in the interpreter, else CUDA."""
    return "CPU" if _interpreted() else "CUDA"


def _wants_triton(name: str) -> bool:
    if name == "triton":
        return True
    # auto: Triton is the CUDA kernel where the library has none
    return name == "auto" and not _cuda_kernels and not _interpreted() and _triton_status() == "available"


def _register_triton(on: bool) -> None:
    """Registers the Triton kernels over the library's (``on``) or removes them."""
    global _triton_lib
    if on == (_triton_lib is not None):
        return
    if not on:
        _triton_lib._destroy()
        _triton_lib = None
        return
    from kasmina_fast.triton_kernels import blend, norms, valve

    kernels = {
        "blend": blend.blend,
        "blend_backward": blend.blend_backward,
        "valve": valve.valve,
        "valve_backward": valve.valve_backward,
        "ste": blend.ste,
        "foreach_norm": norms.foreach_norm,
        "gradient_stats": norms.gradient_stats,
    }
    lib = torch.library.Library("kasmina", "IMPL")
    with warnings.catch_warnings():
        # "Overriding a previously registered kernel": the override is the point
        warnings.simplefilter("ignore", UserWarning)
        for op, fn in kernels.items():
            lib.impl(op, fn, _triton_key())
    _triton_lib = lib


def get_backend() -> str:
    """The selected backend name (``auto`` unless forced)."""
    return _selected


def active() -> dict[str, str]:
    """The kernels that run CPU and CUDA tensors now: ``{"cpu": ..., "cuda": ...}``
    (``reference`` without the op library, ``none`` where nothing can run)."""
    if not _extension.LOADED:
        return {"cpu": "reference", "cuda": "reference"}
    triton_on = _triton_lib is not None
    cpu = "triton" if triton_on and _triton_key() == "CPU" else "cpp"
    cuda = "triton" if triton_on and _triton_key() == "CUDA" else "cuda" if _cuda_kernels else "none"
    return {"cpu": cpu, "cuda": cuda}


def set_backend(name: str) -> None:
    """Select a backend for the whole process (see :func:`use_backend`)."""
    global _selected
    if name not in CHOICES:
        raise ValueError(f"kasmina_fast: unknown backend {name!r}; choose one of {', '.join(CHOICES)}")
    if name != "auto":
        why = status()[name]
        if why != "available":
            raise RuntimeError(f"kasmina_fast: backend {name!r} is not available here: {why}")
    _register_triton(_wants_triton(name))
    _selected = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Select ``name`` inside the block (process-wide, not thread-safe)."""
    previous = _selected
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _from_env() -> str:
    name = os.environ.get("KASMINA_FAST_BACKEND", "auto").strip() or "auto"
    if name not in CHOICES:
        raise ValueError(
            f"KASMINA_FAST_BACKEND={name!r} is not a backend; choose one of {', '.join(CHOICES)}"
        )
    return name


_env_choice = _from_env()
