"""CNNHost and TransformerHost: injection points, segment routing, errors."""

from __future__ import annotations

import pytest
import torch

from kasmina_fast import CNNHost, HostProtocol, TransformerHost


@pytest.mark.parametrize(
    ("n_blocks", "segments", "points"),
    [
        (2, ["block1", "block2"], {"block1": 8, "block2": 16, "late": 16}),  # 2 // 3 = 0: late only
        (3, ["early", "mid", "late"], {"early": 8, "mid": 16, "late": 32}),
        (
            # early/mid/late after blocks 5 // 3 = 1, 2 and 5
            5,
            ["block1", "block2", "block3", "block4", "block5"],
            {"block1": 8, "early": 8, "block2": 16, "mid": 16, "block3": 32, "block4": 64, "block5": 128}
            | {"late": 128},
        ),
    ],
)
def test_cnn_points_and_segments(n_blocks, segments, points):
    host = CNNHost(n_blocks=n_blocks, base_channels=8, pool_layers=min(n_blocks, 3))
    assert isinstance(host, HostProtocol)
    assert host.segments == segments and host.injection_points == points
    assert list(host.injection_points) == list(points), "host order, a segment before its aliases"
    x = torch.randn(2, 3, 32, 32)
    host.eval()
    want = host(x)
    assert want.shape == (2, 10)
    for seg in segments:
        mid = host.forward_to_segment(seg, x)
        assert mid.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(host.forward_from_segment(seg, mid), want)
    # resume from an earlier segment
    a = host.forward_to_segment(segments[0], x)
    b = host.forward_to_segment(segments[-1], a, from_segment=segments[0])
    torch.testing.assert_close(host.forward_from_segment(segments[-1], b), want)


def test_cnn_errors():
    with pytest.raises(ValueError, match="n_blocks must be >= 2"):
        CNNHost(n_blocks=1)
    with pytest.raises(ValueError, match="pool_layers"):
        CNNHost(n_blocks=3, pool_layers=4)
    host = CNNHost(base_channels=4)
    with pytest.raises(ValueError, match="unknown segment 'deep'; available: early, mid, late"):
        host.forward_to_segment("deep", torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown segment 'first'; available: early, mid, late"):
        host.register_slot("first", torch.nn.Identity())


def test_an_alias_and_its_segment_are_one_point():
    """`mid` of a 6-block host is block4's point: it answers to both names, holds one slot."""
    host = CNNHost(n_blocks=6, base_channels=4, pool_layers=3)
    assert host.position("mid") == host.position("block4") == 3
    assert host.position("early") == 1 and host.position("late") == 5
    host.register_slot("mid", torch.nn.Identity())  # empty positions never conflict
    host.register_slot("block4", torch.nn.Conv2d(32, 32, 1))
    with pytest.raises(ValueError, match="'mid' is the point 'block4', which holds a slot already"):
        host.register_slot("mid", torch.nn.Conv2d(32, 32, 1))
    host.unregister_slot("block4")
    host.register_slot("mid", torch.nn.Conv2d(32, 32, 1))


def test_cnn_pooling_only_on_first_blocks():
    host = CNNHost(n_blocks=5, base_channels=4, pool_layers=2)
    h = host.forward_to_segment("block5", torch.randn(1, 3, 16, 16))
    assert h.shape == (1, 64, 4, 4)


def test_memory_format_converted_once_on_entry():
    host = CNNHost(base_channels=4, memory_format=torch.contiguous_format)
    assert host.forward_to_segment("mid", torch.randn(1, 3, 8, 8)).is_contiguous()


@pytest.mark.parametrize(
    ("n_layer", "thirds"),
    [
        (2, {"late": "layer2"}),
        (3, {"early": "layer1", "mid": "layer2", "late": "layer3"}),
        (4, {"early": "layer1", "mid": "layer2", "late": "layer4"}),
        (6, {"early": "layer2", "mid": "layer4", "late": "layer6"}),
    ],
)
def test_transformer_early_mid_late_are_the_spec_systems_boundaries(n_layer, thirds):
    """After blocks n // 3, 2 * (n // 3) and n; a point after every block, the last too."""
    host = TransformerHost(vocab_size=20, n_embd=8, n_head=2, n_layer=n_layer, block_size=6)
    names = [f"layer{i + 1}" for i in range(n_layer)]
    assert set(host.injection_points) == set(names) | set(thirds)
    for alias, segment in thirds.items():
        assert host.position(alias) == host.position(segment)
    idx = torch.randint(0, 20, (2, 6))
    for name in host.injection_points:
        torch.testing.assert_close(
            host.forward_from_segment(name, host.forward_to_segment(name, idx)), host(idx)
        )


def test_transformer_points_segments_and_tied_head():
    host = TransformerHost(vocab_size=50, n_embd=16, n_head=2, n_layer=3, block_size=12)
    assert host.segments == ["layer1", "layer2", "layer3"]
    assert host.injection_points == {
        "layer1": 16, "early": 16, "layer2": 16, "mid": 16, "layer3": 16, "late": 16,
    }  # fmt: skip
    assert host.head.weight is host.tok.weight
    idx = torch.randint(0, 50, (2, 12))
    want = host(idx)
    assert want.shape == (2, 12, 50)
    for seg in host.segments:
        torch.testing.assert_close(host.forward_from_segment(seg, host.forward_to_segment(seg, idx)), want)
    with pytest.raises(ValueError, match="input length 13 exceeds block_size 12"):
        host(torch.randint(0, 50, (1, 13)))
    with pytest.raises(ValueError, match="n_layer must be >= 2"):
        TransformerHost(n_layer=1)
