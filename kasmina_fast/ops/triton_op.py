"""The ``triton_op`` backend: the Triton blend and STE registered with
``torch.library.triton_op`` (``kasmina::triton_op_blend``,
``kasmina::triton_op_blend_backward``, ``kasmina::triton_op_ste``).

The ``triton`` backend's ops are opaque to ``torch.compile``: a compiled graph
calls them through the dispatcher, and they launch their kernels through
Triton's Python launcher. A ``triton_op`` is traced into instead: Inductor sees
its kernels (launched through ``torch.library.wrap_triton``) and the tensor ops
around them, and launches them from its own generated code. Which of the two
compiles better is a measurement on a GPU (``pytest bench -k compiled``,
bench/RESULTS.md); until it is made, ``auto`` does not pick this backend.

Kernels, checks, layouts and the strided fallback are the ``triton`` backend's
(the Python bodies in ``ops/triton_ops.py``, kernels in ``triton_kernels/blend.py``).
Torch's kernel analysis must see only the outputs as written, or a compiled
graph clones the inputs it believes mutated before every launch
(tests/ops/test_triton_op.py checks the analysis on the CPU for a Hopper target).

Eager calls take torch's Python custom-op path with Python autograd: on the host
this backend is slower than ``triton`` outside ``torch.compile``. It is offered
for CUDA tensors only: under ``TRITON_INTERPRET=1`` a ``triton_op`` runs eagerly
(how CI tests its math on CPU tensors) but cannot be traced.
"""

from __future__ import annotations

import torch
import torch._library.triton
from torch import Tensor
from torch.library import triton_op, wrap_triton
from triton.runtime.jit import JITFunction

from kasmina_fast.ops._autograd import blend_autograd, ste_backward
from kasmina_fast.ops.triton_ops import (
    BLEND_BACKWARD_SCHEMA,
    BLEND_SCHEMA,
    STE_SCHEMA,
    blend_backward_body,
    blend_body,
    ste_body,
)
from kasmina_fast.triton_kernels import blend as K


def _wrap(kernel):
    """``wrap_triton(kernel)`` for a JIT kernel; under TRITON_INTERPRET the
    interpreter's kernel itself (it is never traced, and torch < 2.12 refuses to
    wrap one)."""
    return wrap_triton(kernel) if isinstance(kernel, JITFunction) else kernel


def _blend(host: Tensor, seed: Tensor, alpha: Tensor) -> Tensor:
    return blend_body(host, seed, alpha, _wrap)


def _blend_backward(
    grad: Tensor, host: Tensor, seed: Tensor, alpha: Tensor, output_mask: list[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    return blend_backward_body(grad, host, seed, alpha, output_mask, _wrap)


def _ste(host: Tensor, seed: Tensor) -> Tensor:
    return ste_body(host, seed, _wrap)


_blend_op = triton_op("kasmina::triton_op_blend", _blend, mutates_args=(), schema=BLEND_SCHEMA)
_blend_backward_op = triton_op(
    "kasmina::triton_op_blend_backward", _blend_backward, mutates_args=(), schema=BLEND_BACKWARD_SCHEMA
)
_ste_op = triton_op("kasmina::triton_op_ste", _ste, mutates_args=(), schema=STE_SCHEMA)


def _name_kernels(op: str, kernels: list) -> None:
    """torch keys its compile cache (AOTAutograd's) on the source of a triton_op's
    kernels, which it finds by scanning the op's Python source for
    ``wrap_triton(<kernel>)``. The launchers take ``wrap`` as an argument, which that
    scan cannot follow: without this, a changed kernel could be served stale from the
    cache. The table is torch's (private; tests/ops/test_triton_op.py checks it)."""
    table = getattr(torch._library.triton, "triton_ops_to_kernels", None)
    if table is not None:
        table[op] = kernels


_name_kernels("kasmina::triton_op_blend", [K.blend_forward_kernel])
_name_kernels("kasmina::triton_op_blend_backward", [K.blend_backward_kernel, K.d_alpha_finalize_kernel])
_name_kernels("kasmina::triton_op_ste", [K.copy_kernel])

_backward, _setup = blend_autograd(_blend_backward_op)
_blend_op.register_autograd(_backward, setup_context=_setup)
_ste_op.register_autograd(ste_backward)

#: The ops' OpOverloads (what the backend table holds; one dispatcher call each).
triton_op_blend: torch._ops.OpOverload = _blend_op._opoverload
triton_op_blend_backward: torch._ops.OpOverload = _blend_backward_op._opoverload
triton_op_ste: torch._ops.OpOverload = _ste_op._opoverload
