"""param_gradient_stats (kasmina_fast/ops/norms.py): gradient_stats of the .grad of
parameter lists, read in C++ in eager mode (csrc/python/list_call.cpp)."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from torch import nn

from kasmina_fast import reference
from kasmina_fast.ops import param_gradient_stats
from tests.utils import VIEWS, cpu_backends, make, shapes, view_of, with_backend


def params(shapes, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ps = [nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
    return ps


def want(host, seed, hc, sc):
    hg = [p.grad for p in host if p.grad is not None]
    sg = [p.grad for p in seed if p.grad is not None]
    return reference.gradient_stats(hg, sg, hc, sc)


@pytest.mark.parametrize("backend", cpu_backends("gradient_stats"))
def test_matches_gradient_stats_of_the_grads(backend):
    host = params([(7, 3), (5,), (2, 2, 3)]) + params([(4,)], torch.float64, seed=1)
    seed = params([(3, 3), (6,)], seed=2)
    host[1].grad = None  # skipped
    with with_backend(backend):
        got = param_gradient_stats(host, seed, 1000, 10)
    torch.testing.assert_close(got, want(host, seed, 1000, 10), rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", cpu_backends("gradient_stats"))
def test_sees_replaced_grads_and_swapped_parameters(backend):
    host, seed = params([(10,), (3, 4)]), params([(5,)], seed=1)
    with with_backend(backend):
        before = param_gradient_stats(host, seed)
        host[0].grad = torch.full((10,), 3.0)  # what zero_grad(set_to_none=True) + backward do
        after = param_gradient_stats(host, seed)
        expected_after = want(host, seed, 0, 0)
        # what module.to() does under torch.__future__.set_swap_module_params_on_conversion(True)
        torch.utils.swap_tensors(seed[0], nn.Parameter(torch.zeros(5)))
        seed[0].grad = torch.full((5,), 2.0)
        swapped = param_gradient_stats(host, seed)
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, expected_after, rtol=1e-6, atol=0)
    torch.testing.assert_close(swapped[1], torch.tensor(2.0 * 5**0.5))


@pytest.mark.parametrize("backend", cpu_backends("gradient_stats"))
def test_no_grads_and_empty_lists_give_zeros(backend):
    host, seed = params([(3,)]), params([(3,)], seed=1)
    for p in host + seed:
        p.grad = None
    with with_backend(backend):
        assert torch.equal(param_gradient_stats(host, seed, 3, 3), torch.zeros(4))
        assert torch.equal(param_gradient_stats([], [], 0, 0), torch.zeros(4))


@pytest.mark.parametrize("backend", cpu_backends("gradient_stats"))
def test_non_tensor_is_a_type_error_naming_the_index(backend):
    host = params([(3,)])
    with (
        with_backend(backend),
        pytest.raises(TypeError, match=r"param_gradient_stats: seed_params\[1\] must be a tensor, got str"),
    ):
        param_gradient_stats(host, [host[0], "w"], 0, 0)


DTYPES = [torch.float32, torch.float64, torch.bfloat16]


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=0, max_size=12),
    split=st.integers(0, 12),
    dtypes=st.lists(st.sampled_from(DTYPES), min_size=12, max_size=12),
    missing=st.lists(st.booleans(), min_size=12, max_size=12),
    counts=st.tuples(st.integers(0, 10**9), st.integers(0, 10**6)),
)
def test_property_matches_fp64(sizes, split, dtypes, missing, counts):
    """Any split of any parameter list (sizes, dtypes, grads left None) gives the fp64
    stats of the grads that exist, on every CPU route."""
    gen = torch.Generator().manual_seed(len(sizes) * 31 + split)
    ps = []
    for i, n in enumerate(sizes):
        p = nn.Parameter(torch.randn(n, generator=gen).to(dtypes[i]))
        p.grad = None if missing[i] else torch.randn(n, generator=gen).to(dtypes[i])
        ps.append(p)
    host, seed = ps[: min(split, len(ps))], ps[min(split, len(ps)) :]
    want_stats = want(host, seed, *counts)
    for backend in cpu_backends("gradient_stats"):
        with with_backend(backend):
            got = param_gradient_stats(host, seed, *counts)
        torch.testing.assert_close(got, want_stats, rtol=2e-6, atol=0, msg=backend)


@settings(max_examples=30, deadline=None)
@given(
    specs=st.lists(st.tuples(shapes(min_rank=0), st.sampled_from(VIEWS), st.integers(0, 3)), max_size=8),
    split=st.integers(0, 8),
    seed_=st.integers(0, 2**31 - 1),
)
def test_grads_in_any_layout(specs, split, seed_):
    """``.grad`` tensors that are permuted, strided, broadcast (stride 0) or offset
    views (tests/utils.py ``VIEWS``) are read as they are, on every CPU route."""
    gen = torch.Generator().manual_seed(seed_)
    ps = []
    for shape, kind, dim in specs:
        base_shape, view = view_of(shape, kind, dim)
        p = nn.Parameter(torch.zeros(shape))
        p.grad = view(make(base_shape, torch.float32, generator=gen))
        ps.append(p)
    host, seed = ps[:split], ps[split:]
    want_stats = want(host, seed, 10, 3)
    for backend in cpu_backends("gradient_stats"):
        with with_backend(backend):
            got = param_gradient_stats(host, seed, 10, 3)
        torch.testing.assert_close(got, want_stats, rtol=4e-6, atol=0, msg=backend)
