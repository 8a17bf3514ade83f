"""GPU-only properties of the CUDA and Triton backends (skipped without a GPU;
bench/gpu_check.sh runs them): no host sync, CUDA-graph capture, compile
with reduce-overhead, opcheck on CUDA, tensors over 2^31 elements, and the
same errors as on the CPU, for blend, valve and ste. Equivalence and determinism
over the full matrix run in test_blend.py / test_valve.py / test_ste.py, which
include the CUDA targets."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import kasmina_fast
from tests.utils import (
    assert_close_rel,
    check_gradient_stats_edges,
    check_more_than_2_31_elements,
    lists_sharing_addresses,
    norm_lists,
    oracle_norms,
    oracle_stats,
    with_backend,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA_BACKENDS = [b for b in ("cuda", "triton") if b in kasmina_fast.available()]
CL = torch.channels_last


def leaves(shape=(8, 16, 12, 12), dtype=torch.float32, per_sample=True):
    g = torch.Generator(device="cuda").manual_seed(0)
    h = (
        torch.randn(shape, device="cuda", generator=g, dtype=dtype)
        .contiguous(memory_format=CL)
        .requires_grad_()
    )
    s = (
        torch.randn(shape, device="cuda", generator=g, dtype=dtype)
        .contiguous(memory_format=CL)
        .requires_grad_()
    )
    ashape = (shape[0], 1, 1, 1) if per_sample else ()
    a = torch.rand(ashape, device="cuda", generator=g).requires_grad_()
    gout = torch.randn(shape, device="cuda", generator=g, dtype=dtype).contiguous(memory_format=CL)
    return h, s, a, gout


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_no_host_sync(backend):
    h, s, a, gout = leaves()
    with with_backend(backend):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            kasmina_fast.blend(h, s, a).backward(gout)
            kasmina_fast.blend(h, s, 0.3).backward(gout)
            kasmina_fast.valve(h, s, a).backward(gout)
            kasmina_fast.valve(h, s, 0.3, isolate=True).backward(gout)
            kasmina_fast.ste(h, s).backward(gout)
        finally:
            torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_graph_capture_and_replay(backend):
    h, s, a, gout = leaves()

    def step():
        out = kasmina_fast.ste(kasmina_fast.blend(h, s, a), s)
        out.backward(gout)
        return out

    with with_backend(backend):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                for t in (h, s, a):
                    t.grad = None
                step()
        torch.cuda.current_stream().wait_stream(side)
        for t in (h, s, a):
            t.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = step()
        for trial in range(2):
            with torch.no_grad():  # new inputs, same memory
                for t in (h, s):
                    t.copy_(torch.randn_like(t))
                a.copy_(torch.rand_like(a) * 1.2 - 0.1)
                gout.copy_(torch.randn_like(gout))
            graph.replay()
            torch.cuda.synchronize()
            got = [static_out.detach().clone(), h.grad.clone(), s.grad.clone(), a.grad.clone()]
            h2, s2, a2 = (t.detach().clone().requires_grad_() for t in (h, s, a))
            ref = torch.lerp(h2, s2, a2.clamp(0, 1))
            ref.backward(gout)
            want = [ref.detach(), h2.grad, s2.grad + gout, a2.grad]  # the STE adds g to seed
            for x, y, name in zip(got, want, ("out", "d_host", "d_seed", "d_alpha")):
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-4, msg=f"replay {trial}: {name}")


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compile_fullgraph_on_cuda(backend, mode):
    torch._dynamo.reset()
    h, s, a, gout = leaves()
    counter = CompileCounterWithBackend("inductor")

    def f(h, s, a):
        return kasmina_fast.ste(kasmina_fast.blend(h, s, a), s)

    with with_backend(backend):
        if mode == "default":
            compiled = torch.compile(f, backend=counter, fullgraph=True)
        else:
            compiled = torch.compile(f, mode=mode, fullgraph=True)
        for _ in range(3):
            for t in (h, s, a):
                t.grad = None
            out = compiled(h, s, a)
            out.backward(gout)
        got = [out.detach(), h.grad, s.grad, a.grad]
    h2, s2, a2 = (t.detach().clone().requires_grad_() for t in (h, s, a))
    ref = torch.lerp(h2, s2, a2.clamp(0, 1))
    ref.backward(gout)
    want = [ref.detach(), h2.grad, s2.grad + gout, a2.grad]  # the STE adds g to seed
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-4)
    if mode == "default":
        assert counter.frame_count == 1


@pytest.mark.skipif("cuda" not in kasmina_fast.available(), reason="CUDA kernels not built")
@pytest.mark.parametrize("per_sample", [False, True])
def test_opcheck_on_cuda(per_sample):
    h, s, a, gout = leaves(per_sample=per_sample)
    torch.library.opcheck(torch.ops.kasmina.blend.default, (h, s, a))
    mask = [True, True, True]
    torch.library.opcheck(
        torch.ops.kasmina.blend_backward.default, (gout, h.detach(), s.detach(), a.detach(), mask)
    )
    torch.library.opcheck(torch.ops.kasmina.ste.default, (h, s))
    for isolate in (False, True):
        torch.library.opcheck(torch.ops.kasmina.valve.default, (h, s, a, isolate))
        torch.library.opcheck(
            torch.ops.kasmina.valve_backward.default,
            (gout, h.detach(), s.detach(), a.detach(), isolate, mask),
        )


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_valve_graph_capture_and_compile(backend):
    """valve's forward and fused backward (d_alpha from the stream's scratch) replay in a
    CUDA graph with new inputs, and compile fullgraph under reduce-overhead."""
    h, s, a, gout = leaves()

    def step():
        out = kasmina_fast.valve(h, s, a)
        out.backward(gout)
        return out

    def want():
        h2, s2, a2 = (t.detach().clone().requires_grad_() for t in (h, s, a))
        ref = kasmina_fast.reference.valve(h2, s2, a2)
        ref.backward(gout)
        return [ref.detach(), h2.grad, s2.grad, a2.grad]

    with with_backend(backend):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                for t in (h, s, a):
                    t.grad = None
                step()
        torch.cuda.current_stream().wait_stream(side)
        for t in (h, s, a):
            t.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = step()
        with torch.no_grad():
            for t in (h, s):
                t.copy_(torch.randn_like(t))
            a.copy_(torch.rand_like(a) * 1.2 - 0.1)
        graph.replay()
        torch.cuda.synchronize()
        got = [static_out.detach().clone(), h.grad.clone(), s.grad.clone(), a.grad.clone()]
        for x, y, name in zip(got, want(), ("out", "d_host", "d_seed", "d_alpha")):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-4, msg=f"replay: {name}")
        torch._dynamo.reset()
        compiled = torch.compile(kasmina_fast.valve, mode="reduce-overhead", fullgraph=True)
        for _ in range(3):
            for t in (h, s, a):
                t.grad = None
            out = compiled(h, s, a)
            out.backward(gout)
        got = [out.detach(), h.grad, s.grad, a.grad]
    for x, y in zip(got, want()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_opcheck_bf16_odd_sizes(backend):
    """Not a multiple of the vector width: the scalar kernels run."""
    h, s, a, _ = leaves(shape=(3, 5, 7, 9), dtype=torch.bfloat16)
    with with_backend(backend):
        torch.library.opcheck(torch.ops.kasmina.blend.default, (h, s, a))
        torch.library.opcheck(torch.ops.kasmina.valve.default, (h, s, a, False))


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_device_mismatch_is_refused(backend):
    h = torch.randn(4, 3, device="cuda")
    with with_backend(backend):
        with pytest.raises(ValueError, match="kasmina::blend: seed must be on the device of host"):
            kasmina_fast.blend(h, h.cpu(), torch.tensor(0.5, device="cuda"))
        with pytest.raises(ValueError, match="kasmina::blend: alpha must be on the device of host"):
            kasmina_fast.blend(h, h, torch.tensor(0.5))


def blend_grads(op, h, s, a, g):
    """d_host, d_seed, d_alpha of one learnable blend through ``op`` (a
    ``blend_backward`` op), and the fp64 d_alpha it should give."""
    got = op(g, h, s, a, [True, True, True])
    want = (g.double() * (s.double() - h.double())).flatten(1).sum(1).view_as(a)
    return got, want.where((a >= 0) & (a <= 1), torch.zeros_like(want)).float()


@pytest.mark.skipif("cuda" not in kasmina_fast.available(), reason="CUDA kernels not built")
def test_learnable_backward_scratch_is_reused_across_sizes_and_streams():
    """The CUDA backward keeps d_alpha's counters per stream, and the kernel puts
    them back to zero (csrc/stream_scratch.h). Sample counts that shrink and
    grow, two streams at once, and a captured graph replayed among eager calls
    all give the fp64 d_alpha, with the same bits on every call."""
    op = torch.ops.kasmina.blend_backward.default  # (auto: the CUDA C++ kernel)
    assert kasmina_fast.backends.active()["cuda"] == "cuda"
    gen = torch.Generator(device="cuda").manual_seed(3)

    def inputs(B, N):  # several blocks per sample (grid.x > 1) for every case
        h, s, g = (torch.randn(B, N, device="cuda", generator=gen) for _ in range(3))
        a = torch.rand(B, 1, device="cuda", generator=gen) * 1.2 - 0.1
        return h, s, a, g

    # vectorised and scalar kernels; sizes that shrink and grow
    cases = [inputs(B, N) for B, N in [(3, 2**18), (300, 8192), (3, 2**18 + 1), (1, 2**20), (1000, 4096)]]
    firsts = []
    for h, s, a, g in cases + cases:  # each case twice: the second run reuses a grown buffer
        (_, _, da), want = blend_grads(op, h, s, a, g)
        torch.testing.assert_close(da, want, rtol=1e-4, atol=1e-3)
        firsts.append(da)
    for x, y in zip(firsts[: len(cases)], firsts[len(cases) :]):
        assert torch.equal(x, y)

    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    for st in streams:
        st.wait_stream(torch.cuda.current_stream())
    results = [[], []]
    for _ in range(5):  # the two streams' kernels may overlap: each has its own counters
        for i, st in enumerate(streams):
            with torch.cuda.stream(st):
                results[i].append(blend_grads(op, *cases[i])[0][2])
    torch.cuda.synchronize()
    for i in range(2):
        for da in results[i]:
            assert torch.equal(da, firsts[i])

    h, s, a, g = cases[1]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        blend_grads(op, h, s, a, g)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        (_, _, static_da), _ = blend_grads(op, h, s, a, g)
    for _ in range(3):
        graph.replay()
        eager = blend_grads(op, *cases[0])[0][2]  # the default stream's scratch, between replays
        torch.cuda.synchronize()
        assert torch.equal(static_da, firsts[1])
        assert torch.equal(eager, firsts[0])


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 60 * 2**30,
    reason="needs a GPU with 60 GiB",
)
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_more_than_2_31_elements(backend):
    """bf16 [2, 2^30 + 2^19]: 2^31 + 2^20 elements (4.3 GB per tensor), per-sample alpha."""
    B, N = 2, 2**30 + 2**19
    gen = torch.Generator(device="cuda").manual_seed(1)
    h = torch.randn(B, N, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    s = torch.randn(B, N, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    a = torch.tensor([[0.25], [0.75]], device="cuda", requires_grad=True)
    g = torch.randn(B, N, device="cuda", dtype=torch.bfloat16, generator=gen)
    with with_backend(backend):
        out = kasmina_fast.blend(h, s, a)
        out.backward(g)
    idx = torch.tensor([0, 1, 2**29, N - 2**19, N - 1], device="cuda")  # sample 1: past 2^31
    for b in range(B):
        w = a[b, 0].item()
        hb, sb, gb = h[b, idx].float(), s[b, idx].float(), g[b, idx].float()
        torch.testing.assert_close(out[b, idx].float(), torch.lerp(hb, sb, w), rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(h.grad[b, idx].float(), gb * (1 - w), rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(s.grad[b, idx].float(), gb * w, rtol=1e-2, atol=1e-2)
        total, scale = 0.0, 0.0
        for lo in range(0, N, 2**27):
            t = g[b, lo : lo + 2**27].float() * (
                s[b, lo : lo + 2**27].float() - h[b, lo : lo + 2**27].float()
            )
            total += t.double().sum().item()
            scale += t.abs().double().sum().item()
        assert abs(a.grad[b, 0].item() - total) <= 1e-5 * scale


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 60 * 2**30,
    reason="needs a GPU with 60 GiB",
)
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_valve_more_than_2_31_elements(backend):
    """valve on bf16 [2, 2^30 + 2^19] (2^31 + 2^20 elements), per-sample alpha: values
    and gradients read at offsets past 2^31, d_alpha against an fp64 sum."""
    B, N = 2, 2**30 + 2**19
    gen = torch.Generator(device="cuda").manual_seed(1)
    h = torch.randn(B, N, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    s = torch.randn(B, N, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    a = torch.tensor([[0.25], [0.75]], device="cuda", requires_grad=True)
    g = torch.randn(B, N, device="cuda", dtype=torch.bfloat16, generator=gen)
    with with_backend(backend):
        out = kasmina_fast.valve(h, s, a)
        out.backward(g)
    idx = torch.tensor([0, 1, 2**29, N - 2**19, N - 1], device="cuda")  # sample 1: past 2^31
    for b in range(B):
        w = a[b, 0].item()
        hb, sb, gb = h[b, idx].float(), s[b, idx].float(), g[b, idx].float()
        t = torch.tanh(sb - hb)
        q = gb * hb * w * (1 - t * t)
        torch.testing.assert_close(out[b, idx].float(), hb * (1 + w * t), rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(h.grad[b, idx].float(), gb * (1 + w * t) - q, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(s.grad[b, idx].float(), q, rtol=1e-2, atol=1e-2)
        total, scale = 0.0, 0.0
        for lo in range(0, N, 2**27):
            hc = h[b, lo : lo + 2**27].float()
            term = g[b, lo : lo + 2**27].float() * hc * torch.tanh(s[b, lo : lo + 2**27].float() - hc)
            total += term.double().sum().item()
            scale += term.abs().double().sum().item()
        assert abs(a.grad[b, 0].item() - total) <= 1e-5 * scale


NORM_BACKENDS = CUDA_BACKENDS


def grads_list():
    g = torch.Generator(device="cuda").manual_seed(2)
    shapes = [(4097,), (64, 3, 3, 3), (7,), (0,), (1000, 33), (2, 5)]
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.float32]
    ts = [torch.randn(s, device="cuda", generator=g).to(d) for s, d in zip(shapes, dtypes)]
    ts.append(torch.randn(50, 40, device="cuda", generator=g).t())  # a transposed (dense) view
    ts.append(torch.randn(300, 2, device="cuda", generator=g)[::3])  # a strided view
    return ts


@pytest.mark.parametrize("backend", NORM_BACKENDS)
def test_norms_on_cuda_match_fp64_and_are_deterministic(backend):
    ts = grads_list()
    want = torch.stack([torch.linalg.vector_norm(t.double()) for t in ts]).float()
    with with_backend(backend):
        a = kasmina_fast.foreach_norm(ts)
        b = kasmina_fast.foreach_norm(ts)
        s1 = kasmina_fast.gradient_stats(ts[:3], ts[3:], 100, 10)
        s2 = kasmina_fast.gradient_stats(ts[:3], ts[3:], 100, 10)
    torch.testing.assert_close(a, want, rtol=1e-6, atol=0)
    assert torch.equal(a, b) and torch.equal(s1, s2)
    ref = kasmina_fast.reference.gradient_stats(ts[:3], ts[3:], 100, 10)
    torch.testing.assert_close(s1, ref, rtol=1e-6, atol=0)


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 16 * 2**30,
    reason="needs a GPU with 16 GiB",
)
@pytest.mark.parametrize("backend", NORM_BACKENDS)
def test_norms_of_more_than_2_31_elements(backend):
    with with_backend(backend):
        check_more_than_2_31_elements("cuda")


@pytest.mark.parametrize("backend", NORM_BACKENDS)
def test_norm_matrix_on_cuda(backend):
    """tests/utils.py's norm_lists on CUDA, one after the other on one stream (the
    partials and the counter of the stream's scratch are reused by lists of
    every size): foreach_norm against fp64, and gradient_stats, finalized by
    the last block of its last launch, over three splits of each list."""
    cases = norm_lists("cuda")
    splits = {case: sorted({0, len(ts) // 2, len(ts)}) for case, ts in cases.items()}
    norms = {case: oracle_norms(ts) for case, ts in cases.items()}
    stats = {
        (case, k): oracle_stats(ts[:k], ts[k:], 1000, 10) for case, ts in cases.items() for k in splits[case]
    }
    with with_backend(backend):
        for _ in range(2):
            for case, ts in cases.items():
                got = kasmina_fast.foreach_norm(ts)
                assert got.shape == (len(ts),) and got.device.type == "cuda"
                for i in range(len(ts)):
                    assert_close_rel(got[i : i + 1], norms[case][i : i + 1], 2e-6, f"{case}[{i}]")
                for k in splits[case]:
                    got = kasmina_fast.gradient_stats(ts[:k], ts[k:], 1000, 10)
                    assert_close_rel(got, stats[(case, k)], 2e-6, f"{case} split {k}")


@pytest.mark.parametrize("backend", NORM_BACKENDS)
def test_gradient_stats_edges_on_cuda(backend):
    with with_backend(backend):
        check_gradient_stats_edges("cuda")
        empty_cuda = kasmina_fast.gradient_stats([torch.zeros(0, device="cuda")], [], 0, 0)  # no chunks
    assert empty_cuda.device.type == "cuda" and torch.equal(empty_cuda.cpu(), torch.zeros(4))


@pytest.mark.parametrize("backend", NORM_BACKENDS)
def test_norm_plans_of_lists_at_the_same_addresses_differ(backend):
    """The cached chunk table is keyed on address, size and dtype of every tensor
    and on the list's length (see tests.utils.lists_sharing_addresses)."""
    with with_backend(backend):
        for _ in range(2):
            for ts in lists_sharing_addresses("cuda"):
                want = torch.stack([torch.linalg.vector_norm(t.double()) for t in ts]).float()
                torch.testing.assert_close(kasmina_fast.foreach_norm(ts), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", NORM_BACKENDS)
def test_gradient_telemetry_has_no_sync_and_captures_in_a_graph(backend):
    ts = [t for t in grads_list() if t.is_contiguous()]
    with with_backend(backend):
        kasmina_fast.gradient_stats(ts[:2], ts[2:], 5, 5)  # warm-up: compiles, caches the chunk table
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            kasmina_fast.gradient_stats(ts[:2], ts[2:], 5, 5)
            fresh = [torch.randn(4321, device="cuda"), torch.randn(7, device="cuda")]
            fresh_norms = kasmina_fast.foreach_norm(fresh)  # a new table: uploaded without a sync
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.testing.assert_close(fresh_norms, torch.stack([t.norm() for t in fresh]), rtol=1e-5, atol=0)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = kasmina_fast.foreach_norm(ts)
        for t in ts:
            t.mul_(2)
        graph.replay()
        torch.cuda.synchronize()
    want = torch.stack([torch.linalg.vector_norm(t.double()) for t in ts]).float()
    torch.testing.assert_close(out, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", NORM_BACKENDS)
def test_captured_norm_graph_outlives_the_plan_cache(backend):
    """The chunk table a graph captured stays valid after 40 other lists went
    through the cache (16 plans) and their memory was reused (norm_plan.h)."""
    ts = [t for t in grads_list() if t.is_contiguous()]
    with with_backend(backend):
        kasmina_fast.foreach_norm(ts)  # warm-up: caches the chunk table
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = kasmina_fast.foreach_norm(ts)
        for i in range(40):
            kasmina_fast.foreach_norm([torch.randn(1000 + i, device="cuda"), torch.randn(3, device="cuda")])
        # new allocations that would reuse the blocks of an evicted table
        junk = [torch.full((4096,), -1, dtype=torch.int64, device="cuda") for _ in range(64)]
        graph.replay()
        torch.cuda.synchronize()
        del junk
    want = torch.stack([torch.linalg.vector_norm(t.double()) for t in ts]).float()
    torch.testing.assert_close(out, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", NORM_BACKENDS)
def test_norm_capture_without_a_plan_raises_naming_the_op(backend):
    fresh = [torch.randn(777, device="cuda"), torch.randn(5, 5, device="cuda")]
    strided = [torch.randn(300, 2, device="cuda")[::3]]
    with with_backend(backend):
        kasmina_fast.foreach_norm(strided)  # outside a capture: computed from a copy
        torch.cuda.synchronize()
        for ts, text in [(fresh, "once with the same tensors before capturing"), (strided, "non-dense")]:
            graph = torch.cuda.CUDAGraph()
            with pytest.raises(RuntimeError, match=f"kasmina::\\w*foreach_norm: .*{text}"):
                with torch.cuda.graph(graph):
                    kasmina_fast.foreach_norm(ts)
            torch.cuda.synchronize()


@pytest.mark.parametrize("backend", NORM_BACKENDS)
def test_norms_on_a_side_stream_reuse_the_plan(backend):
    """A plan uploaded on one stream and used on another (its tables are recorded on it)."""
    ts = [t for t in grads_list() if t.is_contiguous()]
    want = torch.stack([torch.linalg.vector_norm(t.double()) for t in ts]).float()
    side = torch.cuda.Stream()
    with with_backend(backend):
        kasmina_fast.foreach_norm(ts)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            torch.cuda.set_sync_debug_mode("error")
            try:
                out = kasmina_fast.foreach_norm(ts)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
    torch.testing.assert_close(out, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", NORM_BACKENDS)
def test_isolation_monitor_check_is_async(backend):
    from torch import nn

    from kasmina_fast.lifecycle.isolation import GradientIsolationMonitor

    torch.manual_seed(0)
    host, seed = nn.Linear(64, 32).cuda(), nn.Linear(32, 32).cuda()
    seed(host(torch.randn(8, 64, device="cuda"))).square().sum().backward()
    mon = GradientIsolationMonitor()
    mon.register(host, seed)
    with with_backend(backend):
        mon.check_isolation_async()  # warm-up: compiles, caches the chunk table
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            async_stats = mon.check_isolation_async()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        ok, stats = mon.materialize_isolation_stats(async_stats)
    ref = kasmina_fast.reference.gradient_stats(
        [p.grad for p in host.parameters()], [p.grad for p in seed.parameters()], 64 * 32 + 32, 32 * 32 + 32
    )
    assert ok
    assert stats["host_grad_norm"] == pytest.approx(ref[0].item(), rel=1e-6)
    assert stats["seed_gradient_norm_ratio"] == pytest.approx(ref[2].item(), rel=1e-6)
