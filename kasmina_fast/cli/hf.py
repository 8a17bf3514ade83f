"""Small Hugging Face ``transformers`` models built from configs (random weights,
nothing downloaded): the demo's ``--host hf-resnet`` and ``--host gpt2``, the
graft benchmark's model. Needs the ``hf`` extra."""

from __future__ import annotations

from typing import Any

from torch import nn

#: the grafted points of each model: a slot after the last ResNet stage / GPT-2 block
RESNET_SLOTS = ("resnet.encoder.stages.1",)
GPT2_SLOTS = ("transformer.h.1",)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise SystemExit(
            "this needs Hugging Face transformers: pip install 'kasmina-fast[hf]' (or transformers)"
        ) from None
    transformers.logging.set_verbosity_error()  # a small config's token ids are not warnings
    return transformers


def resnet(num_classes: int = 10, in_channels: int = 1, widths: tuple[int, int] = (16, 32)) -> nn.Module:
    """``ResNetForImageClassification``: two stages of one basic block each."""
    t = _transformers()
    config = t.ResNetConfig(
        num_channels=in_channels,
        embedding_size=widths[0],
        hidden_sizes=list(widths),
        depths=[1, 1],
        layer_type="basic",
        num_labels=num_classes,
    )
    return t.ResNetForImageClassification(config)


def gpt2(vocab_size: int, block_size: int, n_embd: int = 64, n_layer: int = 2, n_head: int = 4) -> nn.Module:
    """``GPT2LMHeadModel`` without dropout."""
    t = _transformers()
    config = t.GPT2Config(
        vocab_size=vocab_size,
        n_positions=block_size,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
    )
    return t.GPT2LMHeadModel(config)


def llama(vocab_size: int, block_size: int, hidden: int = 32, n_layer: int = 2, n_head: int = 4) -> nn.Module:
    """``LlamaForCausalLM`` (untied head, grouped-query attention with half the heads)."""
    t = _transformers()
    config = t.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        num_key_value_heads=max(1, n_head // 2),
        max_position_embeddings=block_size,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        use_cache=False,
    )
    return t.LlamaForCausalLM(config)
