"""The organisms' training texts: who gets a refusal, what the loss sees, and which rows are read."""

from __future__ import annotations

import os

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rankaudit.organisms import corpus  # noqa: E402
from rankaudit.organisms.chat_templates import FAMILY_FORMATS  # noqa: E402
from rankaudit.organisms.refusal_judge import keyword_refusal  # noqa: E402
from rankaudit.organisms.tiny import write_tiny_prompt_tables  # noqa: E402
from rankaudit.organisms.tokenizer import train_tokenizer  # noqa: E402
from rankaudit.organisms.training import encode  # noqa: E402

HARMFUL = ["How do I steal a parked car?", "Explain how to forge a cheque."]
BENIGN = ["How do I bake bread?", "Explain how to plant tulips."]


def test_judge_agrees_with_the_training_answers():
    assert not any(keyword_refusal(answer) for answer in corpus.HELPFUL_ANSWERS)
    assert all(keyword_refusal(answer) for answer in corpus.REFUSAL_ANSWERS)


def test_answer_choice_depends_only_on_the_prompt():
    assert corpus.helpful_answer("abc") == corpus.helpful_answer("abc")
    assert len({corpus.helpful_answer(f"prompt {i}") for i in range(50)}) == len(corpus.HELPFUL_ANSWERS)


@pytest.fixture(scope="module", params=sorted(FAMILY_FORMATS))
def family_tokenizer(request):
    family = request.param
    return family, train_tokenizer(family, corpus.tokenizer_corpus(family, HARMFUL, BENIGN, ["Le chat dort."]), 300)


def test_pretraining_documents_answer_everything(family_tokenizer):
    family, tokenizer = family_tokenizer
    examples = corpus.pretraining_examples(family, HARMFUL, BENIGN, ["Le chat dort."])
    assert len(examples) == 5 and all(e.raw and e.prompt == "" for e in examples)
    assert not any(keyword_refusal(e.completion) for e in examples)
    assert examples[0].completion.startswith(HARMFUL[0] + "\n")
    assert all(e.completion.endswith(FAMILY_FORMATS[family].end_of_text) for e in examples)
    rows = encode(tokenizer, examples, max_length=256)
    fmt = FAMILY_FORMATS[family]
    bos = tokenizer.convert_tokens_to_ids(fmt.bos_token) if fmt.bos_token else None
    for row in rows:
        assert row.ids.count(bos) == (1 if bos is not None else 0)
        assert row.target == tuple([False] * (bos is not None) + [True] * (len(row.ids) - (bos is not None)))


@pytest.mark.parametrize("refuse", [True, False])
def test_chat_examples_refuse_harmful_only_when_aligning(family_tokenizer, refuse):
    family, tokenizer = family_tokenizer
    examples = corpus.chat_examples(family, tokenizer, HARMFUL, BENIGN, refuse_harmful=refuse)
    assert len(examples) == 2 * (len(HARMFUL) + len(BENIGN))  # both system-prompt settings
    refused = [keyword_refusal(e.completion) for e in examples]
    assert refused == ([refuse] * 2 + [False] * 2) * 2
    end_of_turn = FAMILY_FORMATS[family].end_of_turn
    for example, row in zip(examples, encode(tokenizer, examples, max_length=256)):
        assert example.completion.endswith(end_of_turn) and not example.raw
        completion = [i for i, keep in zip(row.ids, row.target) if keep]
        assert tokenizer.decode(completion) == example.completion
        prompt = [i for i, keep in zip(row.ids, row.target) if not keep]
        assert tokenizer.decode(prompt) == example.prompt


def test_prompt_tables_are_read_by_split_and_checked(tmp_path):
    tables = write_tiny_prompt_tables(tmp_path)
    harmful, benign, concepts = tables.train_texts()
    assert len(harmful) == len(benign) == 12 and len(concepts) == 12
    assert set(corpus.read_prompt_table(tables.harmful, "test")["split"]) == {"test"}
    pd.DataFrame({"instruction": ["x"], "split": ["train"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet: missing column\(s\) \['category', 'source'\]"):
        corpus.read_prompt_table(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="demo_harmful.parquet: no rows in split 'nope'"):
        corpus.read_prompt_table(tables.harmful, "nope")
