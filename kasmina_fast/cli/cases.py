"""Benchmark cases shared by `python -m kasmina_fast bench` and `pytest bench`: one fwd+bwd step per
call, gradients reset each iteration, for a chosen backend. ``reference`` is not a backend
but the eager reference called directly (``selected`` swaps it into the lifecycle layer)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

import kasmina_fast
from kasmina_fast import reference

CL = torch.channels_last


def backends_here(device: str) -> list[str]:
    """What to time on ``device``: the eager reference first, then every backend
    whose kernels run that device's tensors."""
    fast = [b for b in kasmina_fast.available() if (b == "cpp") == (device == "cpu")]
    return ["reference", *fast]


def _reference_param_stats(host_params, seed_params, host_count: int = 0, seed_count: int = 0):
    grads = [[p.grad for p in ps if p.grad is not None] for ps in (host_params, seed_params)]
    return reference.gradient_stats(*grads, host_count, seed_count)


@contextlib.contextmanager
def selected(backend: str) -> Iterator[None]:
    """Run the block under ``backend``; ``native`` (torch's own ops, timed by the caller)
    changes nothing, ``reference`` swaps the eager reference into the lifecycle layer
    (what a training step costs without the fast ops)."""
    if backend == "native":
        yield
        return
    if backend != "reference":
        with kasmina_fast.use_backend(backend):
            yield
        return
    from kasmina_fast.lifecycle import isolation, slot

    saved = slot.blend, slot.valve, slot.ste, isolation.param_gradient_stats
    slot.blend, slot.valve, slot.ste, isolation.param_gradient_stats = (
        reference.blend,
        reference.valve,
        reference.ste,
        _reference_param_stats,
    )
    try:
        yield
    finally:
        slot.blend, slot.valve, slot.ste, isolation.param_gradient_stats = saved


def op_fn(op: str, backend: str, compiled: bool = False, compiled_fast: bool = False) -> Callable:
    """The callable timed for ``op`` ('blend', 'valve' or 'ste') under ``backend``."""
    if compiled:  # torch.compile of the eager reference
        return torch.compile(getattr(reference, op))
    fn = getattr(kasmina_fast, op)
    if compiled_fast:  # torch.compile around the fast op (traced under the selected backend)
        return torch.compile(fn, fullgraph=True)
    if backend == "reference":
        return getattr(reference, op)
    return fn


def make_step(
    op: str,
    alpha_kind: str,
    shape,
    dtype,
    device,
    backend: str,
    compiled: bool = False,
    compiled_fast: bool = False,
):
    """Returns ``step()`` doing forward + backward once, with grads reset.

    Time it inside ``selected(backend)``.
    """
    gen = torch.Generator(device=device).manual_seed(0)
    fmt = CL if len(shape) == 4 else torch.contiguous_format

    def leaf():
        t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)
        return t.contiguous(memory_format=fmt).requires_grad_()

    host, seed = leaf(), leaf()
    grad = (
        torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
        .to(dtype)
        .contiguous(memory_format=fmt)
    )
    fn = op_fn(op, backend, compiled, compiled_fast)
    if op == "ste":
        leaves = (host, seed)

        def call():
            return fn(host, seed)
    else:
        if alpha_kind == "scalar":
            alpha = torch.tensor(0.3, device=device)
        else:
            ashape = (shape[0],) + (1,) * (len(shape) - 1)
            alpha = torch.rand(ashape, generator=gen, device=device).requires_grad_(alpha_kind == "learnable")
        leaves = (host, seed, alpha)

        def call():
            return fn(host, seed, alpha)

    def step():
        for t in leaves:
            t.grad = None
        call().backward(grad)

    return step


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def passes(op: str, alpha_kind: str) -> int:
    """Tensor-sized passes over memory the fused fwd+bwd must make (the floor):
    blend reads host, seed, writes out; its backward reads g, writes d_host,
    d_seed, and reads host and seed again only for a learnable alpha. valve's
    backward always reads host and seed. The STE is one copy (a read and a
    write) and no backward kernel."""
    if op == "ste":
        return 2
    if op == "valve":
        return 3 + 5
    return 3 + (5 if alpha_kind == "learnable" else 3)


def make_norm_step(op: str, device: str, backend: str, compiled: bool = False, n: int = 2**20):
    """``step()`` for ``foreach_norm`` / ``gradient_stats`` over a gradient-like
    list of 30 tensors of mixed sizes (about ``1.4 n`` elements). ``backend``
    "native" times ``torch._foreach_norm`` (plus stack and totals for the stats)."""
    gen = torch.Generator().manual_seed(0)
    sizes = [(n // 8, 9), (n // 4,), (64,), (n // 16, 3), (7,)] * 6
    ts = [torch.randn(s, generator=gen).to(device) for s in sizes]
    if backend == "native":
        if op == "foreach_norm":
            return lambda: torch._foreach_norm(ts)

        def stats():
            h = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(ts[:20])))
            s = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(ts[20:])))
            return torch.stack([h, s, s / h])

        return stats
    if op == "foreach_norm":
        fn = reference.foreach_norm if backend == "reference" else kasmina_fast.foreach_norm
        fn = torch.compile(fn) if compiled else fn
        return lambda: fn(ts)
    fn = reference.gradient_stats if backend == "reference" else kasmina_fast.gradient_stats
    fn = torch.compile(fn) if compiled else fn
    return lambda: fn(ts[:20], ts[20:], 1000, 100)
