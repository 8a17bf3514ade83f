"""save_pretrained / from_pretrained: a grown model leaves the run as a folder and
comes back on a freshly built host (other random weights) with the same outputs,
bit for bit, and the same stages, at every stage of the lifecycle; the host keeps
its own format (a Hugging Face model loads from the folder as the base model);
every mismatch is refused by name."""

from __future__ import annotations

import json

import pytest
import torch

import kasmina_fast as kf
from kasmina_fast.hosts.pretrained import GROWTH_JSON, GROWTH_TENSORS, HOST_TENSORS
from tests.utils import MLP, call, graft_case, grow_to

S = kf.SeedStage
STAGES = [S.DORMANT, S.GERMINATED, S.TRAINING, S.BLENDING, S.PROBATIONARY, S.FOSSILIZED, S.CULLED]


def _host(name: str, seed: int):
    """(plain host or model, grown model factory, its slot, blueprint, example input, output of interest)"""
    torch.manual_seed(seed)
    if name == "cnnhost":
        host = kf.CNNHost(num_classes=5, n_blocks=3, base_channels=8)
        x = torch.randn(2, 3, 16, 16)
        return host, lambda h: kf.MorphogeneticModel(h, slots=["early", "mid"]), "mid", "conv_light", x, None
    if name == "transformerhost":  # a tied head
        host = kf.TransformerHost(vocab_size=40, n_embd=16, n_head=2, n_layer=2, block_size=8)
        x = torch.randint(0, 40, (2, 8))
        return host, lambda h: kf.MorphogeneticModel(h, slots=["layer1"]), "layer1", "lora", x, None
    model, points, x, out = graft_case(name, seed)
    blueprint = {"resnet": "conv_light", "mlp": "mlp"}[name]
    return model, lambda m: kf.graft(m, points, example_input=x), points[-1], blueprint, x, out


def _grown(name: str, stage: S, algorithm: str = "linear", mode: str = "lerp"):
    host, make, slot_id, blueprint, x, out = _host(name, 0)
    model = make(host)
    if stage != S.DORMANT:
        grow_to(model.seed_slots[slot_id], stage, blueprint, algorithm, mode, host=model.host_parameters())
    return model.eval(), slot_id, x, out


def _output(model, x, out):
    with torch.no_grad():
        y = call(model, x)
    return y if out is None else out(y)


CASES = [
    *[("cnnhost", stage, "linear", "lerp") for stage in STAGES],
    ("cnnhost", S.BLENDING, "gated", "valve"),
    ("cnnhost", S.FOSSILIZED, "gated", "lerp"),
    *[("mlp", stage, "gated", "lerp") for stage in STAGES],
    ("mlp", S.FOSSILIZED, "linear", "valve"),
    *[("resnet", stage, "linear", "lerp") for stage in STAGES],
    ("resnet", S.PROBATIONARY, "gated", "valve"),
    ("transformerhost", S.FOSSILIZED, "gated", "lerp"),
    ("transformerhost", S.BLENDING, "linear", "valve"),
]


@pytest.mark.parametrize(("name", "stage", "algorithm", "mode"), CASES)
def test_round_trip_on_a_fresh_host(tmp_path, name, stage, algorithm, mode):
    model, slot_id, x, out = _grown(name, stage, algorithm, mode)
    want = _output(model, x, out)
    model.save_pretrained(tmp_path)
    fresh, *_ = _host(name, 1)  # built anew, other random weights
    loaded = kf.MorphogeneticModel.from_pretrained(fresh, tmp_path).eval()
    assert torch.equal(_output(loaded, x, out), want)  # bit-equal
    a, b = model.seed_slots[slot_id], loaded.seed_slots[slot_id]
    assert b.stage == a.stage == stage and torch.equal(b.alpha, a.alpha)
    assert b.lifecycle_state() == a.lifecycle_state()
    assert loaded.slot_ids == model.slot_ids and loaded.germinations == model.germinations
    sa, sb = model.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    # the lifecycle goes on from where it was: the same next decision
    if a.state is not None and stage not in (S.FOSSILIZED,):
        for slot in (a, b):
            slot.state.metrics.record_accuracy(99.0) if slot.state is not None else None
            slot.step_epoch()
        assert a.stage == b.stage and torch.equal(a.alpha, b.alpha)


def test_the_folder_holds_the_host_in_its_own_format(tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoModelForImageClassification

    model, slot_id, _x, _out = _grown("resnet", S.FOSSILIZED)
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", HOST_TENSORS, GROWTH_JSON, GROWTH_TENSORS} <= files
    base = AutoModelForImageClassification.from_pretrained(tmp_path)  # the base model, as saved
    assert type(base) is type(model.host.model)
    for (k, v), w in zip(base.state_dict().items(), model.host.model.state_dict().values()):
        assert torch.equal(v, w), k
    growth = json.loads((tmp_path / GROWTH_JSON).read_text())  # primitives only
    saved = growth["slots"][slot_id]
    assert (saved["topology"], saved["channels"]) == ("cnn", 16)
    assert saved["lifecycle"]["state"]["blueprint_id"] == "conv_light"
    assert saved["lifecycle"]["state"]["stage"] == int(S.FOSSILIZED)
    assert growth["host"] == {
        "class": "transformers.models.resnet.modeling_resnet.ResNetForImageClassification",
        "grafted": True,
        "weights": "save_pretrained",
    }
    from safetensors.torch import load_file

    seeds = load_file(str(tmp_path / GROWTH_TENSORS))
    assert {k.split("/")[0] for k in seeds} == set(model.slot_ids)  # every slot's alpha, the seed's weights
    assert f"{slot_id}/seed.conv2.weight" in seeds


def test_a_plain_host_is_saved_as_safetensors_without_its_slots(tmp_path):
    model, *_ = _grown("transformerhost", S.FOSSILIZED)
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    host = load_file(str(tmp_path / HOST_TENSORS))
    assert not any(k.startswith("slots.") for k in host)
    assert "tok.weight" in host and "head.weight" not in host  # the tied head once
    assert not (tmp_path / "config.json").exists()


def test_refusals_name_the_first_mismatch(tmp_path):
    model, *_ = _grown("mlp", S.BLENDING, "gated")
    model.save_pretrained(tmp_path / "mlp")
    from tests.utils import UNet

    with pytest.raises(ValueError, match=r"growth of a tests\.utils\.MLP host; got a tests\.utils\.UNet"):
        kf.MorphogeneticModel.from_pretrained(UNet(), tmp_path / "mlp")
    with pytest.raises(ValueError, match=r"'body\.0\.weight' of shape \[16, 12\], the host \[20, 12\]"):
        kf.MorphogeneticModel.from_pretrained(MLP(hidden=20), tmp_path / "mlp")
    with pytest.raises(TypeError, match="the host itself"):
        kf.MorphogeneticModel.from_pretrained(model, tmp_path / "mlp")

    cnn, *_ = _grown("cnnhost", S.TRAINING)
    cnn.save_pretrained(tmp_path / "cnn")
    with pytest.raises(ValueError, match="the host has no point 'early'"):  # 2 blocks: block1, block2, late
        kf.MorphogeneticModel.from_pretrained(kf.CNNHost(5, n_blocks=2, base_channels=8), tmp_path / "cnn")
    with pytest.raises(ValueError, match="point 'early' has cnn features of 16 channels in the host"):
        kf.MorphogeneticModel.from_pretrained(kf.CNNHost(5, base_channels=16), tmp_path / "cnn")
    with pytest.raises(FileNotFoundError, match=r"growth\.json"):
        kf.MorphogeneticModel.from_pretrained(MLP(), tmp_path / "nothing")


def test_a_tied_gpt2_round_trip_and_a_missing_point(tmp_path):
    pytest.importorskip("transformers")
    from kasmina_fast.cli import hf

    torch.manual_seed(0)
    gpt = hf.gpt2(vocab_size=50, block_size=16, n_embd=32, n_layer=2, n_head=2)
    grown = kf.graft(
        gpt, ["transformer.h.1"], example_input={"input_ids": torch.zeros(1, 4, dtype=torch.long)}
    )
    grow_to(
        grown.seed_slots["transformer.h.1"], S.PROBATIONARY, "lora", "gated", host=grown.host_parameters()
    )
    grown.save_pretrained(tmp_path)
    # the tied GPT-2 as its own save_pretrained writes it, back on a fresh one
    again = kf.MorphogeneticModel.from_pretrained(hf.gpt2(50, 16, n_embd=32, n_layer=2, n_head=2), tmp_path)
    assert again.host.model.lm_head.weight is again.host.model.transformer.wte.weight
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        assert torch.equal(again.eval()(input_ids=ids).logits, grown.eval()(input_ids=ids).logits)
    shallow = hf.gpt2(vocab_size=50, block_size=16, n_embd=32, n_layer=1, n_head=2)
    with pytest.raises(ValueError, match=r"no submodule 'transformer\.h\.1'"):
        kf.MorphogeneticModel.from_pretrained(shallow, tmp_path)
