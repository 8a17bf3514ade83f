"""Throughput of the fused ops against the eager reference, same run.

    pytest bench --benchmark-group-by=param:case

CPU: [64,64,32,32] channels_last fp32. CUDA: [256,64,32,32] channels_last and
[32,512,768], fp32 and bf16. Every step is forward + backward with the
gradients reset; on CUDA each timed call ends with a synchronize.
Per-call overhead: the same on an 8x8 tensor, against torch.lerp, the eager
valve expression and the eager STE expression.
"""

from __future__ import annotations

import pytest
import torch

import kasmina_fast
from bench.workloads import gradient_list, make_chain
from kasmina_fast.cli.cases import backends_here, make_norm_step, make_step, passes, selected, sync

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

if DEVICE == "cpu":
    SIZES = [((64, 64, 32, 32), torch.float32)]
else:
    SIZES = [
        ((256, 64, 32, 32), torch.float32),
        ((256, 64, 32, 32), torch.bfloat16),
        ((32, 512, 768), torch.float32),
        ((32, 512, 768), torch.bfloat16),
    ]
OPS = [("blend", "scalar"), ("blend", "learnable"), ("valve", "scalar"), ("valve", "learnable"), ("ste", "-")]

CASES = [
    pytest.param(op, kind, shape, dtype, id=f"{op}-{kind}-{'x'.join(map(str, shape))}-{str(dtype)[6:]}")
    for shape, dtype in SIZES
    for op, kind in OPS
]


def timed(benchmark, fn, backend: str, rounds: int, warmup: int) -> None:
    """Time ``fn()`` plus a device sync under ``backend`` ("native" = default routing)."""

    def run():
        fn()
        sync(DEVICE)

    with selected(backend):
        benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=warmup)


def describe_case(benchmark, op, kind, shape, dtype, label: str) -> None:
    """Group and bytes of an op case (bytes = the passes of the floor, ``cases.passes``)."""
    benchmark.group = f"{op}-{kind}-{'x'.join(map(str, shape))}-{str(dtype)[6:]}-{DEVICE}"
    nbytes = passes(op, kind) * torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
    benchmark.extra_info.update(backend=label, device=DEVICE, bytes=nbytes)


@pytest.mark.parametrize("backend", backends_here(DEVICE))
@pytest.mark.parametrize(("op", "kind", "shape", "dtype"), CASES)
def test_fwd_bwd(benchmark, backend, op, kind, shape, dtype):
    step = make_step(op, kind, shape, dtype, DEVICE, backend)
    describe_case(benchmark, op, kind, shape, dtype, backend)
    timed(benchmark, step, backend, rounds=50 if DEVICE == "cpu" else 100, warmup=3)


@pytest.mark.skipif(DEVICE != "cuda", reason="torch.compile of the reference is timed on CUDA only")
@pytest.mark.parametrize(("op", "kind", "shape", "dtype"), CASES)
def test_fwd_bwd_compiled_reference(benchmark, op, kind, shape, dtype):
    step = make_step(op, kind, shape, dtype, DEVICE, "reference", compiled=True)
    describe_case(benchmark, op, kind, shape, dtype, "reference+compile")
    timed(benchmark, step, "native", rounds=100, warmup=5)


@pytest.mark.parametrize("backend", ["native", *backends_here(DEVICE)])
@pytest.mark.parametrize("op", ["foreach_norm", "gradient_stats"])
def test_norms(benchmark, backend, op):
    """30 gradient-like tensors of mixed sizes (1.5M elements): one op call.
    native = ``torch._foreach_norm`` (+ stack and total norms for gradient_stats)."""
    step = make_norm_step(op, DEVICE, backend)
    benchmark.group = f"{op}-30-tensors-{DEVICE}"
    benchmark.extra_info.update(backend=backend, device=DEVICE)
    timed(benchmark, step, backend, rounds=50, warmup=3)


NORM_LISTS = ["tiny14", "many1000", "resnet50"] + (["gpt2_small"] if DEVICE == "cuda" else [])
NORM_BACKENDS = ["native", *backends_here(DEVICE)]


@pytest.mark.parametrize("backend", NORM_BACKENDS)
@pytest.mark.parametrize("name", NORM_LISTS)
def test_gradient_stats_on_model_gradients(benchmark, backend, name):
    """gradient_stats over a model's gradient list (host = all but the last 10 tensors),
    against ``torch._foreach_norm`` + stack + total norms (the spec's telemetry today)."""
    ts = gradient_list(name, DEVICE)
    host, seed = ts[:-10], ts[-10:]
    nbytes = sum(t.numel() * t.element_size() for t in ts)
    benchmark.group = f"gradient_stats-{name}-{DEVICE}"
    benchmark.extra_info.update(backend=backend, device=DEVICE, bytes=nbytes)
    if backend == "native":

        def call():
            h = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(host)))
            s = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(seed)))
            return torch.stack([h, s, s / h])
    else:

        def call():
            return kasmina_fast.gradient_stats(host, seed, 1000, 10)

    timed(benchmark, call, backend, rounds=20 if DEVICE == "cpu" else 100, warmup=2)


# the library's own kernels of the device, and on CUDA also Triton
PARAM_BACKEND = {"cpu": "cpp", "cuda": "cuda"}[DEVICE]
MONITOR_BACKENDS = backends_here(DEVICE)[1:]


@pytest.mark.skipif(PARAM_BACKEND not in kasmina_fast.available(), reason="no library kernel here")
@pytest.mark.parametrize("backend", MONITOR_BACKENDS)
@pytest.mark.parametrize("impl", ["python_lists", "param_gradient_stats"])
@pytest.mark.parametrize("numel", [16, 4096])
def test_monitor_check_host_cost(benchmark, backend, impl, numel):
    """The G2 telemetry call over 1000 parameters (990 host, 10 seed): the .grad lists
    built in Python then the op, against ``param_gradient_stats`` (lists read in C++).
    16 elements a parameter: the host cost alone; 4096: a 16 MB list.
    On CUDA the call is timed with its synchronize."""
    from torch import nn

    from kasmina_fast.ops import gradient_stats, param_gradient_stats

    params = [nn.Parameter(torch.randn(numel, device=DEVICE)) for _ in range(1000)]
    for p in params:
        p.grad = torch.randn(numel, device=DEVICE)
    host, seed = params[:990], params[990:]
    benchmark.group = f"monitor-1000x{numel}-{DEVICE}"
    label = impl if backend == PARAM_BACKEND else f"{impl} ({backend})"
    benchmark.extra_info.update(backend=label, device=DEVICE, bytes=1000 * numel * 4)
    if impl == "python_lists":

        def call():
            hg = [p.grad for p in host if p.grad is not None]
            sg = [p.grad for p in seed if p.grad is not None]
            return gradient_stats(hg, sg, 990 * numel, 10 * numel)
    else:

        def call():
            return param_gradient_stats(host, seed, 990 * numel, 10 * numel)

    timed(benchmark, call, backend, rounds=200, warmup=10)


@pytest.mark.skipif(DEVICE != "cuda", reason="timed on CUDA only")
@pytest.mark.parametrize("backend", backends_here(DEVICE)[1:])
@pytest.mark.parametrize(("op", "kind", "shape", "dtype"), CASES[:6])
def test_fwd_bwd_compiled_fast(benchmark, backend, op, kind, shape, dtype):
    """torch.compile(fullgraph) around the fast op: the compiled path must not be slower than eager."""
    step = make_step(op, kind, shape, dtype, DEVICE, backend, compiled_fast=True)
    describe_case(benchmark, op, kind, shape, dtype, f"{backend}+compile")
    timed(benchmark, step, backend, rounds=100, warmup=5)


@pytest.mark.skipif(DEVICE != "cuda", reason="the small-slot regime is measured on CUDA")
@pytest.mark.parametrize("backend", backends_here(DEVICE))
@pytest.mark.parametrize("length", [1, 9])
@pytest.mark.parametrize("shape", [(32, 64, 16, 16), (128, 64, 16, 16)], ids=lambda s: "x".join(map(str, s)))
def test_small_slot_chain(benchmark, backend, length, shape):
    """Chains of 1 and 9 per-sample learnable blends, fwd + bwd: per-op cost =
    (t9 - t1) / 8, compared across backends by bench/scripts/summarize.py."""
    step = make_chain(length, shape, DEVICE, backend)
    benchmark.group = f"chain-{'x'.join(map(str, shape))}-{DEVICE}"
    benchmark.extra_info.update(backend=f"{backend}@{length}", device=DEVICE, chain=length, base=backend)

    timed(benchmark, step, backend, rounds=200, warmup=10)


OVERHEAD_CASES = [
    pytest.param(dev, impl, id=f"{dev}-{impl}")
    for dev in dict.fromkeys(["cpu", DEVICE])
    for impl in ["native", *backends_here(dev)]
]


@pytest.mark.parametrize(("device", "impl"), OVERHEAD_CASES)
@pytest.mark.parametrize("op", ["blend", "valve", "ste"])
def test_per_call_overhead(benchmark, device, op, impl):
    """Host cost of one tiny fwd+bwd (8x8): the fast path against the native expression.
    On CUDA the step is issued without a synchronize: this is launch/dispatch cost."""
    h = torch.randn(8, 8, device=device, requires_grad=True)
    s = torch.randn(8, 8, device=device, requires_grad=True)
    a = torch.tensor(0.3, device=device)
    g = torch.ones(8, 8, device=device)
    benchmark.group = f"overhead-{op}-8x8-{device}"
    benchmark.extra_info.update(backend=impl, device=device)
    if impl == "native":
        fn = {
            "blend": lambda: torch.lerp(h, s, a),
            "valve": lambda: h * (1 + a * torch.tanh(s - h)),
            "ste": lambda: h + (s - s.detach()),
        }[op]
    else:
        from kasmina_fast import reference

        mod = reference if impl == "reference" else kasmina_fast
        fn = {
            "blend": lambda: mod.blend(h, s, a),
            "valve": lambda: mod.valve(h, s, a),
            "ste": lambda: mod.ste(h, s),
        }[op]

    def run():
        h.grad = s.grad = None
        fn().backward(g)

    with selected(impl):
        benchmark.pedantic(run, rounds=2000, iterations=1, warmup_rounds=100)
    sync(device)
