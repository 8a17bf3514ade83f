"""triton_kernels/norms.py's host path: the plan cache and its rules for CUDA-graph
captures (as csrc/norm_plan.h's). A plan used during a capture is pinned, never
evicted; a list with no plan yet, or one holding a strided view, cannot be planned
during a capture and raises, naming the op. The capture state is simulated (CPU
tensors, interpreter). Also the finalize kernels over more partials than their
block holds, and lists the cache must tell apart."""

from __future__ import annotations

import os

import pytest
import torch

import kasmina_fast
from tests.utils import lists_sharing_addresses, oracle_norms, oracle_stats

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or "triton" not in kasmina_fast.available(),
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


def close(got, ts):
    torch.testing.assert_close(got.double(), oracle_norms(ts), rtol=2e-6, atol=0)


def test_a_captured_plan_is_pinned_and_outlives_the_cache(norms):
    graphed = [torch.randn(5000), torch.randn(3, 7)]
    norms.foreach_norm(graphed)  # warm-up
    table = norms._PLANS[next(iter(norms._PLANS))].groups[0][3]
    norms.capture["on"] = True
    close(norms.foreach_norm(graphed), graphed)
    norms.capture["on"] = False
    assert len(norms._PINNED) == 1 and not norms._PLANS
    kept = [[torch.randn(i + 1)] for i in range(40)]  # alive: distinct addresses
    for ts in kept:
        norms.foreach_norm(ts)
    assert len(norms._PLANS) == norms._MAX_PLANS
    norms.capture["on"] = True
    plan = norms._plan(graphed, torch.device("cpu"), "kasmina::foreach_norm")
    assert plan.groups[0][3] is table  # the same table: what the graph replays
    with pytest.raises(RuntimeError, match=r"kasmina::foreach_norm: this list has no chunk table yet"):
        norms.foreach_norm(kept[0])  # evicted like any unpinned plan


def test_capture_without_a_plan_raises_naming_the_op(norms):
    norms.capture["on"] = True
    fresh = [torch.randn(10)]
    with pytest.raises(RuntimeError, match=r"kasmina::gradient_stats: .*before capturing"):
        norms.gradient_stats(fresh, [], 1, 1)
    strided = [torch.randn(30, 2)[::3]]
    with pytest.raises(RuntimeError, match=r"kasmina::foreach_norm: a list that holds a non-dense"):
        norms.foreach_norm(strided)
    norms.capture["on"] = False
    close(norms.foreach_norm(strided), strided)
    assert not norms._PLANS and not norms._PINNED  # a strided list is never cached


def test_plan_cache_sees_new_values_and_survives_eviction(norms):
    """The cached tables hold addresses and sizes only: values written in place are
    read again, and more lists than the cache holds (16) all stay correct."""
    lists = [[torch.randn(n + 1), torch.randn(2 * n + 3, dtype=torch.float64)] for n in range(20)]
    for _ in range(2):
        for ts in lists:
            close(norms.foreach_norm(ts), ts)
    ts = lists[0]
    ts[0].mul_(3)
    got = norms.gradient_stats(ts[:1], ts[1:], 0, 0)
    torch.testing.assert_close(got.double(), oracle_stats(ts[:1], ts[1:], 0, 0), rtol=4e-6, atol=0)


def test_plan_cache_tells_lists_at_the_same_addresses_apart(norms):
    """The plan is keyed on every tensor's address, size and dtype and on the list's
    length: lists that share addresses must not share a table."""
    for _ in range(2):  # the second round hits the cache
        for ts in lists_sharing_addresses("cpu"):
            close(norms.foreach_norm(ts), ts)


def test_lists_with_strided_views_do_not_evict_cached_plans(norms):
    """A list holding a strided view is tabled afresh on every call (its contiguous
    copy is new memory each time) and is not cached, so it cannot push the plans of
    other lists out of the cache."""
    dense = [torch.randn(10), torch.randn(3, 4)]
    norms.foreach_norm(dense)
    table = next(iter(norms._PLANS.values())).groups[0][3]
    for n in range(20):  # more than the 16 cached plans
        ts = [torch.randn(2 * n + 4)[::2], torch.randn(5)]
        close(norms.foreach_norm(ts), ts)
    assert len(norms._PLANS) == 1
    assert next(iter(norms._PLANS.values())).groups[0][3] is table


def test_finalize_adds_more_partials_than_its_block(monkeypatch):
    """The finalize kernels add a tensor's (foreach_norm) or a group's
    (gradient_stats) chunk partials FINAL_BLOCK at a time; lowered to 2, tensors of
    several chunks need several steps. Through the public op, as a training loop calls it."""
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
    close(got, ts)
    torch.testing.assert_close(stats.double(), oracle_stats(ts[:2], ts[2:], 0, 0), rtol=4e-6, atol=0)
