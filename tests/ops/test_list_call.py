"""kasmina_fast._C.list_call (csrc/python/list_call.cpp), the one Python helper of the op
library: the list ops' Python lists read in C++, in eager mode only. Under torch.compile
(fullgraph: no graph break) and under a TorchFunctionMode the wrappers call the op as
every traced op is called; a list with anything but exact tensors takes the torch.ops route."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import kasmina_fast
from kasmina_fast import reference
from kasmina_fast.ops import norms, param_gradient_stats

pytestmark = pytest.mark.skipif(norms._C is None, reason="the op library is not loaded")


class Passthrough(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def lists():
    gen = torch.Generator().manual_seed(0)
    ts = [torch.randn(n, generator=gen) for n in (5, 12, 3)]
    params = [nn.Parameter(t.clone()) for t in ts]
    for p, t in zip(params, ts):
        p.grad = t * 2
    return ts, params


CALLS = {
    "foreach_norm": lambda ts, ps: kasmina_fast.foreach_norm(ts),
    "gradient_stats": lambda ts, ps: kasmina_fast.gradient_stats(ts[:1], ts[1:], 4, 2),
    "param_gradient_stats": lambda ts, ps: param_gradient_stats(ps[:1], ps[1:], 4, 2),
}


def want(name, ts, ps):
    if name == "foreach_norm":
        return reference.foreach_norm(ts)
    grads = [p.grad for p in ps] if name == "param_gradient_stats" else ts
    return reference.gradient_stats(grads[:1], grads[1:], 4, 2)


@pytest.mark.parametrize("name", list(CALLS))
def test_eager_calls_use_the_helper_traced_calls_do_not(monkeypatch, name):
    ts, ps = lists()
    real = norms._C.list_call
    calls = []
    monkeypatch.setattr(norms, "_C", types.SimpleNamespace(list_call=lambda *a: calls.append(a) or real(*a)))
    eager = CALLS[name](ts, ps)
    assert len(calls) == 1
    torch._dynamo.reset()
    compiled = torch.compile(lambda: CALLS[name](ts, ps), backend="eager", fullgraph=True)()
    with Passthrough():
        in_mode = CALLS[name](ts, ps)
    assert len(calls) == 1  # neither reached the helper
    for out in (eager, compiled, in_mode):
        torch.testing.assert_close(out, want(name, ts, ps), rtol=2e-6, atol=0)


def test_only_exact_tensors_are_read_in_cpp():
    """A list holding a subclass (a Parameter) or a non-tensor: None, and the public
    function goes the torch.ops way (same result, or the usual error)."""
    ts, _ = lists()
    call = norms._C.list_call
    torch.testing.assert_close(call("foreach_norm", ts, None, 0, 0, False), reference.foreach_norm(ts))
    torch.testing.assert_close(
        call("gradient_stats", ts[:1], ts[1:], 0, 0, False), reference.gradient_stats(ts[:1], ts[1:], 0, 0)
    )
    mixed = [nn.Parameter(ts[0].clone()), *ts[1:]]
    assert call("foreach_norm", mixed, None, 0, 0, False) is None
    assert call("gradient_stats", ts, mixed, 0, 0, False) is None
    torch.testing.assert_close(kasmina_fast.foreach_norm(mixed), reference.foreach_norm(ts))
    msg = (
        r"kasmina::foreach_norm\(\) Expected .*List\[Tensor\].*tensors"  # torch's own, naming op and argument
    )
    with pytest.raises(RuntimeError, match=msg):
        kasmina_fast.foreach_norm([ts[0], "x"])


def test_bad_calls_of_the_helper_name_it():
    ts, _ = lists()
    with pytest.raises(ValueError, match="list_call: unknown op 'norms'"):
        norms._C.list_call("norms", ts, None, 0, 0, False)
    with pytest.raises(ValueError, match="list_call: gradient_stats takes two lists"):
        norms._C.list_call("gradient_stats", ts, None, 0, 0, False)
