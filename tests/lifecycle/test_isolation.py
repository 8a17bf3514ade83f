"""GradientIsolationMonitor (spec 2.1): registration, async stats, the one
materialisation, skipped None grads, empty groups, non-finite gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kasmina_fast.lifecycle.isolation import GradientIsolationMonitor
from tests.utils import cpu_backends, with_backend


def modules():
    torch.manual_seed(0)
    host = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    seed = nn.Linear(4, 4)
    frozen = nn.Linear(3, 3).requires_grad_(False)
    host.add_module("frozen", frozen)
    return host, seed


def backward(host, seed):
    x = torch.randn(5, 8)
    (seed(host[:3](x)) ** 2).sum().backward()


def expected(host, seed):
    hg = [p.grad.double() for p in host.parameters() if p.grad is not None]
    sg = [p.grad.double() for p in seed.parameters() if p.grad is not None]
    h = math.sqrt(sum(float((g * g).sum()) for g in hg))
    s = math.sqrt(sum(float((g * g).sum()) for g in sg))
    hc = sum(p.numel() for p in host.parameters() if p.requires_grad)
    sc = sum(p.numel() for p in seed.parameters())
    return h, s, min(10.0, s / h * math.sqrt(hc / sc))


@pytest.mark.parametrize("backend", cpu_backends("gradient_stats"))
def test_stats_match_fp64_and_counts_come_from_the_modules(backend):
    host, seed = modules()
    mon = GradientIsolationMonitor()
    mon.register(host, seed)
    assert mon.host_param_count == 8 * 16 + 16 + 16 * 4 + 4  # the frozen layer is not counted
    assert mon.seed_param_count == 4 * 4 + 4
    backward(host, seed)
    with with_backend(backend):
        async_stats = mon.check_isolation_async()
        assert isinstance(async_stats["stats"], torch.Tensor) and async_stats["stats"].shape == (4,)
        ok, stats = mon.materialize_isolation_stats(async_stats)
        ok2, stats2 = mon.check_isolation()
    h, s, ratio = expected(host, seed)
    assert ok and ok2 and stats == stats2
    assert set(stats) == {"host_grad_norm", "seed_grad_norm", "seed_gradient_norm_ratio", "nonfinite"}
    assert stats["host_grad_norm"] == pytest.approx(h, rel=1e-6)
    assert stats["seed_grad_norm"] == pytest.approx(s, rel=1e-6)
    assert stats["seed_gradient_norm_ratio"] == pytest.approx(ratio, rel=1e-6)
    assert stats["nonfinite"] is False


@pytest.mark.parametrize("backend", cpu_backends("gradient_stats"))
def test_none_grads_are_skipped_and_empty_groups_give_zeros(backend):
    host, seed = modules()
    mon = GradientIsolationMonitor()
    mon.register(host, seed)
    with with_backend(backend):
        ok, stats = mon.check_isolation()  # no backward yet: every .grad is None
        assert ok and stats["host_grad_norm"] == 0 and stats["seed_gradient_norm_ratio"] == 0
        backward(host, seed)
        host[0].weight.grad = None
        ok, stats = mon.check_isolation()
        hg = [p.grad for p in host.parameters() if p.grad is not None]
        assert stats["host_grad_norm"] == pytest.approx(
            math.sqrt(sum(float((g.double() ** 2).sum()) for g in hg)), rel=1e-6
        )
        empty = GradientIsolationMonitor()
        empty.register(None, None)
        zeros = {"host_grad_norm": 0.0, "seed_grad_norm": 0.0, "seed_gradient_norm_ratio": 0.0}
        assert empty.check_isolation() == (True, {**zeros, "nonfinite": False})


@pytest.mark.parametrize("backend", cpu_backends("gradient_stats"))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_is_reported(backend, bad):
    host, seed = modules()
    mon = GradientIsolationMonitor()
    mon.register(host, seed)
    backward(host, seed)
    seed.bias.grad[1] = bad
    with with_backend(backend):
        ok, stats = mon.check_isolation()
    assert not ok and stats["nonfinite"] is True


def test_parameter_lists_and_reset():
    host, seed = modules()
    mon = GradientIsolationMonitor()
    mon.register(list(host[0].parameters()), iter(seed.parameters()))
    assert mon.host_param_count == 8 * 16 + 16 and mon.seed_param_count == 20
    mon.reset()
    assert mon.host_params == [] and mon.host_param_count == 0
