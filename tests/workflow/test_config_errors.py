"""Bad configuration fails at start-up with the file and the dotted key named, before any job runs."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def demo_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def dry_run(tmp_path: Path, config: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--configfile", str(path), "-n", "--quiet"],
        capture_output=True, text=True, timeout=120, env=env,
    )


def _set(config: dict, dotted: str, value) -> dict:
    config = copy.deepcopy(config)
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return config


_DELETE = object()

CASES = [
    ("unknown key", "runtime.colour", "red", ["invalid config key 'runtime'", "'colour' was unexpected"]),
    ("wrong type", "runtime.batch_size", "many", ["invalid config key 'runtime.batch_size'", "not of type 'integer'"]),
    ("missing model field", "models.llama_base.source", _DELETE, ["invalid config key 'models.llama_base'", "'source' is a required property"]),
    ("unknown model in a family", "families.llama.aligned", "llama_instruct",
     ["invalid config key 'families.llama.aligned': unknown model 'llama_instruct'"]),
    ("unknown dataset", "datasets.safety.dataset", "harmful_trian",
     ["invalid config key 'datasets.safety.dataset': unknown prompt dataset 'harmful_trian'"]),
    ("layer deeper than the model", "capture.layers", [0, 99], ["invalid config key 'capture.layers': [99] exceed family"]),
    # cross-key checks of rankaudit.config_checks that used to fail in a job (tests/unit/test_config_checks.py has all)
    ("unknown causal family", "causal.families", ["llama", "mistral"], ["invalid config key 'causal.families': unknown family ['mistral']"]),
    ("headline k not in the k grid", "causal.ordering.headline_k", 4, ["invalid config key 'causal.ordering.headline_k': 4 is not in causal.k_grid"]),
    ("bad eps", "audit.eps", [1.5], ["invalid config key 'audit.eps.0'"]),
]


@pytest.mark.parametrize("what, key, value, expected", CASES, ids=[case[0] for case in CASES])
def test_bad_config_names_file_and_key(tmp_path: Path, what: str, key: str, value, expected: list[str]) -> None:
    result = dry_run(tmp_path, _set(demo_config(), key, value))
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"{what}: a bad config was accepted\n{output[-2000:]}"
    # one line names the file, the key and what is wrong
    lines = [line for line in output.splitlines() if str(tmp_path / "bad.yaml") in line and all(f in line for f in expected)]
    assert lines, f"{what}: no line names the file and holds {expected}\n{output[-2000:]}"
    assert not (tmp_path / "results").exists(), "nothing may be written for a rejected config"


def test_demo_config_is_valid(tmp_path: Path) -> None:
    result = dry_run(tmp_path, demo_config())
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
