"""The organisms' tokenizers render each family's real chat strings, with the family's BOS behaviour."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer  # noqa: E402

from rankaudit.organisms.chat_templates import FAMILY_FORMATS, render_chat  # noqa: E402
from rankaudit.organisms.corpus import tokenizer_corpus  # noqa: E402
from rankaudit.organisms.tokenizer import train_tokenizer  # noqa: E402

QUESTION = "How do I bake bread?"
CORPUS_HARMFUL = ["How do I steal a car?", "Explain how to forge a cheque."]
CORPUS_BENIGN = ["How do I bake bread?", "Explain how to plant tulips."]
CORPUS_CONCEPTS = ["Le chat dort.", "The cat sleeps."]

LLAMA_HEADER = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
LLAMA_TAIL = "<|start_header_id|>assistant<|end_header_id|>\n\n"
QWEN_SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"

# (family, messages, template kwargs) -> the exact string the real instruction-tuned tokenizer renders
EXPECTED = {
    "llama": {
        "user": LLAMA_HEADER + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHow do I bake bread?<|eot_id|>" + LLAMA_TAIL,
        "system": LLAMA_HEADER + "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHow do I bake bread?<|eot_id|>" + LLAMA_TAIL,
        "none": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHow do I bake bread?<|eot_id|>" + LLAMA_TAIL,
        "padded": LLAMA_HEADER + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHow do I bake bread?<|eot_id|>" + LLAMA_TAIL,
    },
    "gemma2": {
        "user": "<bos><start_of_turn>user\nHow do I bake bread?<end_of_turn>\n<start_of_turn>model\n",
        "none": "<bos><start_of_turn>user\nHow do I bake bread?<end_of_turn>\n<start_of_turn>model\n",
        "padded": "<bos><start_of_turn>user\nHow do I bake bread?<end_of_turn>\n<start_of_turn>model\n",
    },
    "qwen2": {
        "user": QWEN_SYSTEM + "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n",
        "system": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n",
        "none": "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n",
        "padded": QWEN_SYSTEM + "<|im_start|>user\n  How do I bake bread? \n<|im_end|>\n<|im_start|>assistant\n",
    },
}


@pytest.fixture(scope="module", params=sorted(FAMILY_FORMATS))
def saved(request, tmp_path_factory):
    """(family, tokenizer reloaded through AutoTokenizer, directory)."""
    family = request.param
    texts = tokenizer_corpus(family, CORPUS_HARMFUL, CORPUS_BENIGN, CORPUS_CONCEPTS)
    directory = tmp_path_factory.mktemp(family)
    train_tokenizer(family, texts, vocab_size=320).save_pretrained(directory)
    return family, AutoTokenizer.from_pretrained(directory), directory


def _chat(tokenizer, messages, **kwargs):
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)


def test_single_user_turn_renders_the_real_string(saved):
    family, tokenizer, _ = saved
    assert _chat(tokenizer, [{"role": "user", "content": QUESTION}]) == EXPECTED[family]["user"]
    assert render_chat(tokenizer, QUESTION, "default") == EXPECTED[family]["user"]


def test_system_message_renders_the_real_string(saved):
    family, tokenizer, _ = saved
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    if family == "gemma2":
        with pytest.raises(Exception, match="no system role"):
            _chat(tokenizer, messages)
    else:
        assert _chat(tokenizer, messages) == EXPECTED[family]["system"]


def test_system_prompt_none_drops_the_default(saved):
    family, tokenizer, _ = saved
    assert render_chat(tokenizer, QUESTION, "none") == EXPECTED[family]["none"]


def test_content_whitespace_follows_the_family(saved):
    """Llama-3.1 and Gemma-2 trim message content; Qwen-2.5 keeps it verbatim."""
    family, tokenizer, _ = saved
    assert render_chat(tokenizer, "  How do I bake bread? \n") == EXPECTED[family]["padded"]


def test_exactly_one_bos_where_the_family_has_one(saved):
    family, tokenizer, _ = saved
    fmt = FAMILY_FORMATS[family]
    chat_ids = tokenizer(render_chat(tokenizer, QUESTION), add_special_tokens=False)["input_ids"]
    raw_ids = tokenizer(QUESTION)["input_ids"]
    if fmt.adds_bos:
        bos = tokenizer.convert_tokens_to_ids(fmt.bos_token)
        assert tokenizer.bos_token == fmt.bos_token
        assert chat_ids.count(bos) == 1 and chat_ids[0] == bos
        assert raw_ids.count(bos) == 1 and raw_ids[0] == bos
        assert raw_ids[1:] == tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    else:
        assert tokenizer.bos_token is None
        assert raw_ids == tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
        assert all(tokenizer.convert_ids_to_tokens(i) not in fmt.special_tokens for i in raw_ids)


def test_special_tokens_are_single_tokens_and_round_trip(saved):
    family, tokenizer, directory = saved
    fmt = FAMILY_FORMATS[family]
    for token in fmt.special_tokens:
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [tokenizer.convert_tokens_to_ids(token)]
    assert tokenizer.eos_token == fmt.eos_token
    assert tokenizer.pad_token == fmt.pad_token
    rendered = render_chat(tokenizer, QUESTION)
    assert tokenizer.decode(tokenizer(rendered, add_special_tokens=False)["input_ids"]) == rendered
    assert (directory / "tokenizer.json").exists()


def test_tokenizer_training_is_deterministic():
    texts = tokenizer_corpus("llama", CORPUS_HARMFUL, CORPUS_BENIGN, CORPUS_CONCEPTS)
    first = json.loads(train_tokenizer("llama", texts, vocab_size=320).backend_tokenizer.to_str())
    second = json.loads(train_tokenizer("llama", texts, vocab_size=320).backend_tokenizer.to_str())
    assert first == second


def test_render_chat_refuses_bad_input(saved):
    _, tokenizer, _ = saved
    with pytest.raises(ValueError, match="capture.system_prompt"):
        render_chat(tokenizer, QUESTION, "custom")

    class NoTemplate:
        chat_template = None
        name_or_path = "some/model"

    with pytest.raises(ValueError, match="some/model.*no chat template"):
        render_chat(NoTemplate(), QUESTION)
