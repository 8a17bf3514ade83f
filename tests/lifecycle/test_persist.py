"""The growth state's one encoding: a grown model's state dict holds tensors only (so
safetensors saves it and ``weights_only`` loads it), a fresh model loads it and
rebuilds its seeds, and state dicts written before the encoding (the lifecycle as
a dict) still load."""

from __future__ import annotations

import io

import pytest
import torch

import kasmina_fast as kf
from kasmina_fast.lifecycle import persist
from tests.utils import grow_to

S = kf.SeedStage


def _model(seed: int = 0):
    torch.manual_seed(seed)
    host = kf.TransformerHost(vocab_size=40, n_embd=16, n_head=2, n_layer=2, block_size=8)  # tied head
    return kf.MorphogeneticModel(host, slots=["layer1", "layer2"])


def test_encode_round_trip_and_refusals():
    obj = {"a": [1, 2.5, None, "x"], "t": torch.arange(3), "nested": {"inf": float("inf")}}
    t = persist.encode(obj)
    assert t.dtype == torch.uint8 and t.dim() == 1
    back = persist.decode(t)
    assert back["a"] == obj["a"] and torch.equal(back["t"], obj["t"]) and back["nested"] == obj["nested"]
    assert persist.decode(persist.encode_bytes(obj))["a"] == obj["a"]
    assert persist.decode({"old": 1}) == {"old": 1}  # an older checkpoint's dict passes through
    with pytest.raises(TypeError, match=r"my state must hold what torch\.load"):
        persist.encode_bytes({"f": object()}, "my state")
    with pytest.raises(ValueError, match="1-d uint8 tensor"):
        persist.decode(torch.zeros(3))


def test_the_state_dict_holds_tensors_only_and_loads_into_a_fresh_model(tmp_path):
    from safetensors.torch import load_file, save_file

    model = _model()
    grow_to(model.seed_slots["layer1"], S.BLENDING, "lora", "gated", "valve", host=model.host_parameters())
    grow_to(model.seed_slots["layer2"], S.CULLED, "mlp", host=model.host_parameters())
    sd = model.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    assert "host.head.weight" not in sd  # the tied head once
    save_file(sd, str(tmp_path / "grown.safetensors"))
    torch.save(sd, tmp_path / "grown.pt")
    x = torch.randint(0, 40, (2, 8))
    model.eval()
    with torch.no_grad():
        want = model(x)
    for loaded in (
        load_file(str(tmp_path / "grown.safetensors")),
        torch.load(tmp_path / "grown.pt", weights_only=True),
    ):
        fresh = _model(seed=1)
        fresh.load_state_dict(loaded)  # strict: the seeds are rebuilt, the tied head tied back
        assert fresh.host.head.weight is fresh.host.tok.weight
        assert [s.stage for s in fresh.seed_slots.values()] == [S.BLENDING, S.CULLED]
        fresh.eval()
        with torch.no_grad():
            assert torch.equal(fresh(x), want)


def test_a_state_dict_written_before_the_encoding_still_loads():
    model = _model()
    grow_to(model.seed_slots["layer1"], S.PROBATIONARY, "lora", host=model.host_parameters())
    sd = model.state_dict()
    # the former layout: the lifecycle as a dict of primitives, a tied weight twice
    old = {k: (persist.decode(v) if k.endswith("_extra_state") else v) for k, v in sd.items()}
    old["host.head.weight"] = old["host.tok.weight"]
    buf = io.BytesIO()
    torch.save(old, buf)
    buf.seek(0)
    fresh = _model(seed=1)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.seed_slots["layer1"].stage == S.PROBATIONARY
    assert fresh.seed_slots["layer1"].lifecycle_state() == model.seed_slots["layer1"].lifecycle_state()


def test_an_older_trainer_checkpoint_loads_without_the_callback():
    """The former Trainer checkpoint layout: the host's tensors plus ``kasmina_growth``
    holding the slots' tensors and lifecycle dicts (and the training state)."""
    model = _model()
    grow_to(model.seed_slots["layer2"], S.BLENDING, "lora", host=model.host_parameters())
    sd = model.state_dict()
    growth = {k: v for k, v in sd.items() if k.startswith("host.slots.") or k.endswith("_extra_state")}
    old = {k: v for k, v in sd.items() if k not in growth}
    growth = {k: (persist.decode(v) if k.endswith("_extra_state") else v) for k, v in growth.items()}
    old[persist.GROWTH_KEY] = persist.encode({"model": growth, "optimizer": {"groups": []}, "grower": None})
    fresh = _model(seed=1)
    fresh.load_state_dict(old)
    assert fresh.seed_slots["layer2"].stage == S.BLENDING
    assert fresh.training_state == {"optimizer": {"groups": []}, "grower": None}
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd[k]), k
