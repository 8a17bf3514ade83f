"""Every registered blueprint: shape-preserving, identity at birth, trainable, exact parameter count."""

from __future__ import annotations

import pytest
import torch

from kasmina_fast import BlueprintRegistry, BlueprintSpec
from kasmina_fast.blueprints.transformer import flex_attention_available

CNN = ["noop", "norm", "attention", "depthwise", "conv_light", "conv_heavy"]
TRANSFORMER = ["noop", "norm", "lora", "attention", "mlp"]  # flex_attention: test_flex_attention.py
CASES = [("cnn", b, (3, c, 9, 7)) for b in CNN for c in (1, 6, 16)] + [
    ("transformer", b, (2, 5, c)) for b in TRANSFORMER for c in (4, 16, 24)
]


def test_catalog():
    assert [s.blueprint_id for s in BlueprintRegistry.list_for_topology("cnn")] == sorted(CNN)
    flex = ["flex_attention"] if flex_attention_available() else []
    assert [s.blueprint_id for s in BlueprintRegistry.list_for_topology("transformer")] == sorted(
        TRANSFORMER + flex
    )


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
    with pytest.raises(ValueError, match=r"unknown topology 'rnn'; available: cnn, dense, transformer"):
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


def test_options_reach_the_factory_and_unknown_ones_are_refused():
    seed = BlueprintRegistry.create("transformer", "mlp", 8, checkpoint=True)
    assert seed.checkpoint
    assert BlueprintRegistry.get("transformer", "attention").options == ("checkpoint",)
    assert BlueprintRegistry.get("cnn", "norm").options == ()
    with pytest.raises(
        ValueError, match=r"blueprint 'mlp' \(transformer\) has no option 'ckpt'; its options: checkpoint"
    ):
        BlueprintRegistry.create("transformer", "mlp", 8, ckpt=True)
    with pytest.raises(
        ValueError, match=r"blueprint 'norm' \(cnn\) has no option 'checkpoint'; its options: none"
    ):
        BlueprintRegistry.create("cnn", "norm", 8, checkpoint=True)


@pytest.mark.parametrize("blueprint", ["mlp", "attention"])
def test_checkpointed_seed_matches_the_plain_one(blueprint):
    """checkpoint=True: same values and gradients; the branch runs twice in training
    (once more in the backward) and once in eval or without grad."""
    torch.manual_seed(0)
    plain = BlueprintRegistry.create("transformer", blueprint, 16)
    ckpt = BlueprintRegistry.create("transformer", blueprint, 16, checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    for p in plain.parameters():  # leave the identity so that every gradient shows
        torch.nn.init.normal_(p, std=0.1)
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    ckpt.branch = (lambda f: lambda x: calls.append(1) or f(x))(ckpt.branch)
    x = torch.randn(2, 5, 16, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    out, out2 = plain(x), ckpt(x2)
    torch.testing.assert_close(out2, out, rtol=0, atol=0)
    out.square().sum().backward()
    out2.square().sum().backward()
    torch.testing.assert_close(x2.grad, x.grad)
    for (name, p), p2 in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p2.grad, p.grad, msg=name)
    assert len(calls) == 2
    ckpt.eval()
    ckpt(x2)
    with torch.no_grad():
        ckpt.train()(x2)
    assert len(calls) == 4
