"""Loading models and tokenizers, and the checks that must pass before any weights are read.

Everything goes through `AutoConfig` / `AutoTokenizer` / `AutoModelForCausalLM` (an HF id or a local
directory), so a real family and a demo organism load the same way. The pair checks and the chat-template check
work from a config or tokenizer alone: a mismatched pair fails in seconds, not after two 16 GB downloads.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "bfloat16")
UNTRAINED_NORM_RATIO = 0.1


def _torch_dtype(dtype: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {DTYPES}")
    return getattr(torch, dtype)


def load_config(source: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The model's config only (no weights): enough for `check_pair`."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)


def load_tokenizer(source: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer, loaded through `AutoTokenizer`."""
    from transformers import AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    logger.info("loaded tokenizer %s (revision %s, %s, vocab %d) in %.2fs", source, revision or "default",
                type(tokenizer).__name__, len(tokenizer), time.perf_counter() - started)
    return tokenizer


def load_model(
    source: str,
    *,
    revision: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> Any:
    """Load a causal LM for measurement: evaluation mode, gradients off, on `device` in `dtype`."""
    import torch
    from transformers import AutoModelForCausalLM

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{source}: device {device!r} requested but torch sees no CUDA device; set runtime.device "
                         "(or models.<name>.device) to cpu, or run this job on a GPU node")
    started = time.perf_counter()
    # no device_map: transformers needs `accelerate` for it; weights load on the CPU and move once
    kwargs: dict[str, Any] = {"revision": revision, "dtype": _torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    n_params = sum(parameter.numel() for parameter in model.parameters())
    text_config = model.config.get_text_config()
    logger.info(
        "loaded model %s (revision %s): %s, %.3gM parameters, %d layers, d=%d, %s on %s, attention %s, in %.2fs",
        source, revision or "default", type(model).__name__, n_params / 1e6, text_config.num_hidden_layers,
        text_config.hidden_size, dtype, device, model.config._attn_implementation, time.perf_counter() - started,
    )
    return model


def _config_of(model_or_config: Any) -> Any:
    config = getattr(model_or_config, "config", model_or_config)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def check_pair(base: Any, aligned: Any, names: tuple[str, str]) -> None:
    """Refuse a base/aligned pair whose per-layer activations cannot be subtracted.

    `base` and `aligned` are configs (from `load_config`) or loaded models. Vocabulary size, hidden size and
    layer count must agree: the same token ids are fed to both and their residual streams are differenced
    layer by layer.
    """
    base_config, aligned_config = _config_of(base), _config_of(aligned)
    problems = []
    for key in ("vocab_size", "hidden_size", "num_hidden_layers"):
        base_value, aligned_value = getattr(base_config, key, None), getattr(aligned_config, key, None)
        if base_value != aligned_value:
            problems.append(f"{key}: {names[0]} has {base_value}, {names[1]} has {aligned_value}")
    if problems:
        raise ValueError(f"models {names[0]!r} and {names[1]!r} cannot be paired: " + "; ".join(problems))


def check_same_tokenization(base_tokenizer: Any, aligned_tokenizer: Any, texts: list[str], names: tuple[str, str]) -> None:
    """Refuse a pair whose tokenizers encode `texts` differently: both models must read the very same ids."""
    for text in texts:
        base_ids = base_tokenizer(text, add_special_tokens=True)["input_ids"]
        aligned_ids = aligned_tokenizer(text, add_special_tokens=True)["input_ids"]
        if list(base_ids) != list(aligned_ids):
            raise ValueError(f"models {names[0]!r} and {names[1]!r} tokenize {text[:60]!r} differently "
                             f"({len(base_ids)} vs {len(aligned_ids)} ids); they cannot be fed the same prompts")


def require_chat_template(tokenizer: Any, name: str) -> None:
    """Refuse a tokenizer without a chat template, naming the model, before any prompt is rendered."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"model {name!r}: its tokenizer has no chat template, so the chat format cannot be rendered; "
            "render chat prompts with the aligned model's tokenizer (the family's template model)"
        )


@dataclass(frozen=True)
class TokenNorm:
    """One special token's input-embedding norm next to the vocabulary's median norm."""

    token: str
    token_id: int
    norm: float
    vocab_median_norm: float

    @property
    def ratio(self) -> float:
        return self.norm / self.vocab_median_norm if self.vocab_median_norm > 0 else float("inf")


def special_token_norms(model: Any, tokenizer: Any, token_strings: list[str]) -> list[TokenNorm]:
    """Input-embedding norm of each token string (each must be one token) and the vocabulary's median norm."""
    import torch

    weight = model.get_input_embeddings().weight.detach()
    with torch.no_grad():
        norms = torch.linalg.vector_norm(weight.float(), dim=1)
        median = float(norms.median())
    results = []
    for token in token_strings:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"token {token!r} is not a single token for this tokenizer (ids {ids})")
        if ids[0] >= weight.shape[0]:
            raise ValueError(f"token {token!r} has id {ids[0]} beyond the embedding matrix ({weight.shape[0]} rows)")
        results.append(TokenNorm(token, ids[0], float(norms[ids[0]]), median))
    return results


def untrained_special_tokens(
    model: Any, tokenizer: Any, token_strings: list[str], *, name: str = "model", ratio: float = UNTRAINED_NORM_RATIO
) -> list[tuple[str, float, float]]:
    """Chat special tokens whose input embedding looks untrained: norm < `ratio` x the vocabulary median.

    The Llama-3.1 base model never saw its chat header tokens in training, so their embeddings stayed near
    their (tiny) initialisation; feeding it the chat format then reads activations of near-zero inputs. Returns
    (token, norm, vocabulary median norm) for each flagged token and warns with those numbers.
    """
    flagged = [(item.token, item.norm, item.vocab_median_norm)
               for item in special_token_norms(model, tokenizer, token_strings) if item.ratio < ratio]
    if flagged:
        detail = ", ".join(f"{token!r} norm {norm:.4g}" for token, norm, _ in flagged)
        message = (f"{name}: chat special tokens look untrained (input-embedding norm < {ratio} x the vocabulary "
                   f"median {flagged[0][2]:.4g}): {detail}; its chat-format activations start from near-zero inputs")
        logger.warning(message)
        warnings.warn(message, stacklevel=2)
    return flagged
