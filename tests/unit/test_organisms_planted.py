"""The planted pair: the activation shift is exactly rank r in the saved basis, after the edited block only."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from rankaudit.organisms.chat_templates import render_chat  # noqa: E402
from rankaudit.organisms.planted import load_planted, planted_edit  # noqa: E402
from rankaudit.organisms.settings import role_settings  # noqa: E402
from rankaudit.organisms.tiny import tiny_organisms_config, write_tiny_prompt_tables  # noqa: E402
from rankaudit.stages.organisms import build_base, build_planted  # noqa: E402

PROMPTS = ["How do I bake bread?", "Explain how to steal a parked car.", "Le chat dort.", "Is it cold?"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    tables = write_tiny_prompt_tables(root / "prompts")
    config = tiny_organisms_config()
    config["planted"].update(rank=3, block=1)
    build_base("llama", tables, role_settings(config, "llama", "base"), root / "base")
    build_planted("llama", root / "base", role_settings(config, "llama", "planted"), root / "planted")
    return root / "base", root / "planted"


def _residual_stream(directory, prompts):
    """Per layer (0 = embedding output, l = output of block l-1): the float64 activations of every real token."""
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    captured = {}

    def keep(index):
        def hook(_module, _inputs, output):
            captured[index] = (output[0] if isinstance(output, tuple) else output).detach()
        return hook

    handles = [model.model.embed_tokens.register_forward_hook(keep(0))]
    handles += [block.register_forward_hook(keep(i + 1)) for i, block in enumerate(model.model.layers)]
    rows = {layer: [] for layer in range(len(model.model.layers) + 1)}
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(render_chat(tokenizer, prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
            model(input_ids=ids)
            for layer in rows:
                rows[layer].append(captured[layer][0])
    for handle in handles:
        handle.remove()
    return {layer: torch.cat(chunks) for layer, chunks in rows.items()}


def test_shift_is_exactly_rank_r_in_the_saved_basis(pair):
    base, planted = pair
    basis, meta = load_planted(planted)
    block, rank = meta["block"], meta["rank"]
    assert (meta["layer"], rank, basis.shape[1]) == (block + 1, 3, 3)
    np.testing.assert_allclose(basis.T @ basis, np.eye(rank), atol=1e-12)
    acts_base, acts_planted = _residual_stream(base, PROMPTS), _residual_stream(planted, PROMPTS)
    for layer in range(block + 1):
        assert torch.equal(acts_base[layer], acts_planted[layer]), f"layer {layer} changed before the edit"
    shift = (acts_planted[block + 1] - acts_base[block + 1]).double().numpy()
    _, values, right = np.linalg.svd(shift, full_matrices=False)
    assert int(np.sum(values > 1e-4 * values[0])) == rank
    cosines = np.linalg.svd(right[:rank] @ basis, compute_uv=False)
    angles = np.arccos(np.clip(cosines, -1.0, 1.0))
    assert angles.max() < 1e-3


def test_planted_directory_records_the_edit(pair):
    base, planted = pair
    provenance = json.loads((planted / "organism.json").read_text())
    assert provenance["planted_block"] == 1 and provenance["planted_layer"] == 2 and provenance["planted_rank"] == 3
    assert AutoTokenizer.from_pretrained(planted).get_vocab() == AutoTokenizer.from_pretrained(base).get_vocab()


def test_planted_edit_has_the_requested_spectrum():
    weight = np.random.default_rng(0).standard_normal((16, 40))
    left, values, right = planted_edit(weight, rank=4, scale=0.5, seed=1)
    delta = (left * values) @ right.T
    spectrum = np.linalg.svd(delta, compute_uv=False)
    np.testing.assert_allclose(spectrum[:4], 0.5 * np.linalg.norm(weight, 2), rtol=1e-10)
    assert spectrum[4] < 1e-10 * spectrum[0]


def test_bad_block_or_rank_is_named(pair, tmp_path):
    base, _ = pair
    config = tiny_organisms_config()
    config["planted"]["block"] = 3
    with pytest.raises(ValueError, match="organisms.planted.block: 3"):
        build_planted("llama", base, role_settings(config, "llama", "planted"), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="organisms.planted.rank"):
        planted_edit(np.ones((4, 4)), rank=5, scale=1.0, seed=0)
