"""The ``flex_attention`` transformer blueprint: causal, residual, identity at birth,
its block mask cached per (sequence length, device) in a bounded cache, and
compiled with fullgraph=True where FlexAttention supports the device."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from kasmina_fast import BlueprintRegistry
from kasmina_fast.blueprints.transformer import FlexAttentionSeed, flex_attention_available

pytestmark = [
    pytest.mark.skipif(not flex_attention_available(), reason="torch.nn.attention.flex_attention is missing"),
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def seed(c: int = 16):
    torch.manual_seed(0)
    s = BlueprintRegistry.create("transformer", "flex_attention", c).to(DEVICE)
    assert sum(p.numel() for p in s.parameters()) == BlueprintRegistry.get(
        "transformer", "flex_attention"
    ).param_count(c)
    return s


def sdpa_reference(s: FlexAttentionSeed, x):
    """The same seed's math through causal scaled_dot_product_attention."""
    B, T, C = x.shape
    q, k, v = (p(x).view(B, T, s.heads, C // s.heads).transpose(1, 2) for p in (s.q, s.k, s.v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return x + s.proj(y.transpose(1, 2).reshape(B, T, C))


def test_identity_at_birth_and_causal():
    s = seed()
    x = torch.randn(2, 9, 16, device=DEVICE)
    with torch.no_grad():
        assert torch.equal(s(x), x)
        torch.nn.init.normal_(s.proj.weight, std=0.2)
        torch.testing.assert_close(s(x), sdpa_reference(s, x), rtol=1e-5, atol=1e-5)
        y2 = s(torch.cat([x[:, :5], torch.randn(2, 4, 16, device=DEVICE)], dim=1))
        torch.testing.assert_close(y2[:, :5], s(x)[:, :5])  # the first 5 never see later tokens


def test_block_mask_cache_is_keyed_and_bounded():
    s = seed()
    with torch.no_grad():
        s(torch.randn(1, 8, 16, device=DEVICE))
        first = s.block_mask(8, torch.device(DEVICE))
        assert s.block_mask(8, torch.device(DEVICE)) is first  # reused
        for t in range(9, 9 + 2 * s.MASK_CACHE):
            s.block_mask(t, torch.device(DEVICE))
    assert len(s._masks) == s.MASK_CACHE
    assert [key[0] for key in s._masks] == list(range(9 + s.MASK_CACHE, 9 + 2 * s.MASK_CACHE))  # LRU


def test_compiles_fullgraph():
    s = seed()
    torch.nn.init.normal_(s.proj.weight, std=0.2)
    x = torch.randn(2, 8, 16, device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(s, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), sdpa_reference(s, x), rtol=1e-4, atol=1e-4)


def test_trains():
    """Gradients (on the CPU through scaled_dot_product_attention, where FlexAttention
    has no backward) equal the SDPA reference's, and an optimizer step trains it."""
    s = seed()
    torch.nn.init.normal_(s.proj.weight, std=0.2)
    x = torch.randn(2, 8, 16, device=DEVICE, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s(x).square().sum().backward()
    assert all(p.grad is not None for p in s.parameters())
    got = [x.grad.clone(), *(p.grad.clone() for p in s.parameters())]
    x.grad = None
    s.zero_grad()
    sdpa_reference(s, x).square().sum().backward()
    for a, b in zip(got, [x.grad, *(p.grad for p in s.parameters())]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    before = [p.detach().clone() for p in s.parameters()]
    torch.optim.SGD(s.parameters(), lr=0.1).step()
    assert any(not torch.equal(a, b) for a, b in zip(before, s.parameters()))


def test_a_flex_attention_seed_trains_in_a_slot():
    """In a slot on the CPU: a TRAINING step (the STE) gives the seed its gradients."""
    import kasmina_fast as kf

    torch.manual_seed(0)
    host = kf.TransformerHost(vocab_size=16, n_embd=16, n_head=2, n_layer=3, block_size=8)
    model = kf.MorphogeneticModel(
        host, DEVICE, slots=["mid"], task_config=kf.TaskConfig(topology="transformer")
    )
    model.germinate_seed("flex_attention", slot="mid")
    model.advance_stage(kf.SeedStage.TRAINING, slot="mid")
    idx = torch.randint(0, 16, (4, 8), device=DEVICE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(idx).logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.seed_parameters())
