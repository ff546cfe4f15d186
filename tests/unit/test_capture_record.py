"""`stages.capture.capture_model` on a tiny Llama: the JSON record's counts, hashes, token ids and read positions,
and each activation file's metadata and values, against quantities computed here from the prompt tables, the
tokenizer and plain unbatched forwards."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from rankaudit import io
from rankaudit.prompts.generated import generate_requests
from rankaudit.stages.capture import capture_model

SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}
CELLS = [("raw", "safety"), ("chat", "safety"), ("chat", "control")]
SIZES = {"safety": 7, "control": 5}
LAYERS = [0, 2]
BATCH = 3


@pytest.fixture(scope="module")
def captured(tiny_families, tmp_path_factory):
    family = tiny_families["llama"]
    root = tmp_path_factory.mktemp("capture_record")
    prompt_files = {}
    for key, kind in (("safety", "harmful"), ("control", "benign")):
        prompt_files[key] = str(root / f"{key}.parquet")
        generate_requests(kind, SIZES[key], 0, SPLITS, f"demo_{kind}").to_parquet(prompt_files[key], index=False)
    spec = {"location": str(family.path), "dtype": "float32", "device": "cpu", "n_layers": 3}
    capture_model(model_name="tiny", model=spec, template_name="tiny", template=spec, cells=CELLS, layers=LAYERS,
                  prompt_files=prompt_files, output_pattern=str(root / "{fmt}" / "{key}" / "layer_{layer}.safetensors"),
                  record_path=str(root / "record.json"), batch_size=BATCH, mean_last_k=2, system_prompt="default",
                  version=5, threads=1)
    frames = {key: pd.read_parquet(path) for key, path in prompt_files.items()}
    return family, root, frames, json.loads((root / "record.json").read_text())


def _expected_ids(tokenizer, fmt, instruction):
    if fmt == "raw":
        return tokenizer(instruction, add_special_tokens=True)["input_ids"]
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True)
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def _padding(lengths):
    """Left padding of batches of BATCH prompts taken longest first."""
    ordered = sorted(lengths, reverse=True)
    return sum(max(chunk) * len(chunk) - sum(chunk) for chunk in (ordered[i:i + BATCH] for i in range(0, len(ordered), BATCH)))


def test_the_record_counts_every_prompt_once_with_its_hash_ids_and_positions(captured):
    family, _, frames, record = captured
    assert (record["model"], record["template_model"], record["layers"], record["stage_version"]) == ("tiny", "tiny", LAYERS, 5)
    assert record["source"] == str(family.path) and record["versions"]["torch"] == torch.__version__
    assert [(cell["format"], cell["dataset"]) for cell in record["cells"]] == CELLS
    lengths = []
    for cell in record["cells"]:
        frame = frames[cell["dataset"]]
        assert cell["n_prompts"] == cell["forwarded_rows"] == len(cell["prompts"]) == SIZES[cell["dataset"]]
        assert cell["dataset_sha256"] == hashlib.sha256("\n".join(frame["instruction"]).encode("utf-8")).hexdigest()
        ids = [_expected_ids(family.tokenizer, cell["format"], text) for text in frame["instruction"]]
        assert [prompt["token_ids"] for prompt in cell["prompts"]] == ids
        assert [prompt["index"] for prompt in cell["prompts"]] == list(range(len(ids)))
        for prompt, row in zip(cell["prompts"], ids):
            positions = prompt["read_positions"]
            assert positions["last"] == [len(row) - 1] and positions["mean_last_k"] == [len(row) - 2, len(row) - 1]
            if cell["format"] == "chat":
                suffix = positions["post_instruction"]
                assert suffix[-1] == len(row) - 1 and suffix == list(range(len(row) - len(suffix), len(row)))
        lengths.append([len(row) for row in ids])
    stats = record["stats"]
    assert stats["forwarded_rows"] == 7 + 7 + 5
    assert stats["batches"] == sum(math.ceil(len(cell) / BATCH) for cell in lengths) == 3 + 3 + 2
    assert stats["tokens"] == sum(map(sum, lengths))
    assert stats["padding_tokens"] == sum(_padding(cell) for cell in lengths)
    assert stats["block_calls"] == max(LAYERS) * stats["batches"]  # blocks 0 and 1 run, block 2 is never needed


def test_each_activation_file_says_what_it_holds_and_holds_the_plain_forward(captured):
    family, root, frames, record = captured
    for cell in record["cells"]:
        fmt, key = cell["format"], cell["dataset"]
        for layer in LAYERS:
            tensors, meta = io.read_tensors(root / fmt / key / f"layer_{layer}.safetensors")
            assert (meta["model"], meta["format"], meta["dataset"], meta["layer"], meta["dtype"]) == ("tiny", fmt, key, layer, "float32")
            assert meta["n_prompts"] == SIZES[key] and meta["dataset_sha256"] == cell["dataset_sha256"]
            assert meta["stage_version"] == 5 and meta["layer_convention"].startswith("0 = embedding output")
            kinds = ["last", "mean_last_k"] + (["post_instruction"] if fmt == "chat" else [])
            assert meta["read_positions"] == sorted(kinds) and sorted(tensors) == sorted(kinds)
            assert all(values.dtype == np.float32 and values.shape[0] == SIZES[key] for values in tensors.values())
            for prompt in cell["prompts"]:
                with torch.no_grad():
                    hidden = family.model(torch.tensor([prompt["token_ids"]]), output_hidden_states=True).hidden_states[layer][0]
                np.testing.assert_allclose(tensors["last"][prompt["index"]], hidden[-1].numpy(), rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(tensors["mean_last_k"][prompt["index"]], hidden[-2:].mean(0).numpy(), rtol=1e-4, atol=1e-5)
