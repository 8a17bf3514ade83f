"""The Triton custom ops (kasmina_fast/ops/triton_ops.py) pass torch.library.opcheck
(schema, fake kernel, autograd registration, dispatch): on CPU tensors in the
interpreter here; the CUDA runs are in tests/ops/test_cuda.py."""

from __future__ import annotations

import os

import pytest
import torch

import kasmina_fast
from tests.ops.test_registration import blend_samples, run_python
from tests.utils import lists_sharing_addresses

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or "triton" not in kasmina_fast.available(),
    reason="the Triton ops run on CPU tensors only in the interpreter",
)

NAMES = (
    "triton_blend",
    "triton_blend_backward",
    "triton_ste",
    "triton_foreach_norm",
    "triton_gradient_stats",
)


@pytest.mark.parametrize("i", range(5))
def test_opcheck_triton_blend(i):
    torch.library.opcheck(torch.ops.kasmina.triton_blend.default, list(blend_samples())[i])


@pytest.mark.parametrize("mask", [(True, True, True), (True, True, False), (False, False, True)])
def test_opcheck_triton_blend_backward(mask):
    g, h, s = (torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last) for _ in range(3))
    args = (g, h, s, torch.rand(4, 1, 1, 1), list(mask))
    torch.library.opcheck(torch.ops.kasmina.triton_blend_backward.default, args)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_triton_ste(requires_grad):
    h = torch.randn(2, 3, 4, 4, requires_grad=requires_grad).to(memory_format=torch.channels_last)
    s = torch.randn(2, 3, 4, 4, requires_grad=requires_grad)
    torch.library.opcheck(torch.ops.kasmina.triton_ste.default, (h, s))


def test_opcheck_triton_norms():
    ts = [torch.randn(3, 4), torch.randn(5, dtype=torch.bfloat16), torch.zeros(0), torch.randn(2, 3).t()]
    torch.library.opcheck(torch.ops.kasmina.triton_foreach_norm.default, (ts,))
    torch.library.opcheck(torch.ops.kasmina.triton_gradient_stats.default, (ts[:2], ts[2:], 100, 10))


def test_without_extension_the_triton_ops_are_custom_ops():
    """KASMINA_FAST_NO_EXTENSION=1: the Triton ops are Python custom ops (Python autograd,
    chunk tables built in Python), and still match the reference and pass opcheck."""
    proc = run_python(
        """
        import torch, kasmina_fast
        from kasmina_fast import reference
        from kasmina_fast.ops import triton_ops
        assert "triton" in kasmina_fast.available() and "cpp" not in kasmina_fast.available()
        from torch._library.custom_ops import OPDEFS
        assert "kasmina::triton_blend" in OPDEFS and "kasmina::triton_ste" in OPDEFS  # the custom-op branch
        assert triton_ops.triton_blend is torch.ops.kasmina.triton_blend.default
        h = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
        s = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
        a = torch.rand(4, 1, 1, 1, dtype=torch.float64, requires_grad=True)
        torch.library.opcheck(torch.ops.kasmina.triton_blend.default, (h, s, a))
        torch.library.opcheck(torch.ops.kasmina.triton_ste.default, (h, s))
        with kasmina_fast.use_backend("triton"):
            out = kasmina_fast.blend(h, s, a)
            grads = torch.autograd.grad(out.square().sum(), (h, s, a))
        want = torch.autograd.grad(reference.blend(h, s, a).square().sum(), (h, s, a))
        for g, w in zip(grads, want):
            torch.testing.assert_close(g, w)
        # the norm ops build their chunk tables in Python here
        ts = [torch.randn(5000), torch.randn(7, dtype=torch.bfloat16), torch.randn(9, 4).t()]
        ts.append(torch.randn(9)[1:])  # a 4-byte offset
        ts.append(torch.randn(5000, 2)[::3, 1])  # strided: read from a copy, which must outlive the launch
        torch.library.opcheck(torch.ops.kasmina.triton_foreach_norm.default, (ts,))
        for op in (torch.ops.kasmina.triton_foreach_norm, torch.ops.kasmina.triton_gradient_stats):
            assert torch.Tag.cudagraph_unsafe in op.default.tags  # as csrc/ops.cpp defines them
        with kasmina_fast.use_backend("triton"):
            norms = kasmina_fast.foreach_norm(ts)
            stats = kasmina_fast.gradient_stats(ts[:1], ts[1:], 10, 3)
        torch.testing.assert_close(norms, reference.foreach_norm(ts))
        torch.testing.assert_close(stats, reference.gradient_stats(ts[:1], ts[1:], 10, 3))
        for name in ("triton_blend", "triton_blend_backward", "triton_ste", "triton_foreach_norm",
                     "triton_gradient_stats"):
            print(getattr(torch.ops.kasmina, name).default._schema)
        print("OK")
        """,
        KASMINA_FAST_NO_EXTENSION="1",
        TRITON_INTERPRET="1",
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
    # the C++ schemas (csrc/ops.cpp) are the ones the custom ops infer
    schemas = [str(getattr(torch.ops.kasmina, name).default._schema) for name in NAMES]
    assert proc.stdout.splitlines()[: len(NAMES)] == schemas


def test_with_extension_autograd_is_cpp():
    from kasmina_fast import _extension

    if not _extension.LOADED:
        pytest.skip("the C++ extension is not built here")
    h, s = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    a = torch.rand(3, 1, requires_grad=True)
    out = torch.ops.kasmina.triton_blend(h, s, a)
    assert type(out.grad_fn).__name__ == "CppFunction"  # not a Python autograd.Function
    assert type(torch.ops.kasmina.triton_ste(h, s).grad_fn).__name__ == "CppFunction"


def test_with_extension_the_blend_host_work_is_cpp():
    """Checks, layout, outputs and alpha's dtype are done in C++; Python gets one
    launcher call with the outputs to fill. A failing launcher names the op."""
    from kasmina_fast import _extension

    if not _extension.has_kernel("triton_blend", "CPU"):
        pytest.skip("the C++ extension (with its Python part) is not built here")
    from kasmina_fast.triton_kernels import blend as kernels

    from kasmina_fast import _C

    calls = []

    def spy(name, real):
        def call(*args):
            calls.append((name, args))
            real(*args)

        return call

    h = torch.randn(3, 4, 5).contiguous().to(torch.float16)
    s, g = torch.randn_like(h), torch.randn_like(h)
    a = torch.rand(3, 1, 1, dtype=torch.float64)
    try:
        _C.set_triton_blend_launcher(
            spy("forward", kernels.launch_forward),
            spy("backward", kernels.launch_backward),
            spy("copy", kernels.launch_copy),
        )
        out = torch.ops.kasmina.triton_blend(h, s, a)
        grads = torch.ops.kasmina.triton_blend_backward(g, h, s, a, [True, False, True])
        ste = torch.ops.kasmina.triton_ste(h, s)
        strided = torch.ops.kasmina.triton_blend(h[:, ::2], s[:, ::2], a)  # the C++ fallback, no launch
        _C.set_triton_blend_launcher(*[lambda *args: 1 / 0] * 3)
        with pytest.raises(RuntimeError, match=r"kasmina::triton_blend: the Triton launch failed.*division"):
            torch.ops.kasmina.triton_blend(h, s, a)
    finally:
        _C.set_triton_blend_launcher(kernels.launch_forward, kernels.launch_backward, kernels.launch_copy)
    assert [name for name, _ in calls] == ["forward", "backward", "copy"]
    (_, fwd), (_, bwd), (_, cp) = calls
    assert fwd[2] is out and fwd[3].dtype == torch.float32 and fwd[4:] == (3, 20)
    assert bwd[5] is grads[2] and bwd[4].numel() == 0 and bwd[7] == (True, False, True) and bwd[8:] == (3, 20)
    assert cp[1] is ste
    w = a.clamp(0, 1)
    torch.testing.assert_close(out.double(), torch.lerp(h.double(), s.double(), w), rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(
        strided.double(), torch.lerp(h[:, ::2].double(), s[:, ::2].double(), w), rtol=2e-3, atol=2e-3
    )
    torch.testing.assert_close(
        grads[2], (g.double() * (s.double() - h.double())).sum((1, 2), keepdim=True), rtol=1e-2, atol=1e-2
    )
    assert torch.equal(ste, h)


def _needs_cpp_norms():
    from kasmina_fast import _extension

    if not _extension.has_kernel("triton_foreach_norm", "CPU"):
        pytest.skip("the C++ extension (with its Python part) is not built here")


def test_with_extension_the_norm_host_work_is_cpp():
    """The list is checked and tabled in C++; Python sees only the launch."""
    _needs_cpp_norms()
    from kasmina_fast.triton_kernels import norms

    seen = []
    real = norms.launch_norms

    def spy(groups, parts, first, count, out):
        seen.append([(dtype, aligned, n) for dtype, aligned, n, _ in groups])
        real(groups, parts, first, count, out)

    from kasmina_fast import _C
    from kasmina_fast.ops import triton_ops  # (registers the launchers)

    base = torch.randn(2 * norms.BLOCK + 9)
    ts = [base[: norms.BLOCK + 1], base[1:], torch.randn(3, dtype=torch.float16)]  # base[1:]: 4-byte offset
    stats = triton_ops.triton_gradient_stats
    try:
        _C.set_triton_norm_launcher(norms.BLOCK, spy, stats_launcher())
        got = torch.ops.kasmina.triton_foreach_norm(ts)
    finally:
        register_launchers()
    torch.testing.assert_close(got, torch.stack([t.double().norm() for t in ts]).float())
    assert seen == [[("float32", True, 2), ("float32", False, 3), ("float16", True, 1)]]
    assert stats is torch.ops.kasmina.triton_gradient_stats.default


def stats_launcher():
    import functools

    from kasmina_fast.triton_kernels import norms

    from kasmina_fast import reference

    return functools.partial(norms.launch_stats, eps=reference.HOST_NORM_EPS, cap=reference.RATIO_CAP)


def register_launchers():
    from kasmina_fast.triton_kernels import norms

    from kasmina_fast import _C

    _C.set_triton_norm_launcher(norms.BLOCK, norms.launch_norms, stats_launcher())


def test_a_failing_launch_names_the_op():
    _needs_cpp_norms()
    from kasmina_fast import _C

    def broken(*args):
        raise KeyError("no such kernel")

    try:
        _C.set_triton_norm_launcher(4096, broken, broken)
        with pytest.raises(
            RuntimeError, match=r"kasmina::triton_foreach_norm: the Triton launch failed.*no such"
        ):
            torch.ops.kasmina.triton_foreach_norm([torch.randn(3)])
        with pytest.raises(RuntimeError, match=r"kasmina::triton_gradient_stats: the Triton launch failed"):
            torch.ops.kasmina.triton_gradient_stats([torch.randn(3)], [], 0, 0)
    finally:
        register_launchers()
    torch.testing.assert_close(torch.ops.kasmina.triton_foreach_norm([torch.ones(4)]), torch.tensor([2.0]))


def test_plan_cache_sees_new_values_and_survives_eviction():
    """The cached tables hold addresses and sizes only: values written in place are
    read again, and more lists than the cache holds (16) all stay correct."""
    _needs_cpp_norms()
    lists = [[torch.randn(n + 1), torch.randn(2 * n + 3, dtype=torch.float64)] for n in range(20)]
    for _ in range(2):
        for ts in lists:
            got = torch.ops.kasmina.triton_foreach_norm(ts)
            torch.testing.assert_close(got, torch.stack([t.double().norm() for t in ts]).float())
    ts = lists[0]
    ts[0].mul_(3)
    got = torch.ops.kasmina.triton_gradient_stats(ts[:1], ts[1:], 0, 0)
    ratio = min(ts[1].norm() / ts[0].double().norm(), 10.0)  # (capped at 10, as the op's formula)
    want = torch.tensor([ts[0].double().norm(), ts[1].norm(), ratio, 0.0])
    torch.testing.assert_close(got, want.float())


def test_plan_cache_tells_lists_at_the_same_addresses_apart():
    """The plan is keyed on every tensor's address, size and dtype and on the
    list's length: lists that share addresses must not share a table."""
    _needs_cpp_norms()
    for _ in range(2):  # the second round hits the cache
        for ts in lists_sharing_addresses("cpu"):
            got = torch.ops.kasmina.triton_foreach_norm(ts)
            torch.testing.assert_close(got, torch.stack([t.double().norm() for t in ts]).float())


def test_lists_with_strided_views_do_not_evict_cached_plans():
    """A list holding a strided view is tabled afresh on every call (its contiguous
    copy is new memory each time) and is not cached, so it cannot push the plans of
    other lists out of the cache: a dense list's table stays the same tensor."""
    _needs_cpp_norms()
    from kasmina_fast.triton_kernels import norms

    from kasmina_fast import _C

    tables = []

    def spy(groups, parts, first, count, out):
        tables.append(groups[0][3])  # (kept alive: a new table cannot reuse its memory)
        norms.launch_norms(groups, parts, first, count, out)

    dense = [torch.randn(10), torch.randn(3, 4)]
    strided = [[torch.randn(2 * n + 4)[::2], torch.randn(5)] for n in range(20)]  # > 16 cached plans
    try:
        _C.set_triton_norm_launcher(norms.BLOCK, spy, stats_launcher())
        for ts in [dense, *strided, dense, strided[0]]:
            got = torch.ops.kasmina.triton_foreach_norm(ts)
            torch.testing.assert_close(got, torch.stack([t.double().norm() for t in ts]).float())
    finally:
        register_launchers()
    assert tables[21].data_ptr() == tables[0].data_ptr()  # the dense list's plan, found again
    assert tables[22].data_ptr() != tables[1].data_ptr()  # a strided list: a new table
