"""The precision floor end to end on a tiny random Llama whose aligned copy differs by 0.1% in every weight.

Run in bfloat16, the modification matrices of such a pair are mostly the forward's rounding (relative step 2^-8
against a 1e-3 shift): the floor capture must show it and flag the ranks. Run in float32, the same comparison is
batching round-off only (~1e-7 against 1e-3), and the workflow plans no floor job for it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rankaudit import io, precision
from rankaudit.prompts.generated import generate_requests
from rankaudit.stages.capture import capture_model
from rankaudit.stages.precision import write_precision_floor

SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}
CELLS = [(fmt, key) for fmt in ("raw", "chat") for key in ("safety", "control")]
ROLES = {"a_chat": ("aligned", "chat"), "a_raw": ("aligned", "raw"), "b_chat": ("base", "chat"), "b_raw": ("base", "raw")}
FLOOR_PROMPTS = 6
N_PROMPTS = 10


@pytest.fixture(scope="module")
def tiny_pair(tiny_family_factory, tmp_path_factory):
    """(base dir, aligned dir, prompt files): aligned = base weights x (1 + 1e-3 N(0, 1)), saved in float32."""
    base = tiny_family_factory("llama", seed=3)
    root = tmp_path_factory.mktemp("precision_pair")
    generator = torch.Generator().manual_seed(0)
    aligned = type(base.model)(base.model.config)
    aligned.load_state_dict(base.model.state_dict())
    with torch.no_grad():
        for parameter in aligned.parameters():
            parameter.mul_(1 + 1e-3 * torch.randn(parameter.shape, generator=generator))
    aligned.save_pretrained(root / "aligned")
    base.tokenizer.save_pretrained(root / "aligned")
    prompt_files = {}
    for key, kind in (("safety", "harmful"), ("control", "benign")):
        frame = generate_requests(kind, N_PROMPTS, 0, SPLITS, f"demo_{kind}")
        prompt_files[key] = str(root / f"{key}.parquet")
        frame.to_parquet(prompt_files[key], index=False)
    return str(base.path), str(root / "aligned"), prompt_files


def _capture(tiny_pair, out, dtype, **floor):
    """Both models of the pair in `dtype` (or, with `floor`, their first prompts again in float32)."""
    base, aligned, prompt_files = tiny_pair
    template = {"location": aligned, "dtype": dtype, "device": "cpu", "n_layers": 3}
    for name, location in (("base", base), ("aligned", aligned)):
        capture_model(model_name=name, model={**template, "location": location}, template_name="aligned", template=template,
                      cells=CELLS, layers=[0, 1, 2, 3], prompt_files=prompt_files,
                      output_pattern=str(out / name / "{fmt}" / "{key}" / "layer_{layer}.safetensors"),
                      record_path=str(out / name / "record.json"), batch_size=4, mean_last_k=2,
                      system_prompt="default", version=1, threads=1, **floor)


def _paths(out):
    return {layer: {dataset: {key: str(out / role / fmt / dataset / f"layer_{layer}.safetensors")
                              for key, (role, fmt) in ROLES.items()} for dataset in ("safety", "control")}
            for layer in range(4)}


def _floor_table(tiny_pair, tmp_path, dtype) -> pd.DataFrame:
    run, floor = tmp_path / "run", tmp_path / "floor"
    _capture(tiny_pair, run, dtype)
    _capture(tiny_pair, floor, dtype, first_prompts=FLOOR_PROMPTS, compute_dtype="float32")
    write_precision_floor(family="tiny", cells=_paths(run), float32_cells=_paths(floor), output_stem=str(tmp_path / "tiny"),
                          read_position="last", eps=[0.05], prompts=FLOOR_PROMPTS)
    tensors, meta = io.read_tensors(floor / "aligned" / "chat" / "safety" / "layer_3.safetensors")
    assert tensors["last"].shape[0] == FLOOR_PROMPTS and meta["n_prompts"] == FLOOR_PROMPTS
    assert (meta["dtype"], meta["weights_dtype"], meta["first_prompts"]) == ("float32", dtype, FLOOR_PROMPTS)
    run_meta = io.read_tensors(run / "aligned" / "chat" / "safety" / "layer_3.safetensors")[1]
    assert run_meta["dataset_sha256"] == meta["dataset_sha256"] and "first_prompts" not in run_meta
    return pd.read_parquet(tmp_path / "tiny.parquet")


def test_bfloat16_run_has_a_large_floor_and_flags_its_ranks(tiny_pair, tmp_path):
    table = _floor_table(tiny_pair, tmp_path, "bfloat16")
    assert (table["run_dtype"] == "bfloat16").all() and (table["prompts"] == FLOOR_PROMPTS).all()
    assert set(table["layer"]) == {0, 1, 2, 3} and set(table["dataset"]) == {"safety", "control"}
    template = table[(table["variant"] == "template") & (table["layer"] >= 1)]
    assert (template["floor_fraction"] > 0.05).all() and template["within_precision_floor"].all()
    # the audit rows of those layers come back flagged, with the measured fraction
    audit = template[["family", "variant", "dataset", "layer", "centered", "eps"]].assign(rank_eps=1)
    flagged = precision.flag_ranks(audit, table)
    assert flagged["within_precision_floor"].all()
    np.testing.assert_array_equal(flagged["floor_fraction"].to_numpy(), template["floor_fraction"].to_numpy())


def test_float32_run_has_no_floor(tiny_pair, tmp_path):
    """Against itself, float32 differs only by batching round-off; and the plan schedules no floor job for it."""
    table = _floor_table(tiny_pair, tmp_path, "float32")
    shifted = table[table["shift_energy"] > 0]
    assert len(shifted) and (shifted["floor_fraction"] < 1e-6).all() and not table["within_precision_floor"].any()
    families = {"tiny": {"base": "base", "aligned": "aligned"}}
    assert precision.floor_families(families, {"base": "float32", "aligned": "float32"}, FLOOR_PROMPTS) == []
    assert precision.floor_families(families, {"base": "bfloat16", "aligned": "bfloat16"}, FLOOR_PROMPTS) == ["tiny"]


def test_floor_capture_refuses_more_prompts_than_the_set_has(tiny_pair, tmp_path):
    with pytest.raises(ValueError, match=r"precision_floor_prompts = 11 exceeds the prompts of \{'safety': 10, 'control': 10\}"):
        _capture(tiny_pair, tmp_path, "bfloat16", first_prompts=N_PROMPTS + 1, compute_dtype="float32")
