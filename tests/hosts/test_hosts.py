"""CNNHost and TransformerHost: injection points, segment routing, errors."""

from __future__ import annotations

import pytest
import torch

from kasmina_fast import CNNHost, HostProtocol, TransformerHost


@pytest.mark.parametrize(
    ("n_blocks", "segments", "points"),
    [
        (2, ["block1", "block2"], {"block2": 16}),
        (3, ["early", "mid", "late"], {"mid": 16, "late": 32}),
        (
            5,
            ["block1", "block2", "block3", "block4", "block5"],
            {f"block{i}": 8 * 2 ** (i - 1) for i in range(2, 6)},
        ),
    ],
)
def test_cnn_points_and_segments(n_blocks, segments, points):
    host = CNNHost(n_blocks=n_blocks, base_channels=8, pool_layers=min(n_blocks, 3))
    assert isinstance(host, HostProtocol)
    assert host.segments == segments and host.injection_points == points
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
    with pytest.raises(ValueError, match="unknown injection point 'early'; available: mid, late"):
        host.register_slot("early", torch.nn.Identity())


def test_cnn_pooling_only_on_first_blocks():
    host = CNNHost(n_blocks=5, base_channels=4, pool_layers=2)
    h = host.forward_to_segment("block5", torch.randn(1, 3, 16, 16))
    assert h.shape == (1, 64, 4, 4)


def test_memory_format_converted_once_on_entry():
    host = CNNHost(base_channels=4, memory_format=torch.contiguous_format)
    assert host.forward_to_segment("mid", torch.randn(1, 3, 8, 8)).is_contiguous()


def test_transformer_points_segments_and_tied_head():
    host = TransformerHost(vocab_size=50, n_embd=16, n_head=2, n_layer=3, block_size=12)
    assert host.segments == ["layer1", "layer2", "layer3"]
    assert host.injection_points == {"layer1": 16, "layer2": 16}
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
