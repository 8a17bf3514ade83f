"""triton_kernels/norms.py's own plan cache (the host path used without the C++
extension): the rules of csrc/norm_plan.h for CUDA-graph captures. A plan used
during a capture is pinned, never evicted; a list with no plan yet, or one
holding a strided view, cannot be planned during a capture and raises, naming
the op. The capture state is simulated (CPU tensors, interpreter). Also the
finalize kernels over more partials than their block holds."""

from __future__ import annotations

import os

import pytest
import torch

import kasmina_fast
from tests.ops.test_norms import stats_want

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or torch.cuda.is_available(),
    reason="interpreter test (the GPU tests capture real graphs)",
)


@pytest.fixture
def norms(monkeypatch):
    from kasmina_fast.triton_kernels import norms

    monkeypatch.setattr(norms, "_PLANS", type(norms._PLANS)())
    monkeypatch.setattr(norms, "_PINNED", {})
    capture = {"on": False}
    monkeypatch.setattr(norms, "_capturing", lambda device: capture["on"])
    norms.capture = capture
    return norms


def fp64_norms(ts):
    return torch.stack([torch.linalg.vector_norm(t.double()) for t in ts]).float()


def test_a_captured_plan_is_pinned_and_outlives_the_cache(norms):
    cpu = torch.device("cpu")
    graphed = [torch.randn(5000), torch.randn(3, 7)]
    norms.norms(graphed, cpu)  # warm-up
    table = norms._PLANS[next(iter(norms._PLANS))].groups[0][3]
    norms.capture["on"] = True
    torch.testing.assert_close(norms.norms(graphed, cpu), fp64_norms(graphed), rtol=1e-6, atol=0)
    norms.capture["on"] = False
    assert len(norms._PINNED) == 1 and not norms._PLANS
    kept = [[torch.randn(i + 1)] for i in range(40)]  # alive: distinct addresses
    for ts in kept:
        norms.norms(ts, cpu)
    assert len(norms._PLANS) == norms._MAX_PLANS
    norms.capture["on"] = True
    plan = norms._plan(graphed, cpu, "kasmina::triton_foreach_norm")
    assert plan.groups[0][3] is table  # the same table: what the graph replays
    with pytest.raises(RuntimeError, match=r"kasmina::triton_foreach_norm: this list has no chunk table yet"):
        norms.norms(kept[0], cpu)  # evicted like any unpinned plan


def test_capture_without_a_plan_raises_naming_the_op(norms):
    cpu = torch.device("cpu")
    norms.capture["on"] = True
    fresh = [torch.randn(10)]
    with pytest.raises(RuntimeError, match=r"kasmina::triton_gradient_stats: .*before capturing"):
        norms.gradient_stats(fresh, [], 1, 1, cpu, 1e-8, 10.0)
    strided = [torch.randn(30, 2)[::3]]
    with pytest.raises(RuntimeError, match=r"kasmina::triton_foreach_norm: a list that holds a non-dense"):
        norms.norms(strided, cpu)
    norms.capture["on"] = False
    torch.testing.assert_close(norms.norms(strided, cpu), fp64_norms(strided), rtol=1e-6, atol=0)
    assert not norms._PLANS and not norms._PINNED  # a strided list is never cached


def test_finalize_adds_more_partials_than_its_block(monkeypatch):
    """The finalize kernels add a tensor's (foreach_norm) or a group's
    (gradient_stats) chunk partials FINAL_BLOCK at a time; lowered to 2, tensors of
    several chunks need several steps. Through the op, as a training loop calls it."""
    if "triton" not in kasmina_fast.available():
        pytest.skip("the Triton backend is not usable here")
    from kasmina_fast.triton_kernels import norms

    monkeypatch.setattr(norms, "FINAL_BLOCK", 2)
    gen = torch.Generator().manual_seed(6)
    ts = [
        torch.randn(5 * norms.BLOCK + 7, generator=gen),
        torch.randn(3, generator=gen),
        torch.randn(2 * norms.BLOCK, generator=gen, dtype=torch.float64),
        torch.randn(3 * norms.BLOCK, generator=gen).bfloat16(),
    ]
    with kasmina_fast.use_backend("triton"):
        got = kasmina_fast.foreach_norm(ts)
        stats = kasmina_fast.gradient_stats(ts[:2], ts[2:], 0, 0)
    torch.testing.assert_close(got, fp64_norms(ts), rtol=2e-6, atol=0)
    torch.testing.assert_close(stats, stats_want(ts[:2], ts[2:], 0, 0).float(), rtol=4e-6, atol=0)
