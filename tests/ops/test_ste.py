"""kasmina_fast.ste on every CPU backend: value is host, g reaches host and seed."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import kasmina_fast
from tests.utils import (
    DTYPES,
    STREAM_BYTES,
    cpu_backends,
    make,
    on,
    shapes,
    targets,
    view_of,
    view_triples,
    with_backend,
)

SHAPES = [(), (0,), (1,), (7,), (2, 3, 5), (4, 3, 5, 7)]


@pytest.mark.parametrize("backend", cpu_backends("ste"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "view"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_ste_matches_reference(backend, dtype, layout, shape):
    if layout == "channels_last" and len(shape) != 4:
        layout = "contiguous"
    gen = torch.Generator().manual_seed(5)
    host = make(shape, dtype, layout, gen).requires_grad_()
    seed = make(shape, dtype, layout, gen).requires_grad_()
    gout = make(shape, dtype, "contiguous", gen)
    with with_backend(backend):
        out = kasmina_fast.ste(host, seed)
    out.backward(gout)
    assert torch.equal(out.detach(), host.detach()), "value must be host, bit for bit"
    assert out.dtype == dtype
    assert torch.equal(host.grad, gout) and torch.equal(seed.grad, gout)
    assert out.data_ptr() != host.data_ptr() or host.numel() == 0, "a custom op must not alias its input"
    assert out.stride() == torch.empty_like(host).stride()


@pytest.mark.parametrize("backend", cpu_backends("ste"))
def test_ste_non_finite(backend):
    host = torch.tensor([1.0, float("nan"), float("inf")])
    seed = torch.tensor([float("nan"), 2.0, 3.0])
    with with_backend(backend):
        out = kasmina_fast.ste(host, seed)
    assert torch.isnan(out[1]) and out[2] == float("inf"), "host's NaN and inf are kept"
    # the op's value is host exactly, whatever seed holds (the eager expression
    # host + (seed - seed.detach()) lets a NaN seed leak into the value)
    assert out[0] == 1.0


@pytest.mark.parametrize("backend", cpu_backends("ste"))
def test_ste_alias_and_seed_only(backend):
    assert kasmina_fast.ste_forward is kasmina_fast.ste
    host = torch.randn(3, 4)
    seed = torch.randn(3, 4, requires_grad=True)
    with with_backend(backend):
        out = kasmina_fast.ste_forward(host, seed)
    out.sum().backward()
    assert torch.equal(seed.grad, torch.ones(3, 4))


STE_VIEW_CASES = dict(
    shape=shapes(min_rank=0),
    dtype=st.sampled_from(DTYPES),
    views=view_triples(),
    seed_=st.integers(0, 2**31 - 1),
)


@pytest.mark.parametrize(("device", "backend"), on("cuda", targets("ste")))
@settings(max_examples=12, deadline=None)
@given(**STE_VIEW_CASES)
def test_ste_on_views_on_cuda(device, backend, shape, dtype, views, seed_):
    check_ste_views(device, backend, shape, dtype, views, seed_)


@pytest.mark.parametrize(("device", "backend"), on("cpu", targets("ste")))
@settings(max_examples=30, deadline=None)
@given(**STE_VIEW_CASES)
def test_ste_on_views(device, backend, shape, dtype, views, seed_):
    """host, seed and the incoming gradient each in its own layout (tests/utils.py
    ``VIEWS``, strides 0 included): the value is host bit for bit, in host's layout,
    and the gradients reaching the bases equal the eager expression's. (On CUDA:
    test_ste_on_views_on_cuda, with fewer examples.)"""
    check_ste_views(device, backend, shape, dtype, views, seed_)


def check_ste_views(device, backend, shape, dtype, views, seed_):
    gen = torch.Generator().manual_seed(seed_)
    (hb, hv), (sb, sv), (gb, gv) = (view_of(shape, kind, dim) for kind, dim in views)
    H, S = make(hb, dtype, generator=gen, device=device), make(sb, dtype, generator=gen, device=device)
    gout = gv(make(gb, dtype, generator=gen, device=device))

    def run(fn):
        h, s = H.clone().requires_grad_(), S.clone().requires_grad_()
        out = fn(hv(h), sv(s))
        out.backward(gout)
        return out.detach(), h.grad, s.grad

    with with_backend(backend):
        out, d_host, d_seed = run(kasmina_fast.ste)
    _, want_host, want_seed = run(lambda h, s: h + (s - s.detach()))
    assert torch.equal(out, hv(H)), "value must be host, bit for bit"
    assert out.stride() == torch.empty_like(hv(H)).stride(), "output layout must follow host's"
    assert torch.equal(d_host, want_host) and torch.equal(d_seed, want_seed)


@pytest.mark.skipif("cpp" not in cpu_backends("ste"), reason="needs the C++ extension")
@pytest.mark.parametrize("extra", [0, 1, 15], ids=lambda e: f"plus{e}")
def test_cpp_large_copy_streams_correctly(extra):
    """A forward copy of 8 MiB or more goes out as streaming cache lines, then a
    plain copy of the bytes past the last whole line (``extra`` elements more)."""
    n = STREAM_BYTES // 4 + extra
    host = torch.randn(n, generator=torch.Generator().manual_seed(1))
    with with_backend("cpp"):
        out = kasmina_fast.ste(host, torch.zeros(n))
    assert torch.equal(out, host) and out.data_ptr() != host.data_ptr()
