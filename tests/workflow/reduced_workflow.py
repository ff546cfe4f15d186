"""A reduced copy of the real workflow for tests: tiny random HF models referenced by local path, no organisms.

The workflow tests (tests/workflow) and the SLURM test (tests/slurm) both drive the project's real Snakefile in a
subprocess against a temporary working directory, with a config listing only these models. Building the models
and finishing a reference run cost about a minute on two cores, so both are cached per pytest session here
(module state shared by every conftest that imports this module). RANKAUDIT_TEST_SNAKEFILE points the tests at
another copy of the workflow (for example one with an uncommitted fix); by default they run the repository's.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = Path(os.environ.get("RANKAUDIT_TEST_SNAKEFILE", REPO / "Snakefile"))
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
# family -> decoder blocks of its tiny test model (tests/conftest.py FAMILY_SPECS)
FAMILY_LAYERS = {"llama": 3, "qwen2": 3}
AUDIT_TABLES = ("rho_per_family", "rho_per_layer", "centered_vs_uncentered", "variants", "arditi_cosines")
# a hard SIGKILL bound for every snakemake call: SIGTERM only starts a graceful wait that can hang
DEFAULT_TIMEOUT_S = 600

_cache: dict[str, Path] = {}


def family_targets(families) -> list[str]:
    """What a reduced run produces: the diagnosis tables and each family's figures (not the demo's `all`)."""
    return [f"results/tables/{name}.md" for name in AUDIT_TABLES] + [
        f"results/figures/{family}/rho_by_layer.png" for family in families
    ]


def _test_models_module():
    """tests/conftest.py loaded under its own name: pytest keeps several modules called `conftest`."""
    name = "rankaudit_tiny_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "conftest.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def build_models(root: Path, families=tuple(FAMILY_LAYERS)) -> Path:
    """Build `<family>_base` (seed 0) and `<family>_aligned` (seed 1) under `root`; return `root`."""
    module = _test_models_module()
    for family in families:
        for seed, role in ((0, "base"), (1, "aligned")):
            directory = root / f"{family}_{role}"
            if not (directory / "config.json").exists():
                module.build_tiny_family(family, directory, seed=seed)
    return root


def reduced_config(models_root: Path, families=tuple(FAMILY_LAYERS), n_prompts: int = 24) -> dict:
    """The demo config cut down to the given tiny families (local paths), small prompt samples, no concepts."""
    models = {}
    for family in families:
        for role in ("base", "aligned"):
            models[f"{family}_{role}"] = {"source": str(models_root / f"{family}_{role}"), "n_layers": FAMILY_LAYERS[family]}
    return {
        "prompts": {
            "generated": {
                "seed": 0, "n_harmful": 240, "n_benign": 240,
                "split_fractions": {"train": 0.6, "val": 0.2, "test": 0.2},
                "n_translation_pairs": 60, "n_question_statement_pairs": 60,
            },
            "public": {},
        },
        "models": models,
        "families": {family: {"base": f"{family}_base", "aligned": f"{family}_aligned"} for family in families},
        "runtime": {"device": "cpu", "dtype": "float32", "batch_size": 32},
        "datasets": {
            "safety": {"dataset": "demo_harmful", "split": "train", "n": n_prompts},
            "control": {"dataset": "demo_benign", "split": "train", "n": n_prompts},
            "concepts": [],
        },
        "capture": {"layers": "all", "mean_last_k": 4, "system_prompt": "default"},
        "audit": {"read_position": "last", "eps": [0.05], "noise_draws": 1, "seed": 0},
    }


def write_config(workdir: Path, config: dict, name: str = "cfg.yaml") -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake_env() -> dict[str, str]:
    """The environment of a workflow subprocess: offline, one torch thread, the venv's tools on PATH."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["PATH"] = f"{SNAKEMAKE.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def snakemake(workdir: Path, *args: str, configfile: Path | None = None, snakefile: Path = SNAKEFILE,
              timeout_s: int = DEFAULT_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real workflow in `workdir` (bounded by `timeout -s KILL`); stdout and stderr come back merged.

    `--configfile` goes last: it ends whatever list option precedes it. Targets in `args` must come before any
    option that takes several values (--forcerun, --config, --set-resources, --quiet ...), which would take them.
    """
    command = ["timeout", "-s", "KILL", str(timeout_s), str(SNAKEMAKE), "-s", str(snakefile), "--directory", str(workdir),
               *args, "--configfile", str(configfile or workdir / "cfg.yaml")]
    result = subprocess.run(command, cwd=workdir, env=snakemake_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-6000:]}")
    return result


@dataclass(frozen=True)
class PlannedJob:
    """One job of a dry run: its rule, wildcards, resources and Snakemake's stated reason."""

    rule: str
    wildcards: dict = field(default_factory=dict, hash=False)
    resources: dict = field(default_factory=dict, hash=False)
    reason: str = ""


@dataclass(frozen=True)
class Plan:
    jobs: tuple[PlannedJob, ...]

    @property
    def counts(self) -> Counter:
        return Counter(job.rule for job in self.jobs)

    def wildcards(self, rule: str) -> list[dict]:
        return [job.wildcards for job in self.jobs if job.rule == rule]

    def resources(self, rule: str) -> list[dict]:
        return [job.resources for job in self.jobs if job.rule == rule]


_RULE = re.compile(r"^(?:local)?rule (\S+):$")


def parse_dry_run(text: str) -> Plan:
    """The jobs a `snakemake -n` printout lists (one `rule NAME:` block each)."""
    jobs, current = [], None
    for line in text.splitlines():
        match = _RULE.match(line.strip())
        if match:
            current = {"rule": match.group(1), "wildcards": {}, "resources": {}, "reason": ""}
            jobs.append(current)
        elif current is not None and line.startswith("    "):
            key, _, value = line.strip().partition(": ")
            if key in ("wildcards", "resources"):
                current[key] = dict(item.split("=", 1) for item in value.split(", "))
            elif key == "reason":
                current["reason"] = value
        elif not line.startswith("    "):
            current = None
    return Plan(tuple(PlannedJob(**job) for job in jobs))


def dry_run(workdir: Path, *args: str, **kwargs) -> Plan:
    """What Snakemake would run now for `args` (targets and options), parsed from a real dry run."""
    result = snakemake(workdir, "--dry-run", *args, **kwargs)
    if "Nothing to be done" in result.stdout:
        return Plan(())
    plan = parse_dry_run(result.stdout)
    assert plan.jobs, f"could not parse any job from the dry run:\n{result.stdout[-4000:]}"
    return plan


def cached_dir(key: str, make) -> Path:
    """Build a directory once per pytest session (shared by the workflow and SLURM conftests)."""
    if key not in _cache:
        _cache[key] = make()
    return _cache[key]


def copy_run(source: Path, destination: Path) -> Path:
    """A copy of a finished run (outputs, config, .snakemake metadata) that a test may change freely."""
    shutil.copytree(source, destination, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete"))
    return destination


def copy_workflow(destination: Path) -> Path:
    """A copy of the workflow code (Snakefile, rules, scripts, schemas, captions) for tests that edit it."""
    for name in ("Snakefile", "rules", "workflow_scripts", "config/schema", "report", "reference", "profiles/default"):
        source = SNAKEFILE.parent / name
        if source.is_dir():
            shutil.copytree(source, destination / name)
        elif source.exists():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination / "Snakefile"


@pytest.fixture(scope="session")
def reduced_models(tmp_path_factory) -> Path:
    """Directory with the tiny `<family>_base` / `<family>_aligned` models of FAMILY_LAYERS."""
    return cached_dir("models", lambda: build_models(tmp_path_factory.mktemp("reduced_models")))


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, reduced_models) -> Path:
    """A working directory where the reduced workflow ran to completion; tests must not change it (copy_run)."""

    def make() -> Path:
        workdir = tmp_path_factory.mktemp("finished_run")
        write_config(workdir, reduced_config(reduced_models))
        snakemake(workdir, "--cores", "2", *family_targets(FAMILY_LAYERS))
        return workdir

    return cached_dir("finished_run", make)


def assert_same_output(expected_root: Path, actual_root: Path, relative: Path) -> None:
    """One output of two runs is identical: every tensor bit for bit and the metadata for safetensors (whose
    header order the library does not fix, so bytes may differ), the bytes for everything else."""
    expected, actual = expected_root / relative, actual_root / relative
    if relative.suffix != ".safetensors":
        assert actual.read_bytes() == expected.read_bytes(), relative
        return
    import numpy as np

    from rankaudit.io import read_tensors

    (want, want_meta), (got, got_meta) = read_tensors(expected), read_tensors(actual)
    assert got_meta == want_meta, relative
    assert got.keys() == want.keys(), relative
    for key in want:
        assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), f"{relative}:{key}"
