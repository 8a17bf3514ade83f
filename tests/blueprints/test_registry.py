"""Every registered blueprint: shape-preserving, identity at birth, trainable, exact parameter count."""

from __future__ import annotations

import pytest
import torch

from kasmina_fast import BlueprintRegistry, BlueprintSpec

CNN = ["noop", "norm", "attention", "depthwise", "conv_light", "conv_heavy"]
TRANSFORMER = ["noop", "norm", "lora", "attention", "mlp"]
CASES = [("cnn", b, (3, c, 9, 7)) for b in CNN for c in (1, 6, 16)] + [
    ("transformer", b, (2, 5, c)) for b in TRANSFORMER for c in (4, 16, 24)
]


def test_catalog():
    assert [s.blueprint_id for s in BlueprintRegistry.list_for_topology("cnn")] == sorted(CNN)
    assert [s.blueprint_id for s in BlueprintRegistry.list_for_topology("transformer")] == sorted(TRANSFORMER)


@pytest.mark.parametrize(("topology", "blueprint", "shape"), CASES)
def test_blueprint_contract(topology, blueprint, shape):
    channels = shape[1] if topology == "cnn" else shape[2]
    seed = BlueprintRegistry.create(topology, blueprint, channels)
    x = torch.randn(shape)
    if topology == "cnn":
        x = x.contiguous(memory_format=torch.channels_last)
    out = seed(x)
    assert out.shape == x.shape
    assert torch.equal(out, x), "a seed must be the identity at birth"
    spec = BlueprintRegistry.get(topology, blueprint)
    assert sum(p.numel() for p in seed.parameters()) == spec.param_count(channels)
    if blueprint != "noop":
        out.square().sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in seed.parameters()), (
            "seed must learn"
        )


def test_unknown_names_list_what_exists():
    with pytest.raises(
        ValueError, match=r"unknown blueprint 'resnet' for cnn; available: attention, conv_heavy"
    ):
        BlueprintRegistry.create("cnn", "resnet", 8)
    with pytest.raises(ValueError, match=r"unknown topology 'rnn'; available: cnn, transformer"):
        BlueprintRegistry.get("rnn", "noop")


def test_register_and_unregister():
    spec = BlueprintSpec("double_noop", "cnn", lambda c: torch.nn.Identity(), lambda c: 0)
    BlueprintRegistry.register(spec)
    try:
        assert BlueprintRegistry.get("cnn", "double_noop") is spec
        with pytest.raises(ValueError, match="already registered"):
            BlueprintRegistry.register(spec)
    finally:
        BlueprintRegistry.unregister("cnn", "double_noop")
    with pytest.raises(ValueError):
        BlueprintRegistry.get("cnn", "double_noop")
