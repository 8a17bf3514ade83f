"""triton_kernels/layout.py: ``launch_guard``, the device guard of the Python launch
paths (Triton launches on the current CUDA device, whatever the tensors' device), and
that every Python entry point that launches kernels takes it. Fake CUDA tensors stand
in for a second GPU."""

from __future__ import annotations

import contextlib

import pytest
import torch
from kasmina_fast.triton_kernels import layout
from torch._subclasses.fake_tensor import FakeTensorMode


@pytest.fixture
def devices(monkeypatch):
    """torch.cuda.current_device() = 0; torch.cuda.device(i) records i."""
    entered = []

    @contextlib.contextmanager
    def device(i):
        entered.append(i)
        yield

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", device)
    return entered


def test_launch_guard_sets_the_tensors_device_when_it_is_not_current(devices):
    with FakeTensorMode():
        on_1, on_0 = torch.empty(2, device="cuda:1"), torch.empty(2, device="cuda:0")
    with layout.launch_guard(on_1):
        pass
    with layout.launch_guard(on_0), layout.launch_guard(torch.empty(2)):
        pass
    assert devices == [1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test")
def test_every_kernel_takes_the_guard(monkeypatch):
    """The five op kernels: one guard around their launches, on the tensors' device."""
    pytest.importorskip("triton")
    from kasmina_fast.triton_kernels import blend, norms

    guarded = []

    def spy(t):
        guarded.append(t.device)
        return contextlib.nullcontext()

    monkeypatch.setattr(blend, "launch_guard", spy)
    monkeypatch.setattr(norms, "launch_guard", spy)
    h, s, a = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.rand(2, 1, 1)
    blend.blend(h, s, a)
    blend.blend_backward(torch.randn(2, 3, 4), h, s, a, [True, True, True])
    blend.ste(h, s)
    norms.foreach_norm([h])
    norms.gradient_stats([h], [s], 1, 1)
    assert guarded == [h.device] * 5
