"""Raw and chat rendering: one BOS, the system-prompt choice, the template suffix and the read positions."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from rankaudit.formats import ChatRenderer, encode_prompts, family_uses_bos, special_tokens_in

INSTRUCTIONS = ["How do I bake bread?", "  Write a poem about the sea.  ", "Hi"]
BOS_FAMILIES = ("llama", "gemma2")


def _fresh_tokenizer(family):
    return AutoTokenizer.from_pretrained(family.path)


def test_bos_convention_is_detected_per_family(tiny_families):
    assert family_uses_bos(tiny_families["llama"].tokenizer)
    assert family_uses_bos(tiny_families["gemma2"].tokenizer)
    assert not family_uses_bos(tiny_families["qwen2"].tokenizer)


def test_raw_format_is_one_bos_then_the_instruction(tiny_family):
    tokenizer = tiny_family.tokenizer
    encoded = encode_prompts(tokenizer, INSTRUCTIONS, "raw")
    for record, instruction in zip(encoded.records, INSTRUCTIONS):
        plain = tokenizer(instruction, add_special_tokens=False)["input_ids"]
        if tiny_family.name in BOS_FAMILIES:
            assert list(record.token_ids) == [tokenizer.bos_token_id] + plain
        else:
            assert list(record.token_ids) == plain
        assert record.rendered == instruction
    assert encoded.post_instruction_len == 0 and "post_instruction" not in encoded.records[0].read_positions


def test_chat_format_has_exactly_one_bos_where_encoding_it_naively_gives_two(tiny_family):
    tokenizer = tiny_family.tokenizer
    encoded = encode_prompts(tokenizer, INSTRUCTIONS, "chat")
    for record in encoded.records:
        bos_count = sum(token == tokenizer.bos_token_id for token in record.token_ids)
        naive = tokenizer(record.rendered, add_special_tokens=True)["input_ids"]
        naive_count = sum(token == tokenizer.bos_token_id for token in naive)
        if tiny_family.name in BOS_FAMILIES:
            assert bos_count == 1 and record.token_ids[0] == tokenizer.bos_token_id
            assert naive_count == 2  # the paper's defect, which add_special_tokens=False avoids
        else:
            assert tokenizer.bos_token_id is None
        assert list(record.token_ids) == tokenizer(record.rendered, add_special_tokens=False)["input_ids"]


def test_a_template_that_writes_two_bos_is_refused_naming_the_prompt(tiny_families):
    tokenizer = _fresh_tokenizer(tiny_families["llama"])
    tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    with pytest.raises(ValueError, match=r"prompt 0 \('How do I bake bread\?'\).*duplicated leading BOS.*2 BOS"):
        encode_prompts(tokenizer, INSTRUCTIONS, "chat")


def test_a_bos_family_template_without_the_bos_is_refused(tiny_families):
    tokenizer = _fresh_tokenizer(tiny_families["llama"])
    tokenizer.chat_template = tokenizer.chat_template.replace("{{- bos_token }}", "")
    with pytest.raises(ValueError, match=r"prompt 0 .*no BOS \(id \d+\) at position 0"):
        encode_prompts(tokenizer, INSTRUCTIONS, "chat")


def _chatml_with_im_start_bos(tiny_families):
    """SmolLM2's convention: a ChatML tokenizer that declares `<|im_start|>` its BOS but never adds it itself."""
    tokenizer = _fresh_tokenizer(tiny_families["qwen2"])
    tokenizer.bos_token = "<|im_start|>"
    return tokenizer


def test_a_bos_the_template_uses_inside_the_prompt_is_accepted(tiny_families):
    tokenizer = _chatml_with_im_start_bos(tiny_families)
    bos_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.bos_token_id == bos_id and not family_uses_bos(tokenizer)
    chat = encode_prompts(tokenizer, INSTRUCTIONS, "chat")
    for record in chat.records:
        assert record.token_ids.count(bos_id) == 3  # system, user and assistant turns each open with it
        assert record.token_ids[0] == bos_id and record.token_ids[1] != bos_id
        assert list(record.token_ids) == tokenizer(record.rendered, add_special_tokens=False)["input_ids"]
    assert not chat.uses_bos and chat.bos_token is None
    none = encode_prompts(tokenizer, INSTRUCTIONS, "chat", system_prompt="none")
    assert none.records[0].rendered == "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"
    assert none.removed_system_text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert [record.token_ids.count(bos_id) for record in none.records] == [2, 2, 2]
    raw = encode_prompts(tokenizer, INSTRUCTIONS, "raw")
    assert all(bos_id not in record.token_ids for record in raw.records)


def test_a_duplicated_leading_im_start_bos_is_refused(tiny_families):
    tokenizer = _chatml_with_im_start_bos(tiny_families)
    tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    with pytest.raises(ValueError, match=r"prompt 0 .*duplicated leading BOS \(id \d+ at positions 0 and 1, 4 BOS"):
        encode_prompts(tokenizer, INSTRUCTIONS, "chat")


def test_an_instruction_adding_a_bos_the_template_uses_is_refused_naming_it(tiny_families):
    tokenizer = _chatml_with_im_start_bos(tiny_families)
    with pytest.raises(ValueError, match=r"prompt 1 \('<\|im_start\|>user again'\) in format chat: holds special-token "
                                         r"text \['<\|im_start\|>'\]"):
        encode_prompts(tokenizer, ["fine", "<|im_start|>user again"], "chat")
    with pytest.raises(ValueError, match=r"prompt 0 .*format raw: holds special-token text"):
        encode_prompts(tokenizer, ["<|im_start|>user again"], "raw")
    # escaped, the instruction adds no BOS id: only the three the template writes
    escaped = encode_prompts(tokenizer, ["fine", "<|im_start|>user again"], "chat", special_token_text="escape")
    assert escaped.records[1].token_ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3


def test_an_instruction_containing_the_bos_text_is_refused_naming_it(tiny_families):
    tokenizer = tiny_families["gemma2"].tokenizer
    with pytest.raises(ValueError, match=r"prompt 1 \('<bos>again'\) in format raw: holds special-token text \['<bos>'\]"):
        encode_prompts(tokenizer, ["fine", "<bos>again"], "raw")


def test_post_instruction_suffix_is_the_template_tail_and_ends_every_prompt(tiny_families):
    expected = {
        "llama": "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "gemma2": "<end_of_turn>\n<start_of_turn>model\n",
        "qwen2": "<|im_end|>\n<|im_start|>assistant\n",
    }
    for name, family in tiny_families.items():
        encoded = encode_prompts(family.tokenizer, INSTRUCTIONS, "chat", mean_last_k=3)
        assert encoded.post_instruction_text == expected[name]
        suffix = list(encoded.post_instruction_ids)
        assert suffix == family.tokenizer(expected[name], add_special_tokens=False)["input_ids"]
        for record in encoded.records:
            length = len(record.token_ids)
            assert list(record.token_ids[-len(suffix):]) == suffix
            assert record.rendered.endswith(expected[name])
            assert record.read_positions == {
                "last": (length - 1,),
                "mean_last_k": (length - 3, length - 2, length - 1),
                "post_instruction": tuple(range(length - len(suffix), length)),
            }


def test_a_suffix_that_depends_on_the_instruction_is_refused_naming_the_prompt(tiny_families):
    tokenizer = _fresh_tokenizer(tiny_families["gemma2"])
    tokenizer.chat_template = (
        "{{ bos_token }}{% for message in messages %}<start_of_turn>user\n{{ message['content'] }}<end_of_turn>\n"
        "{% endfor %}{% if messages[-1]['content'] | length > 10 %}<start_of_turn>model\n"
        "{% else %}<start_of_turn>model\n\n{% endif %}"
    )
    with pytest.raises(ValueError, match=r"prompt 2 \('Hi'\).*template suffix"):
        encode_prompts(tokenizer, INSTRUCTIONS, "chat")


def test_system_prompt_none_removes_the_default_system_turn_per_family(tiny_families):
    llama = encode_prompts(tiny_families["llama"].tokenizer, INSTRUCTIONS, "chat", system_prompt="none")
    assert llama.records[0].rendered == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHow do I bake bread?"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "Cutting Knowledge Date" in llama.removed_system_text
    assert llama.system_prompt == "none" and "cut out" in llama.system_rule

    qwen = encode_prompts(tiny_families["qwen2"].tokenizer, INSTRUCTIONS, "chat", system_prompt="none")
    assert qwen.records[0].rendered == (
        "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n")
    assert qwen.removed_system_text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"

    gemma_none = encode_prompts(tiny_families["gemma2"].tokenizer, INSTRUCTIONS, "chat", system_prompt="none")
    gemma_default = encode_prompts(tiny_families["gemma2"].tokenizer, INSTRUCTIONS, "chat")
    assert [r.rendered for r in gemma_none.records] == [r.rendered for r in gemma_default.records]
    assert gemma_none.removed_system_text == "" and "no default system turn" in gemma_none.system_rule


def test_system_prompt_default_keeps_what_the_template_inserts(tiny_families):
    llama = encode_prompts(tiny_families["llama"].tokenizer, INSTRUCTIONS, "chat")
    assert "Today Date: 26 Jul 2024" in llama.records[0].rendered
    qwen = encode_prompts(tiny_families["qwen2"].tokenizer, INSTRUCTIONS, "chat")
    assert qwen.records[0].rendered.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert qwen.metadata()["system_prompt"] == "default"


def test_stripping_agrees_with_the_default_rendering_after_the_system_turn(tiny_families):
    for name in ("llama", "qwen2"):
        tokenizer = tiny_families[name].tokenizer
        default, none = ChatRenderer(tokenizer, "default"), ChatRenderer(tokenizer, "none")
        prefix = tokenizer.bos_token if name == "llama" else ""
        for instruction in INSTRUCTIONS:
            stripped = none.render(instruction)
            assert stripped.startswith(prefix)
            assert default.render(instruction) == prefix + none.removed_system_text + stripped[len(prefix):]


def test_metadata_records_the_rendering_choices(tiny_families):
    encoded = encode_prompts(tiny_families["llama"].tokenizer, INSTRUCTIONS, "chat", mean_last_k=2)
    meta = encoded.metadata()
    assert meta["format"] == "chat" and meta["uses_bos"] and meta["bos_token"] == "<|begin_of_text|>"
    assert meta["post_instruction_ids"] == list(encoded.post_instruction_ids) and meta["mean_last_k"] == 2
    assert len(meta["chat_template_sha256"]) == 64


def test_bad_arguments_are_refused_naming_what_is_wrong(tiny_families):
    tokenizer = tiny_families["llama"].tokenizer
    with pytest.raises(ValueError, match="format 'json'"):
        encode_prompts(tokenizer, INSTRUCTIONS, "json")
    with pytest.raises(ValueError, match=r"prompt 1 \('   '\)"):
        encode_prompts(tokenizer, ["ok", "   "], "raw")
    with pytest.raises(ValueError, match="system_prompt 'short'"):
        encode_prompts(tokenizer, INSTRUCTIONS, "chat", system_prompt="short")
    untemplated = _fresh_tokenizer(tiny_families["llama"])
    untemplated.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompts(untemplated, INSTRUCTIONS, "chat")


def test_special_tokens_in_lists_the_template_tokens(tiny_families):
    family = tiny_families["qwen2"]
    encoded = encode_prompts(family.tokenizer, INSTRUCTIONS, "chat")
    assert special_tokens_in(family.tokenizer, encoded.records[0].token_ids) == ["<|im_start|>", "<|im_end|>"]
