"""Benchmark-only workloads (not shipped in the wheel): the gradient lists of the
benchmark anchors (bench/RESULTS.md), the small-slot chain, and interleaved timing of variants.
Importable as ``bench.workloads`` from the repository root (``pytest bench``,
``python -m bench.scripts.<script>``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

import kasmina_fast
from kasmina_fast import reference

CL = torch.channels_last


def make_chain(length: int, shape, device, backend: str):
    """``step()``: a chain of ``length`` blends (a host-bound slot's pattern),
    fwd + bwd; the slope over lengths is the per-op cost inside one backward."""
    gen = torch.Generator(device=device).manual_seed(0)
    host = torch.randn(shape, generator=gen, device=device).contiguous(memory_format=CL).requires_grad_()
    seeds = [
        torch.randn(shape, generator=gen, device=device).contiguous(memory_format=CL).requires_grad_()
        for _ in range(length)
    ]
    alpha = torch.rand((shape[0], 1, 1, 1), generator=gen, device=device).requires_grad_()
    fn = reference.blend if backend == "reference" else kasmina_fast.blend
    grad = torch.ones(shape, device=device).contiguous(memory_format=CL)

    def step():
        host.grad = alpha.grad = None
        for s in seeds:
            s.grad = None
        y = host
        for s in seeds:
            y = fn(y, s, alpha)
        y.backward(grad)

    return step


def resnet50_shapes() -> list[tuple[int, ...]]:
    """The 161 parameter shapes of a ResNet-50 (25.6M parameters, 102 MB in fp32)."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    cin = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(width, cin, 1, 1), (width,), (width,), (width, width, 3, 3), (width,), (width,)]
            shapes += [(4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if b == 0:
                shapes += [(4 * width, cin, 1, 1), (4 * width,), (4 * width,)]
            cin = 4 * width
    return [*shapes, (1000, 2048), (1000,)]


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """The 148 parameter shapes of GPT-2 small (124M parameters, 498 MB in fp32)."""
    block = [(768,), (768,), (768, 2304), (2304,), (768, 768), (768,)]
    block += [(768,), (768,), (768, 3072), (3072,), (3072, 768), (768,)]
    return [(50257, 768), (1024, 768), *block * 12, (768,), (768,)]


def gradient_list(name: str, device: str) -> list[torch.Tensor]:
    """Gradient-like lists of the benchmark anchors (bench/RESULTS.md): resnet50, gpt2_small, tiny14 (0.4 MB),
    many1000 (1000 tensors of 4096 elements, 16 MB: host-bound in ``_foreach_norm``)."""
    shapes = {
        "resnet50": resnet50_shapes,
        "gpt2_small": gpt2_small_shapes,
        "tiny14": lambda: [(7168,)] * 14,
        "many1000": lambda: [(4096,)] * 1000,
    }[name]()
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen).to(device) for s in shapes]


def interleaved(
    fns: dict[str, Callable[[], None]], rounds: int = 60, per_round: int = 1, warmup: int = 2
) -> dict[str, float]:
    """Median ms per call of each variant, the variants alternating round by round in a
    rotated order, so that a machine's drift during the run reaches them alike."""
    names = list(fns)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t0 = time.perf_counter()
            for _ in range(per_round):
                fns[n]()
            times[n].append((time.perf_counter() - t0) / per_round * 1e3)
    return {n: statistics.median(t) for n, t in times.items()}
