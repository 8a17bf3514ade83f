"""MorphogeneticModel.counterfactual_forward: K alpha settings in one batched forward
equal K separate passes with those alphas forced, on a built-in host (a gated and a
plain blend, a slot in TRAINING) and on a grafted Hugging Face GPT-2 (keyword
arguments, a ModelOutput)."""

from __future__ import annotations

import contextlib

import pytest
import torch

import kasmina_fast as kf
from kasmina_fast import SeedStage as S

PERMISSIVE = kf.QualityGates(
    min_training_improvement=-1e9, min_blending_epochs=1, min_seed_gradient_ratio=0.0
)


def _blending(model, slot: str, algorithm: str) -> None:
    model.germinate_seed(kf.lifecycle.policy.DEFAULT_BLUEPRINT[model.seed_slots[slot].task_config.topology],
                         slot=slot, blend_algorithm_id=algorithm)  # fmt: skip
    model.advance_stage(S.TRAINING, slot=slot)
    s = model.seed_slots[slot]
    while s.stage != S.BLENDING or float(s.alpha) == 0.0:
        s.state.metrics.record_accuracy(50.0)
        s.step_epoch()
    g = torch.Generator().manual_seed(len(slot))
    with torch.no_grad():  # seeds and gates away from their identity / open initialisation
        for p in s.seed_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _separate(model, inputs, config):
    with contextlib.ExitStack() as stack:
        for sid, alpha in config.items():
            stack.enter_context(model.seed_slots[sid].force_alpha(alpha))
        with torch.no_grad():
            return model(**inputs) if isinstance(inputs, dict) else model(inputs)


CONFIGS = [{}, {"mid": 0.0}, {"late": 0.0}, {"mid": 0.0, "late": 0.0}, {"mid": 0.7, "early": 1.0}]


def test_built_in_host_equals_separate_passes():
    torch.manual_seed(0)
    host = kf.CNNHost(num_classes=5, base_channels=8, n_blocks=3)
    tc = kf.TaskConfig(topology="cnn", blending_steps=4)
    model = kf.MorphogeneticModel(host, slots=["early", "mid", "late"], task_config=tc, gates=PERMISSIVE)
    _blending(model, "mid", "gated")
    _blending(model, "late", "sigmoid")
    model.germinate_seed("conv_light", slot="early")
    model.advance_stage(S.TRAINING, slot="early")  # overridden to 1.0 in one setting (STE otherwise)
    model.eval()
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        outs = model.counterfactual_forward(x, CONFIGS)
    assert len(outs) == len(CONFIGS)
    for config, out in zip(CONFIGS, outs):
        torch.testing.assert_close(out, _separate(model, x, config), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(outs[0], outs[1])  # the settings differ
    assert all(s._block_alpha is None for s in model.seed_slots.values())  # nothing left behind


def test_grafted_gpt2_with_keyword_arguments():
    pytest.importorskip("transformers", reason="the hf extra (in .ci/requirements.txt) is not installed")
    from kasmina_fast.cli import hf

    torch.manual_seed(0)
    gpt = hf.gpt2(vocab_size=40, block_size=12, n_embd=32, n_layer=3, n_head=4)
    ids = torch.randint(0, 40, (3, 12))
    tc = kf.TaskConfig(topology="transformer", blending_steps=4)
    model = kf.graft(gpt, ["transformer.h.0", "transformer.h.1"], example_input={"input_ids": ids},
                     task_config=tc, gates=PERMISSIVE)  # fmt: skip
    _blending(model, "transformer.h.0", "gated")
    _blending(model, "transformer.h.1", "linear")
    model.eval()
    configs = [{}, {"transformer.h.0": 0.0}, {"transformer.h.1": 0.0}]
    with torch.no_grad():
        outs = model.counterfactual_forward({"input_ids": ids}, configs)
    for config, out in zip(configs, outs):
        assert type(out).__name__ == "CausalLMOutputWithCrossAttentions"
        torch.testing.assert_close(out.logits, _separate(model, {"input_ids": ids}, config).logits,
                                   rtol=1e-5, atol=1e-5)  # fmt: skip


def test_bad_input():
    model = kf.MorphogeneticModel(kf.CNNHost(num_classes=4, base_channels=4, n_blocks=3), slots=["mid"])
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="no slot 'late'"):
        model.counterfactual_forward(x, [{"late": 0.0}])
    with pytest.raises(ValueError, match="configs is empty"):
        model.counterfactual_forward(x, [])
    with pytest.raises(ValueError, match="batch"):
        model.counterfactual_forward((x, torch.randn(3, 4)), [{}])
