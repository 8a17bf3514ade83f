"""Bad input raises the same ValueError, naming the op and the argument, on
every backend, before any kernel runs; and the same again at trace time."""

from __future__ import annotations

import pytest
import torch

import kasmina_fast
from kasmina_fast.ops import _checks
from tests.utils import cpu_backends, with_backend

H = torch.randn(4, 3, 5, 5)

BLEND_CASES = {
    "seed shape": (
        (H, torch.randn(4, 3, 5, 6), torch.tensor(0.5)),
        "kasmina::blend: seed must have the shape of host",
    ),
    "seed dtype": ((H, H.double(), torch.tensor(0.5)), "kasmina::blend: seed must have the dtype of host"),
    "int host": (
        (H.long(), H.long(), torch.tensor(0.5)),
        "kasmina::blend: host must be float16, bfloat16, float32",
    ),
    "complex host": ((H.cfloat(), H.cfloat(), torch.tensor(0.5)), "kasmina::blend: host must be float16"),
    "int alpha": (
        (H, H, torch.tensor(1)),
        "kasmina::blend: alpha must be float16, bfloat16, float32 or float64",
    ),
    "alpha channels": ((H, H, torch.rand(4, 3, 1, 1)), "kasmina::blend: alpha must be 0-d or per-sample"),
    "alpha batch": ((H, H, torch.rand(2, 1, 1, 1)), "kasmina::blend: alpha must be 0-d or per-sample"),
    "alpha ndim": ((H, H, torch.rand(4, 1)), "kasmina::blend: alpha must be 0-d or per-sample"),
    "alpha 1-element": ((H, H, torch.rand(1)), "kasmina::blend: alpha must be 0-d or per-sample"),
    "alpha meta device": (
        (H, H, torch.rand((), device="meta")),
        "kasmina::blend: alpha must be on the device of host",
    ),
    "seed meta device": (
        (H, H.to("meta"), torch.tensor(0.5)),
        "kasmina::blend: seed must be on the device of host",
    ),
}

STE_CASES = {
    "seed shape": ((H, H[:2]), "kasmina::ste: seed must have the shape of host"),
    "seed dtype": ((H, H.half()), "kasmina::ste: seed must have the dtype of host"),
    "int": (
        (H.int(), H.int()),
        "kasmina::ste: host must be float16, bfloat16, float32 or float64, got int32",
    ),
    "device": ((H, H.to("meta")), "kasmina::ste: seed must be on the device of host"),
}

NORM_CASES = {
    "int tensor": (([H, H.long()],), "kasmina::foreach_norm: tensors[1] must be float16"),
    "mixed devices": (
        ([H, H, H.to("meta")],),
        "kasmina::foreach_norm: tensors[2] is on meta but tensors[0] is on cpu",
    ),
}

STATS_CASES = {
    "negative count": (([H], [H], -1, 3), "kasmina::gradient_stats: host_params must be >= 0, got -1"),
    "int seed grad": (([H], [H.long()], 1, 1), "kasmina::gradient_stats: seed_grads[0] must be float16"),
    "mixed devices": (
        ([H], [H, H.to("meta")], 1, 1),
        "kasmina::gradient_stats: seed_grads[1] is on meta but host_grads[0]",
    ),
}


def message(fn, args, backend):
    with with_backend(backend), pytest.raises(ValueError) as info:
        fn(*args)
    return str(info.value).splitlines()[0]


@pytest.mark.parametrize(
    ("fn", "args", "expected"),
    [pytest.param(kasmina_fast.blend, *v, id=f"blend-{k}") for k, v in BLEND_CASES.items()]
    + [
        pytest.param(
            kasmina_fast.valve, args, expected.replace("kasmina::blend", "kasmina::valve"), id=f"valve-{k}"
        )
        for k, (args, expected) in BLEND_CASES.items()
    ]
    + [pytest.param(kasmina_fast.ste, *v, id=f"ste-{k}") for k, v in STE_CASES.items()]
    + [pytest.param(kasmina_fast.foreach_norm, *v, id=f"norm-{k}") for k, v in NORM_CASES.items()]
    + [pytest.param(kasmina_fast.gradient_stats, *v, id=f"stats-{k}") for k, v in STATS_CASES.items()],
)
def test_same_error_on_every_backend(fn, args, expected):
    messages = {b: message(fn, args, b) for b in cpu_backends(fn.__name__)}
    with pytest.raises(ValueError) as info:  # the checks of the fakes and the no-library path
        _checks_for(fn)(*args)
    messages["python checks"] = str(info.value).splitlines()[0]
    for backend, msg in messages.items():
        assert msg.startswith(expected), f"{backend}: {msg!r}"
    assert len(set(messages.values())) == 1, messages


def _checks_for(fn):
    return {
        "blend": _checks.check_blend,
        "valve": lambda h, s, a: _checks.check_blend(h, s, a, "kasmina::valve"),
        "ste": _checks.check_ste,
        "foreach_norm": _checks.check_foreach_norm,
        "gradient_stats": _checks.check_gradient_stats,
    }[fn.__name__]


def test_error_names_shapes_and_dtypes():
    msg = message(kasmina_fast.blend, BLEND_CASES["seed shape"][0], "auto")
    assert (
        msg == "kasmina::blend: seed must have the shape of host, got seed [4, 3, 5, 6] and host [4, 3, 5, 5]"
    )
    msg = message(kasmina_fast.blend, BLEND_CASES["alpha channels"][0], "auto")
    assert msg.endswith("matching host [4, 3, 5, 5], got alpha [4, 3, 1, 1]")


def test_alpha_of_wrong_type():
    with pytest.raises(ValueError, match="kasmina::blend: alpha must be a Tensor or a real number, got str"):
        kasmina_fast.blend(H, H, "0.5")


@pytest.mark.parametrize("op", ["blend", "valve"])
@pytest.mark.parametrize("case", list(BLEND_CASES))
def test_direct_op_call_is_checked(case, op):
    """torch.ops.kasmina.blend (and .valve) itself validates: no kernel runs on bad input."""
    args, expected = BLEND_CASES[case]
    with pytest.raises(ValueError, match=expected.split(": ", 1)[1][:30].replace("(", r"\(")):
        getattr(torch.ops.kasmina, op)(*args)


def test_bad_input_fails_at_trace_time():
    torch._dynamo.reset()
    fn = torch.compile(kasmina_fast.blend, backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match="seed must have the shape of host"):
        fn(H, torch.randn(4, 3, 5, 6), torch.tensor(0.5))


def test_blend_backward_checks_grad():
    with pytest.raises(ValueError, match="kasmina::blend_backward: grad must match host"):
        torch.ops.kasmina.blend_backward(torch.randn(3), H, H, torch.tensor(0.5), [True, True, False])
