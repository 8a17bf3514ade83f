"""torch.compile(fullgraph=True) of modules using blend, valve and ste: no graph break,
results equal eager, and a changing alpha does not recompile."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import kasmina_fast
from tests.utils import cpu_backends, with_backend


class Slot(torch.nn.Module):
    """A host conv, an isolated seed, an STE (TRAINING), two blends and a valve (BLENDING)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.host = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.seed = torch.nn.Conv2d(4, 4, 1)
        self.register_buffer("alpha", torch.tensor(0.0))
        self.gate = torch.nn.Parameter(torch.full((2, 1, 1, 1), 0.6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.host(x)
        s = self.seed(h.detach())
        y = kasmina_fast.ste(h, s)
        y = kasmina_fast.blend(y, s, self.alpha)
        y = kasmina_fast.valve(y, s, self.alpha, isolate=True)
        return kasmina_fast.blend(y, s, self.gate)


def step(model, x):
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out * out).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_fullgraph_matches_eager_without_recompiles(backend, compiler):
    torch._dynamo.reset()
    model = Slot().to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 6, 6).to(memory_format=torch.channels_last)
    counter = CompileCounterWithBackend(compiler)
    with with_backend(backend):
        compiled = torch.compile(model, backend=counter, fullgraph=True)
        for i in range(20):
            model.alpha.fill_(i / 19)  # the alpha ramp of BLENDING
            want = step(model, x)
            got = step(compiled, x)
            torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
            for g, w in zip(got[1], want[1]):
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert counter.frame_count == 1, f"{counter.frame_count} compiles for 20 alpha values"


@pytest.mark.parametrize("backend", cpu_backends())
def test_compile_ops_appear_in_graph(backend):
    """The fast backends reach the graph as kasmina ops (not decomposed, not a graph break)."""
    torch._dynamo.reset()
    seen = []

    def spy(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    with with_backend(backend):
        fn = torch.compile(
            lambda h, s, a: kasmina_fast.valve(kasmina_fast.ste(kasmina_fast.blend(h, s, a), s), s, a),
            backend=spy,
            fullgraph=True,
        )
        fn(torch.randn(3, 4), torch.randn(3, 4), torch.tensor(0.3))
    assert {"kasmina.blend.default", "kasmina.ste.default", "kasmina.valve.default"} <= set(seen), seen


@pytest.mark.parametrize("backend", cpu_backends())
def test_compile_python_float_alpha_recompiles_at_most_once(backend):
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    x = torch.randn(2, 4)
    with with_backend(backend):
        fn = torch.compile(lambda h, a: kasmina_fast.blend(h, 2 * h, a), backend=counter, fullgraph=True)
        for i in range(20):
            torch.testing.assert_close(fn(x, i / 19), torch.lerp(x, 2 * x, i / 19))
    assert counter.frame_count <= 2


def test_export_traces_the_ops():
    class M(torch.nn.Module):
        def forward(self, h, s, a):
            return kasmina_fast.valve(kasmina_fast.ste(kasmina_fast.blend(h, s, a), s), s, a)

    args = (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.rand(2, 1, 1, 1))
    ep = torch.export.export(M(), args)
    torch.testing.assert_close(ep.module()(*args), M()(*args))


@pytest.mark.parametrize("backend", cpu_backends("gradient_stats"))
def test_norm_wrappers_compile_fullgraph(backend):
    """foreach_norm and gradient_stats trace without a graph break (the wrappers' C++
    list readers are eager-only) and give the eager reference's numbers."""
    ts = [torch.randn(5), torch.randn(3, 4), torch.randn(7, dtype=torch.float64)]

    def telemetry(a, b, c):
        return kasmina_fast.foreach_norm([a, b, c]), kasmina_fast.gradient_stats([a], [b, c], 10, 3)

    counter = CompileCounterWithBackend("eager")
    with with_backend(backend):
        norms, stats = torch.compile(telemetry, backend=counter, fullgraph=True)(*ts)
    torch.testing.assert_close(norms, kasmina_fast.reference.foreach_norm(ts))
    torch.testing.assert_close(stats, kasmina_fast.reference.gradient_stats(ts[:1], ts[1:], 10, 3))
    assert counter.frame_count == 1
