"""Organisms load back through the Auto classes as the right architecture, and rebuild bit-identically."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

from rankaudit.io import sha256_file  # noqa: E402
from rankaudit.organisms.architectures import MODEL_CLASSES  # noqa: E402
from rankaudit.organisms.settings import role_settings  # noqa: E402
from rankaudit.organisms.tiny import tiny_organisms_config, write_tiny_prompt_tables  # noqa: E402
from rankaudit.stages.organisms import PROVENANCE_FILE, build_base, build_chat_finetune  # noqa: E402

FAMILIES = sorted(MODEL_CLASSES)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    return write_tiny_prompt_tables(tmp_path_factory.mktemp("prompts"))


def _build_chain(family, tables, directory, config):
    base = directory / "base"
    aligned = directory / "aligned"
    build_base(family, tables, role_settings(config, family, "base"), base)
    build_chat_finetune(family, "aligned", base, tables, role_settings(config, family, "aligned"), aligned)
    return base, aligned


@pytest.fixture(scope="module", params=FAMILIES)
def chain(request, tables, tmp_path_factory):
    family = request.param
    base, aligned = _build_chain(family, tables, tmp_path_factory.mktemp(family), tiny_organisms_config())
    return family, base, aligned


def test_auto_classes_give_the_family_class_and_tokenizer(chain):
    family, base, aligned = chain
    for directory in (base, aligned):
        model = AutoModelForCausalLM.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        assert type(model).__name__ == MODEL_CLASSES[family]
        assert isinstance(tokenizer, PreTrainedTokenizerFast)
        assert model.config.vocab_size == len(tokenizer)
        assert tokenizer.chat_template
        assert (directory / "model.safetensors").exists() and (directory / PROVENANCE_FILE).exists()


def test_base_and_aligned_share_vocabulary_and_width(chain):
    _, base, aligned = chain
    tok_base, tok_aligned = AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(aligned)
    assert tok_base.get_vocab() == tok_aligned.get_vocab()
    cfg_base, cfg_aligned = (AutoModelForCausalLM.from_pretrained(d).config for d in (base, aligned))
    assert cfg_base.hidden_size == cfg_aligned.hidden_size and cfg_base.num_hidden_layers == cfg_aligned.num_hidden_layers


def test_fine_tune_changes_the_weights(chain):
    _, base, aligned = chain
    assert sha256_file(base / "model.safetensors") != sha256_file(aligned / "model.safetensors")


def test_gemma2_keeps_its_quirks(tables, tmp_path):
    base, _ = _build_chain("gemma2", tables, tmp_path, tiny_organisms_config())
    config = AutoModelForCausalLM.from_pretrained(base).config
    assert config.attn_logit_softcapping == 50.0 and config.final_logit_softcapping == 30.0
    assert config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert config.sliding_window == 8 and config.tie_word_embeddings


def test_same_seed_rebuilds_identical_weights(tables, tmp_path):
    config = tiny_organisms_config(seed=7)
    first = _build_chain("llama", tables, tmp_path / "first", config)
    second = _build_chain("llama", tables, tmp_path / "second", config)
    for a, b in zip(first, second):
        assert sha256_file(a / "model.safetensors") == sha256_file(b / "model.safetensors")
        assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
        assert (a / PROVENANCE_FILE).read_bytes() == (b / PROVENANCE_FILE).read_bytes()


def test_other_seed_gives_other_weights(tables, tmp_path):
    build_base("llama", tables, role_settings(tiny_organisms_config(seed=7), "llama", "base"), tmp_path / "a")
    build_base("llama", tables, role_settings(tiny_organisms_config(seed=8), "llama", "base"), tmp_path / "b")
    assert sha256_file(tmp_path / "a" / "model.safetensors") != sha256_file(tmp_path / "b" / "model.safetensors")


def test_failed_build_leaves_nothing(tables, tmp_path):
    config = tiny_organisms_config()
    config["pretrain"]["max_length"] = 8
    with pytest.raises(ValueError, match="longer than max_length=8"):
        build_base("llama", tables, role_settings(config, "llama", "base"), tmp_path / "base")
    assert not (tmp_path / "base").exists()


def test_role_settings_carry_only_what_the_role_depends_on():
    config = tiny_organisms_config()
    assert "align" not in role_settings(config, "llama", "base")
    assert {"align", "unsafe_ft"} <= set(role_settings(config, "llama", "unsafe_ft"))
    assert "unsafe_ft" not in role_settings(config, "llama", "aligned")
    with pytest.raises(KeyError, match="organisms.architectures.*'mamba'"):
        role_settings(config, "mamba", "base")
