"""Loading models and tokenizers, and the checks that must pass before any weights are read.

Everything goes through `AutoConfig` / `AutoTokenizer` / `AutoModelForCausalLM` (an HF id or a local
directory), so a real family and a demo organism load the same way. The pair checks and the chat-template check
work from a config or tokenizer alone: a mismatched pair fails in seconds, not after two 16 GB downloads.
Weights (safetensors only) are materialised on their device through an accelerate `device_map`: one device, or
several GPUs for a model larger than one (docs/CLUSTER.md, "Models larger than one GPU").
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rankaudit.capture import decoder_blocks

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


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
OFFLOAD_DEVICES = ("cpu", "disk")


def _mapped_devices(device: str, device_map: str | Mapping[str, Any] | None) -> list[str]:
    """Every device a load will place weights on (an integer in a map is a CUDA ordinal)."""
    if isinstance(device_map, Mapping):
        return [f"cuda:{value}" if isinstance(value, int) else str(value) for value in device_map.values()]
    return [device]


def _placement(device: str, device_map: str | Mapping[str, Any] | None) -> str | dict[str, Any]:
    """What `from_pretrained` gets as `device_map`: one device as {"": device}, else the strategy or map itself."""
    if device_map is None:
        return {"": device}
    if isinstance(device_map, str) and device_map not in DEVICE_MAP_STRATEGIES:
        raise ValueError(f"device_map {device_map!r} is neither a module -> device map nor one of {DEVICE_MAP_STRATEGIES}")
    return dict(device_map) if isinstance(device_map, Mapping) else device_map


def load_model(
    source: str,
    *,
    revision: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    device_map: str | Mapping[str, Any] | None = None,
    max_memory: Mapping[str, Any] | None = None,
    offload_folder: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> Any:
    """Load a causal LM for measurement: evaluation mode, gradients off, in `dtype`, safetensors weights only.

    Weights are materialised where they will run (no copy through host memory): on `device` when `device_map`
    is None, else placed by accelerate: a strategy ("auto", ...) spreads the blocks over the visible GPUs
    within `max_memory` ({device: "70GiB"}), a dict places modules by name. A strategy that had to put modules on
    the CPU or disk for a CUDA run is refused: the model does not fit the GPUs the job holds. `offload_folder` is
    only for maps with "disk" entries (tests exercise accelerate's dispatch hooks on a CPU machine with them).
    """
    import torch
    from transformers import AutoModelForCausalLM

    wants_cuda = [where for where in _mapped_devices(device, device_map) if where.startswith("cuda")]
    if wants_cuda and not torch.cuda.is_available():
        raise ValueError(f"{source}: device {wants_cuda[0]!r} requested but torch sees no CUDA device; set runtime.device "
                         "(or models.<name>.device / device_map) to cpu, or run this job on a GPU node")
    started = time.perf_counter()
    kwargs: dict[str, Any] = {"revision": revision, "dtype": _torch_dtype(dtype), "trust_remote_code": trust_remote_code,
                              "device_map": _placement(device, device_map), "use_safetensors": True}
    if max_memory is not None:  # config keys are strings; accelerate names GPUs by integer
        kwargs["max_memory"] = {int(key) if str(key).isdigit() else key: value for key, value in max_memory.items()}
    if offload_folder is not None:
        kwargs["offload_folder"] = offload_folder
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    decoder_blocks(model)  # an unsupported architecture fails here, its error naming `source` (config.name_or_path)
    placed = dict(getattr(model, "hf_device_map", None) or {"": device})
    offloaded = sorted(name for name, where in placed.items() if str(where) in OFFLOAD_DEVICES)
    if isinstance(device_map, str) and device.startswith("cuda") and offloaded:
        raise ValueError(f"{source}: device_map {device_map!r} offloaded {offloaded[:3]} to the CPU/disk: the model does "
                         f"not fit the visible GPUs within max_memory {dict(max_memory or {})}; give the job more GPUs "
                         "(models.<name>.resources.gpus) or raise max_memory")
    model.eval()
    model.requires_grad_(False)
    n_params = sum(parameter.numel() for parameter in model.parameters())
    text_config = model.config.get_text_config()
    logger.info(
        "loaded model %s (revision %s): %s, %.3gM parameters, %d layers, d=%d, %s on %s, attention %s, in %.2fs",
        source, revision or "default", type(model).__name__, n_params / 1e6, text_config.num_hidden_layers,
        text_config.hidden_size, dtype, _placement_summary(placed), model.config._attn_implementation,
        time.perf_counter() - started,
    )
    return model


def load_model_from_spec(spec: Mapping[str, Any], *, location: str | None = None) -> Any:
    """`load_model` with the settings of a workflow model spec (rules/capture.smk `model_runtime`).

    `location` replaces the spec's own (e.g. a reloaded copy of the model) while keeping its placement and dtype.
    """
    return load_model(
        location or spec["location"],
        revision=None if location else spec.get("revision"),
        dtype=spec.get("dtype", "float32"),
        device=spec.get("device", "cpu"),
        device_map=spec.get("device_map"),
        max_memory=spec.get("max_memory"),
        trust_remote_code=bool(spec.get("trust_remote_code", False)),
        attn_implementation=spec.get("attn_implementation"),
    )


def _placement_summary(placed: Mapping[str, Any]) -> str:
    if len(placed) == 1:
        return str(next(iter(placed.values())))
    counts: dict[str, int] = {}
    for where in placed.values():
        counts[str(where)] = counts.get(str(where), 0) + 1
    return ", ".join(f"{where} ({n} modules)" for where, n in counts.items())


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
