"""Loading through the Auto classes, the pre-load pair and template checks, and the untrained-token warning."""

from __future__ import annotations

import copy
import inspect
import logging

import pytest
import torch

from rankaudit.formats import encode_prompts, special_tokens_in
from rankaudit.models import (
    check_pair,
    check_same_tokenization,
    load_config,
    load_model,
    load_tokenizer,
    require_chat_template,
    special_token_norms,
    untrained_special_tokens,
)


def test_load_model_gives_the_saved_weights_in_eval_mode_without_grad(tiny_families, caplog):
    family = tiny_families["qwen2"]
    with caplog.at_level(logging.INFO, logger="rankaudit.models"):
        model = load_model(str(family.path))
    assert not model.training
    assert not any(parameter.requires_grad for parameter in model.parameters())
    saved = family.model.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
    assert any(str(family.path) in record.message and "Qwen2ForCausalLM" in record.message and "s" in record.message
               for record in caplog.records)


def test_load_model_honours_dtype_and_refuses_unknown_ones(tiny_families):
    path = str(tiny_families["llama"].path)
    model = load_model(path, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype 'float8'"):
        load_model(path, dtype="float8")


def test_remote_code_is_off_by_default():
    for function in (load_model, load_tokenizer, load_config):
        assert inspect.signature(function).parameters["trust_remote_code"].default is False


def test_load_tokenizer_round_trips_ids_and_template(tiny_families):
    family = tiny_families["gemma2"]
    tokenizer = load_tokenizer(str(family.path))
    text = "How do I bake bread?"
    assert tokenizer(text)["input_ids"] == family.tokenizer(text)["input_ids"]
    assert tokenizer.chat_template == family.tokenizer.chat_template


def test_check_pair_accepts_a_matching_pair_from_configs_alone(tiny_families, tiny_family_factory):
    base = tiny_families["llama"]
    aligned = tiny_family_factory("llama", seed=1)
    assert not torch.equal(base.model.lm_head.weight, aligned.model.lm_head.weight)
    check_pair(load_config(str(base.path)), load_config(str(aligned.path)), ("llama_base", "llama_aligned"))
    check_pair(base.model, load_config(str(aligned.path)), ("llama_base", "llama_aligned"))


def test_check_pair_names_both_models_and_every_mismatch(tiny_families):
    llama = load_config(str(tiny_families["llama"].path))
    wider = copy.deepcopy(llama)
    wider.hidden_size = 128
    wider.vocab_size = 512
    with pytest.raises(ValueError, match=r"'llama_base' and 'wide_aligned'.*vocab_size.*hidden_size") as error:
        check_pair(llama, wider, ("llama_base", "wide_aligned"))
    assert "llama_base has 64, wide_aligned has 128" in str(error.value)
    with pytest.raises(ValueError, match="num_hidden_layers: llama has 3, gemma2 has 4"):
        check_pair(llama, load_config(str(tiny_families["gemma2"].path)), ("llama", "gemma2"))


def test_tokenizers_of_a_pair_must_encode_prompts_identically(tiny_families):
    texts = ["How do I bake bread?", "Write a poem."]
    llama = tiny_families["llama"].tokenizer
    check_same_tokenization(llama, load_tokenizer(str(tiny_families["llama"].path)), texts, ("base", "aligned"))
    with pytest.raises(ValueError, match=r"'base' and 'other' tokenize 'How do I bake bread\?' differently"):
        check_same_tokenization(llama, tiny_families["qwen2"].tokenizer, texts, ("base", "other"))


def test_require_chat_template_names_the_model(tiny_families):
    require_chat_template(tiny_families["llama"].tokenizer, "llama_aligned")
    bare = load_tokenizer(str(tiny_families["llama"].path))
    bare.chat_template = None
    with pytest.raises(ValueError, match="model 'llama_base'.*no chat template"):
        require_chat_template(bare, "llama_base")


def test_untrained_chat_tokens_are_flagged_with_numbers(tiny_families):
    family = tiny_families["llama"]
    encoded = encode_prompts(family.tokenizer, ["How do I bake bread?"], "chat")
    template_tokens = special_tokens_in(family.tokenizer, encoded.records[0].token_ids)
    assert "<|start_header_id|>" in template_tokens
    assert untrained_special_tokens(family.model, family.tokenizer, template_tokens, name="llama_aligned") == []

    base = copy.deepcopy(family.model)
    shrunk = ["<|start_header_id|>", "<|end_header_id|>"]
    with torch.no_grad():
        for token in shrunk:
            base.get_input_embeddings().weight[family.tokenizer.convert_tokens_to_ids(token)] *= 1e-3
    with pytest.warns(UserWarning, match=r"llama_base: chat special tokens look untrained.*<\|start_header_id\|>"):
        flagged = untrained_special_tokens(base, family.tokenizer, template_tokens, name="llama_base")
    assert [token for token, _, _ in flagged] == shrunk
    norms = {item.token: item for item in special_token_norms(base, family.tokenizer, template_tokens)}
    for token, norm, median in flagged:
        assert norm == pytest.approx(norms[token].norm) and norm < 0.1 * median
        assert median == pytest.approx(float(base.get_input_embeddings().weight.detach().norm(dim=1).median()))


def test_special_token_norms_refuses_a_multi_token_string(tiny_families):
    family = tiny_families["llama"]
    with pytest.raises(ValueError, match="'not one token' is not a single token"):
        special_token_norms(family.model, family.tokenizer, ["not one token"])
