"""Backend selection for the ``kasmina`` ops.

Backends:

=========== ================================================ =================
name        what runs                                        devices
=========== ================================================ =================
reference   the eager PyTorch expressions (``reference.py``) any
cpp         the fused C++ kernels of ``kasmina_fast._C``      CPU
triton      the Triton kernels (``triton_kernels/``)          CUDA; CPU with
                                                             TRITON_INTERPRET=1
cuda        the CUDA C++ kernels of ``kasmina_fast._C``       CUDA
triton_op   the Triton blend and STE kernels registered as   CUDA
            ``torch.library.triton_op`` (``ops/triton_op.py``:
            ``torch.compile`` traces into them)
=========== ================================================ =================

``auto`` (the default) picks per op and device: on the CPU ``cpp``, else
``reference``; on CUDA the first available of the op's measured preference
(``AUTO_CUDA``, which does not list ``triton_op`` until it is measured), else
``reference``. The environment variable
``KASMINA_FAST_BACKEND`` sets the process default; :func:`use_backend` forces
one backend inside a ``with`` block. The choice is process-wide (not
per-thread). A forced backend that cannot run a tensor's device raises,
it never falls back silently.

The hot path is one attribute lookup: :data:`CPU` and :data:`CUDA` hold, per
op, the callable for tensors of that device type, rebuilt whenever the
selection changes.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator

import torch

from kasmina_fast import _extension

NAMES: tuple[str, ...] = ("reference", "cpp", "triton", "cuda", "triton_op")
CHOICES: tuple[str, ...] = ("auto", *NAMES)

#: Preference order on CUDA for ``auto`` per op (see bench/RESULTS.md). The
#: CUDA and Triton gradient-norm kernels have not been validated or measured on
#: a GPU yet, so ``auto`` keeps the reference for them until they are (force
#: "cuda" or "triton" to use them).
AUTO_CUDA: dict[str, tuple[str, ...]] = {
    "blend": ("cuda", "triton"),
    "ste": ("cuda", "triton"),
    "foreach_norm": (),
    "gradient_stats": (),
}

# op -> backend -> callable, filled by the modules of kasmina_fast.ops
_IMPLS: dict[str, dict[str, Callable]] = {}


class _Routes:
    """The callable of every op for one device type (an attribute per op)."""

    blend: Callable
    ste: Callable
    foreach_norm: Callable
    gradient_stats: Callable


#: Routes for CPU tensors and for CUDA tensors. The ops pick one with
#: ``CUDA if t.is_cuda else CPU`` (a conditional, not an index by bool, which
#: some Dynamo versions refuse).
CPU = _Routes()
CUDA = _Routes()


def _triton_status() -> str:
    try:
        tk = importlib.import_module("kasmina_fast.triton_kernels")
    except ImportError as exc:  # pragma: no cover - depends on the install
        return f"triton is not importable ({exc})"
    return tk.status()


def triton_usable() -> bool:
    """True when the Triton kernels can run here (decided once, at import)."""
    return _triton_status() == "available"


def status() -> dict[str, str]:
    """Every backend with ``"available"`` or the reason it is not usable here."""
    cuda_ok = torch.cuda.is_available()
    out = {"reference": "available"}
    out["cpp"] = "available" if _extension.has_kernel("blend", "CPU") else _extension.REASON or "not built"
    out["triton"] = _triton_status()
    if not _extension.LOADED:
        out["cuda"] = _extension.REASON
    elif not _extension.has_kernel("blend", "CUDA"):
        out["cuda"] = (
            "the extension was built without CUDA kernels (no CUDA torch or no CUDA toolkit at build time)"
        )
    elif not cuda_ok:
        out["cuda"] = "no CUDA device is visible"
    else:
        out["cuda"] = "available"
    if not cuda_ok:  # (under TRITON_INTERPRET a triton_op runs but cannot be traced: no CPU route)
        out["triton_op"] = "no CUDA device is visible"
    else:
        out["triton_op"] = out["triton"]
    return out


def available() -> list[str]:
    """Names of the backends usable in this process."""
    return [name for name, why in status().items() if why == "available"]


def _devices(name: str) -> tuple[str, ...]:
    if name == "reference":
        return ("cpu", "cuda")
    if name == "cpp":
        return ("cpu",)
    if name == "triton":
        return ("cpu",) if os.environ.get("TRITON_INTERPRET") == "1" else ("cuda",)
    return ("cuda",)  # cuda, triton_op


def _unavailable(op: str, name: str, device: str, why: str) -> Callable:
    def fail(*args, **kwargs):
        raise RuntimeError(f"kasmina::{op}: backend '{name}' cannot run {device} tensors here: {why}")

    return fail


_selected: str = "auto"
_status_cache: dict[str, str] | None = None


def _resolve(op: str, device: str, name: str, st: dict[str, str]) -> Callable:
    impls = _IMPLS[op]
    if name == "auto":
        order = ("cpp",) if device == "cpu" else AUTO_CUDA.get(op, ())
        for cand in order:
            if st.get(cand) == "available" and cand in impls and device in _devices(cand):
                return impls[cand]
        return impls["reference"]
    if name not in impls:
        return _unavailable(op, name, device, f"it has no kernel for {op}")
    if st[name] != "available":
        return _unavailable(op, name, device, st[name])
    if device not in _devices(name):
        return _unavailable(op, name, device, f"it runs on {' and '.join(_devices(name))} only")
    return impls[name]


def _rebuild() -> None:
    global _status_cache
    if _status_cache is None:
        _status_cache = status()
    for op in _IMPLS:
        setattr(CPU, op, _resolve(op, "cpu", _selected, _status_cache))
        setattr(CUDA, op, _resolve(op, "cuda", _selected, _status_cache))


# dispatch key whose C++ kernel a backend's callable relies on
_NATIVE_KEY = {"cpp": "CPU", "cuda": "CUDA"}


def register(op: str, impls: dict[str, Callable]) -> None:
    """Called by each op module: the callables of ``op`` per backend.

    ``cpp`` and ``cuda`` entries are kept only when the extension has a kernel
    for ``op`` at that dispatch key, so a backend never claims an op it lacks.
    """
    _IMPLS[op] = {
        name: fn
        for name, fn in impls.items()
        if name not in _NATIVE_KEY or _extension.has_kernel(op, _NATIVE_KEY[name])
    }
    _rebuild()


def get_backend() -> str:
    """The selected backend name (``auto`` unless forced)."""
    return _selected


def set_backend(name: str) -> None:
    """Select a backend for the whole process (see :func:`use_backend`)."""
    global _selected
    if name not in CHOICES:
        raise ValueError(f"kasmina_fast: unknown backend {name!r}; choose one of {', '.join(CHOICES)}")
    if name != "auto":
        why = (_status_cache or status())[name]
        if why != "available":
            raise RuntimeError(f"kasmina_fast: backend {name!r} is not available here: {why}")
    _selected = name
    _rebuild()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force ``name`` for every op inside the block (process-wide, not thread-safe)."""
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
