"""Registration of the ``kasmina`` ops with ``torch.library``.

With the C++ extension loaded, the schemas, CPU/CUDA kernels and autograd come
from C++ (``csrc/ops.cpp``) and this module adds only the fake kernels. Without
it, this module defines the same schemas and registers the reference math as
the kernels and Python autograd, so ``torch.ops.kasmina.*`` always exists.

Fakes reproduce the real outputs' shapes, dtypes and strides
(``empty_like(host)`` keeps channels_last) and run the same argument checks,
so a bad call fails at trace time with the eager message.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from kasmina_fast import _extension, reference
from kasmina_fast.ops import _checks
from kasmina_fast.ops._autograd import blend_autograd, ste_backward
from kasmina_fast.ops.schemas import CUDAGRAPH_UNSAFE, NAMESPACE, SCHEMAS

_lib: torch.library.Library | None = None


def _q(name: str) -> str:
    return f"{NAMESPACE}::{name}"


# ---- fake kernels (both modes) ---------------------------------------------------------------


def blend_fake(host: Tensor, seed: Tensor, alpha: Tensor) -> Tensor:
    _checks.check_blend(host, seed, alpha)
    return torch.empty_like(host)


def blend_backward_fake(
    grad: Tensor, host: Tensor, seed: Tensor, alpha: Tensor, output_mask: Sequence[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    _checks.check_blend_backward(grad, host, seed, alpha)
    d_host = torch.empty_like(host) if output_mask[0] else host.new_empty(0)
    d_seed = torch.empty_like(host) if output_mask[1] else host.new_empty(0)
    d_alpha = alpha.new_empty(alpha.shape) if output_mask[2] else alpha.new_empty(0)
    return d_host, d_seed, d_alpha


def ste_fake(host: Tensor, seed: Tensor) -> Tensor:
    _checks.check_ste(host, seed)
    return torch.empty_like(host)


def foreach_norm_fake(tensors: Sequence[Tensor]) -> Tensor:
    _checks.check_foreach_norm(tensors)
    return torch.empty(len(tensors), dtype=torch.float32, device=_checks.list_device(tensors))


def gradient_stats_fake(
    host_grads: Sequence[Tensor], seed_grads: Sequence[Tensor], host_params: int, seed_params: int
) -> Tensor:
    _checks.check_gradient_stats(host_grads, seed_grads, host_params, seed_params)
    return torch.empty(4, dtype=torch.float32, device=_checks.list_device(host_grads, seed_grads))


# ---- Python kernels and autograd, used only when the extension is absent ---------------------


def _blend_py(host: Tensor, seed: Tensor, alpha: Tensor) -> Tensor:
    _checks.check_blend(host, seed, alpha)
    return reference.blend_precise(host, seed, alpha)


def _blend_backward_py(grad, host, seed, alpha, output_mask):
    _checks.check_blend_backward(grad, host, seed, alpha)
    return reference.blend_backward(grad, host, seed, alpha, output_mask)


def _ste_py(host: Tensor, seed: Tensor) -> Tensor:
    _checks.check_ste(host, seed)
    return host.clone(memory_format=torch.preserve_format)


def _foreach_norm_py(tensors):
    _checks.check_foreach_norm(tensors)
    return reference.foreach_norm(tensors).to(_checks.list_device(tensors))


def _gradient_stats_py(host_grads, seed_grads, host_params, seed_params):
    _checks.check_gradient_stats(host_grads, seed_grads, host_params, seed_params)
    return reference.gradient_stats(host_grads, seed_grads, host_params, seed_params)


def _define_in_python() -> None:
    global _lib
    _lib = torch.library.Library(NAMESPACE, "DEF")
    for name, schema in SCHEMAS.items():
        _lib.define(schema, tags=(torch.Tag.cudagraph_unsafe,) if name in CUDAGRAPH_UNSAFE else ())
    for name, fn in {"blend": _blend_py, "blend_backward": _blend_backward_py, "ste": _ste_py}.items():
        torch.library.impl(_q(name), ("cpu", "cuda"), fn, lib=_lib)
    # the list ops must also answer empty lists, which have no device to dispatch on
    for name, fn in {"foreach_norm": _foreach_norm_py, "gradient_stats": _gradient_stats_py}.items():
        _lib.impl(name, fn, "CompositeExplicitAutograd")
    backward, setup_context = blend_autograd(torch.ops.kasmina.blend_backward)
    torch.library.register_autograd(_q("blend"), backward, setup_context=setup_context, lib=_lib)
    torch.library.register_autograd(_q("ste"), ste_backward, lib=_lib)


def _register_fakes() -> None:
    fakes = {
        "blend": blend_fake,
        "blend_backward": blend_backward_fake,
        "ste": ste_fake,
        "foreach_norm": foreach_norm_fake,
        "gradient_stats": gradient_stats_fake,
    }
    if _extension.has_kernel("triton_blend", "Autograd"):
        # the Triton ops defined in C++ (their kernels come from ops/triton_ops.py)
        fakes |= {
            "triton_blend": blend_fake,
            "triton_blend_backward": blend_backward_fake,
            "triton_ste": ste_fake,
        }
    if _extension.has_kernel("triton_foreach_norm", "Autograd"):
        fakes |= {"triton_foreach_norm": foreach_norm_fake, "triton_gradient_stats": gradient_stats_fake}
    for name, fn in fakes.items():
        torch.library.register_fake(_q(name), fn, lib=_lib)


if not _extension.LOADED:
    _define_in_python()
_register_fakes()
