"""merge_and_unload: every blueprint of every topology, joined by lerp, a gated lerp
or valve, folds into the host as plain PyTorch with the grown model's eval outputs
(fp32, 1e-5); the result is the host's own class, holds no SeedSlot, exports to a
graph of ATen ops only, and an AOTInductor package of it runs in a process that
never imports kasmina_fast. Unfinished seeds are refused, dropped or kept."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import kasmina_fast as kf
from kasmina_fast.blueprints import BlueprintRegistry
from tests.utils import MLP, call, grow_to

S = kf.SeedStage
MODES = [("linear", "lerp"), ("gated", "lerp"), ("linear", "valve"), ("gated", "valve")]


def _grown(topology: str, blueprint: str, stage=S.FOSSILIZED, algorithm="linear", mode="lerp"):
    """(grown model in eval mode, its input) with ``blueprint`` grown to ``stage`` in one slot."""
    torch.manual_seed(0)
    if topology == "cnn":
        model = kf.MorphogeneticModel(kf.CNNHost(num_classes=5, base_channels=8), slots=["early", "mid"])
        x, slot = torch.randn(2, 3, 16, 16), "mid"
    elif topology == "transformer":
        host = kf.TransformerHost(vocab_size=40, n_embd=16, n_head=2, n_layer=2, block_size=8)
        model = kf.MorphogeneticModel(host, slots=["layer1", "layer2"])
        x, slot = torch.randint(0, 40, (2, 8)), "layer1"
    else:
        x, slot = torch.randn(4, 12), "body.3"
        model = kf.graft(MLP(), ["body.1", "body.3"], example_input=x)
    grow_to(
        model.seed_slots[slot], stage, blueprint, algorithm, mode, noise=0.2, host=model.host_parameters()
    )
    return model.eval(), x, slot


def _check_plain(merged: torch.nn.Module, x) -> None:
    assert not any(isinstance(m, kf.SeedSlot) for m in merged.modules())
    ep = torch.export.export(
        merged, (x,) if not isinstance(x, dict) else (), x if isinstance(x, dict) else None
    )
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert ops and not [op for op in ops if "kasmina" in op], ops


BLUEPRINTS = [
    (t, s.blueprint_id)
    for t in ("cnn", "transformer", "dense")
    for s in BlueprintRegistry.list_for_topology(t)
]


@pytest.mark.parametrize(("topology", "blueprint"), BLUEPRINTS)
@pytest.mark.parametrize(("algorithm", "mode"), MODES)
def test_every_blueprint_and_blend_merges_to_plain_torch(topology, blueprint, algorithm, mode):
    model, x, _slot = _grown(topology, blueprint, algorithm=algorithm, mode=mode)
    host_class = type(model.host if topology != "dense" else model.host.model)
    with torch.no_grad():
        want = model(x)
    merged = model.merge_and_unload()
    assert type(merged) is host_class
    with torch.no_grad():
        got = merged(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if blueprint != "flex_attention" and algorithm == "gated":  # (export: one alpha kind suffices)
        _check_plain(merged, x)


def test_a_grafted_hugging_face_model_stays_its_class():
    pytest.importorskip("transformers")
    from kasmina_fast.cli import hf

    torch.manual_seed(0)
    llama = hf.llama(vocab_size=48, block_size=16).eval()
    ids = {"input_ids": torch.randint(0, 48, (2, 10))}
    model = kf.graft(llama, ["model.layers.0", "model.layers.1"], example_input=ids)
    grow_to(
        model.seed_slots["model.layers.0"],
        S.FOSSILIZED,
        "lora",
        "gated",
        noise=0.2,
        host=model.host_parameters(),
    )
    grow_to(model.seed_slots["model.layers.1"], S.CULLED, "mlp", host=model.host_parameters())
    model.eval()
    with torch.no_grad():
        want = model(**ids).logits
    merged = model.merge_and_unload()
    assert type(merged).__name__ == "LlamaForCausalLM" and merged is llama
    assert hasattr(merged.model.layers[0], "grown_seed") and not hasattr(merged.model.layers[1], "grown_seed")
    with torch.no_grad():
        torch.testing.assert_close(merged(**ids).logits, want, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, kf.SeedSlot) for m in merged.modules())
    ep = torch.export.export(merged, (), dict(ids))
    assert not [n for n in ep.graph.nodes if n.op == "call_function" and "kasmina" in str(n.target)]


@pytest.mark.parametrize("stage", [S.GERMINATED, S.TRAINING, S.BLENDING, S.PROBATIONARY])
def test_an_unfinished_seed_is_refused_dropped_or_kept(stage):
    model, x, slot = _grown("cnn", "conv_light", stage, "gated", "valve")
    with pytest.raises(ValueError, match=rf"slot 'mid' holds seed 'mid-conv_light-1' in {stage.name}"):
        model.merge_and_unload()
    with pytest.raises(ValueError, match="unfinished must be one of refuse, drop, keep"):
        model.merge_and_unload(unfinished="fossilize")
    with torch.no_grad():
        as_grown = model(x)
        with model.seed_slots[slot].force_alpha(0.0):
            without = model(x)
    kept = _grown("cnn", "conv_light", stage, "gated", "valve")[0].merge_and_unload(unfinished="keep")
    with torch.no_grad():
        torch.testing.assert_close(kept(x), as_grown, rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for n, p in kept.named_parameters() if "slots." in n)  # frozen
    dropped = model.merge_and_unload(unfinished="drop")
    assert not [n for n, _ in dropped.named_parameters() if "slots." in n]
    with torch.no_grad():
        torch.testing.assert_close(dropped(x), without, rtol=1e-5, atol=1e-5)


def test_empty_culled_and_embargoed_slots_go():
    model, x, _ = _grown("cnn", "norm", S.CULLED)
    model.seed_slots["mid"].step_epoch()  # EMBARGOED
    assert model.seed_slots["mid"].stage == S.EMBARGOED
    with torch.no_grad():
        want = model(x)
    merged = model.merge_and_unload()
    assert all(isinstance(m, torch.nn.Identity) for m in merged.slots.values())
    with torch.no_grad():
        assert torch.equal(merged(x), want)


def test_an_aotinductor_package_runs_without_kasmina_fast(tmp_path):
    model, x, _ = _grown("dense", "mlp", S.FOSSILIZED, "gated", "valve")
    with torch.no_grad():
        want = model(x)
    merged = model.merge_and_unload()
    ep = torch.export.export(merged, (x,))
    package = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "merged.pt2"))
    torch.save({"x": x, "want": want}, tmp_path / "io.pt")
    script = (
        "import sys, torch\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        f"runner = torch._inductor.aoti_load_package({package!r})\n"
        "got = runner(io['x'])\n"
        "torch.testing.assert_close(got, io['want'], rtol=1e-5, atol=1e-5)\n"
        "assert not [m for m in sys.modules if m.startswith('kasmina')], 'kasmina_fast was imported'\n"
        "print('ran', tuple(got.shape))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ran (4, 3)" in done.stdout
    assert call(merged, x).shape == want.shape
