"""Tiny configurations of the three studied architectures, keeping each family's own quirks.

Sizes come from the `organisms.architectures.<family>` config entry; the quirks are fixed here because they
are what makes a family itself: Llama-3's large RoPE base and untied head, Gemma-2's attention and final-logit
soft-capping, sliding/full attention alternation, post-sublayer norms, tied embeddings and sqrt(d) embedding
scale, Qwen-2's biased q/k/v projections and RoPE base 1e6.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import Gemma2Config, LlamaConfig, PretrainedConfig, Qwen2Config

from rankaudit.organisms.chat_templates import family_format

MODEL_CLASSES = {"llama": "LlamaForCausalLM", "gemma2": "Gemma2ForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def model_config(family: str, sizes: Mapping[str, Any], tokenizer: Any) -> PretrainedConfig:
    """The HF config of a family's organism, with token ids taken from its tokenizer."""
    fmt = family_format(family)
    head_dim = _head_dim(family, sizes)
    token_ids = {
        "vocab_size": len(tokenizer),
        "eos_token_id": [tokenizer.convert_tokens_to_ids(token) for token in fmt.stop_tokens],
        "bos_token_id": tokenizer.convert_tokens_to_ids(fmt.bos_token) if fmt.bos_token else None,
        "pad_token_id": tokenizer.convert_tokens_to_ids(fmt.pad_token) if fmt.pad_token else None,
    }
    common = {
        "hidden_size": int(sizes["hidden_size"]),
        "intermediate_size": int(sizes["intermediate_size"]),
        "num_hidden_layers": int(sizes["num_hidden_layers"]),
        "num_attention_heads": int(sizes["num_attention_heads"]),
        "num_key_value_heads": int(sizes["num_key_value_heads"]),
        "max_position_embeddings": int(sizes.get("max_position_embeddings", 256)),
        "head_dim": head_dim,
        "attention_dropout": 0.0,
        **token_ids,
    }
    if family == "llama":
        return LlamaConfig(
            **common, rms_norm_eps=1e-5, tie_word_embeddings=False, hidden_act="silu",
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        )
    if family == "gemma2":
        n_layers = common["num_hidden_layers"]
        return Gemma2Config(
            **common, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=head_dim, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
            sliding_window=int(sizes["sliding_window"]),
            layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)],
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
    if family == "qwen2":
        return Qwen2Config(
            **common, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu", use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
    raise ValueError(f"organisms.architectures: no model class for family {family!r} (known: {sorted(MODEL_CLASSES)})")


def _head_dim(family: str, sizes: Mapping[str, Any]) -> int:
    hidden, heads, kv_heads = int(sizes["hidden_size"]), int(sizes["num_attention_heads"]), int(sizes["num_key_value_heads"])
    if hidden % heads or heads % kv_heads:
        raise ValueError(
            f"organisms.architectures.{family}: hidden_size {hidden} must be divisible by num_attention_heads {heads}, "
            f"and num_attention_heads by num_key_value_heads {kv_heads}"
        )
    return hidden // heads


def new_model(family: str, sizes: Mapping[str, Any], tokenizer: Any, seed: int) -> Any:
    """A freshly initialised organism; the torch generator is seeded right before, so equal seeds give equal weights."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(family, sizes, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if type(model).__name__ != MODEL_CLASSES[family]:
        raise TypeError(f"family {family!r}: built {type(model).__name__}, expected {MODEL_CLASSES[family]}")
    return model
