"""Reruns exactly as wide as the change (issue 15, item 6): each config key re-plans the rules that read it.

The table (rerun_scope.yaml) says, for every key of every config section, which rules a dry run re-plans on a
finished run when that key alone changes. One test builds the DAG of the base config and of each changed config in
this process (rerun_scope.py: the params, input and output sets the rerun triggers compare, then everything
downstream) and compares the re-planned rules with the table; one checks that the table names every key of the
schemas; one runs the real `snakemake -n` on a finished run of the same base config (its outputs written as
placeholders and recorded by `snakemake --touch`) with a new k grid, which must re-plan the sweeps and tables and
never the selection, the all-layer test or the abliteration: the emulation's answer for that key.
"""

from __future__ import annotations

import copy
import fnmatch
from pathlib import Path

import pytest
import yaml
from reduced_workflow import REPO, parse_dry_run, snakemake
from rerun_scope import PlannedDag, cached_parsing, plan_dag, replanned_rules, with_key

TABLE = yaml.safe_load(Path(__file__).with_name("rerun_scope.yaml").read_text())
SCHEMA_DIR = REPO / "config" / "schema"


def _base_config() -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key, value in TABLE["base"]["set"].items():
        config = with_key(config, key, value)
    return config


BASE_CONFIG = _base_config()


def base_config() -> dict:
    """The base run's config (a fresh copy: with_key copies before it changes one)."""
    return copy.deepcopy(BASE_CONFIG)


def expand(items: list[str]) -> set[str]:
    """The rules of a `reruns` list, each `@group` replaced by its rules."""
    rules: set[str] = set()
    for item in items:
        rules |= expand(TABLE["groups"][item[1:]]) if item.startswith("@") else {item}
    return rules


@pytest.fixture(scope="module")
def base_dag(tmp_path_factory) -> tuple[PlannedDag, Path]:
    workdir = tmp_path_factory.mktemp("rerun_scope")
    with cached_parsing():
        return plan_dag(base_config(), workdir), workdir


def test_each_config_key_reruns_exactly_its_readers(base_dag):
    base, workdir = base_dag
    wrong = []
    with cached_parsing():
        for key, entry in TABLE["keys"].items():
            planned = replanned_rules(base, plan_dag(with_key(base_config(), key, entry["to"]), workdir))
            expected = expand(entry["reruns"])
            if planned != expected:
                wrong.append(f"{key} -> {entry['to']!r}: also re-plans {sorted(planned - expected)}, "
                             f"not {sorted(expected - planned)}")
    assert not wrong, "re-planned rules differ from tests/workflow/rerun_scope.yaml:\n" + "\n".join(wrong)


def test_an_unchanged_config_replans_nothing(base_dag):
    base, workdir = base_dag
    with cached_parsing():
        assert replanned_rules(base, plan_dag(base_config(), workdir)) == set()


def schema_keys(schema: dict, prefix: str) -> list[str]:
    """Dotted keys of a schema's leaves; `*` for the name of an entry of a by-name section (models, families)."""
    if "$ref" in schema and schema["$ref"].startswith("./"):
        schema = yaml.safe_load((SCHEMA_DIR / schema["$ref"][2:]).read_text())
    properties = schema.get("properties")
    entry = schema.get("additionalProperties")
    if not properties and isinstance(entry, dict) and entry.get("properties"):
        return schema_keys(entry, f"{prefix}.*")
    if not properties:
        return [prefix]
    return [key for name, sub in properties.items() for key in schema_keys(sub if isinstance(sub, dict) else {}, f"{prefix}.{name}".lstrip("."))]


def covered(key: str, names: list[str]) -> bool:
    """A schema key is covered by an entry for it or for a parent key (`*` matching any entry name)."""
    parts = key.split(".")
    return any(fnmatch.fnmatch(".".join(parts[:depth]), pattern) or fnmatch.fnmatch(pattern, ".".join(parts[:depth]))
               for pattern in names for depth in range(1, len(parts) + 1))


def test_the_table_names_every_config_key():
    top = yaml.safe_load((SCHEMA_DIR / "config.schema.yaml").read_text())
    keys = [key for name, sub in top["properties"].items()
            for key in schema_keys(yaml.safe_load((SCHEMA_DIR / f"{name}.schema.yaml").read_text())
                                   if (SCHEMA_DIR / f"{name}.schema.yaml").exists() else sub, name)]
    names = [*TABLE["keys"], *TABLE["not_in_table"]]
    assert len(keys) > 150, keys  # the walk reached the leaves of every section
    assert [key for key in keys if not covered(key, names)] == []


@pytest.fixture(scope="module")
def touched_run(base_dag, tmp_path_factory) -> Path:
    """A finished run of the base config: every output written as a one-byte file (or an empty directory), then
    recorded by `snakemake --touch` (which checks `ensure(non_empty=True)`)."""
    base, _ = base_dag
    workdir = tmp_path_factory.mktemp("touched_run")
    (workdir / "cfg.yaml").write_text(yaml.safe_dump(base_config(), sort_keys=False))
    for state in base.jobs.values():
        for output in state.outputs:
            path = workdir / output
            if output in state.directories:
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("x")
    snakemake(workdir, "--touch", "--forceall", "--cores", "1")
    return workdir


def test_a_real_dry_run_replans_what_the_table_says(touched_run):
    assert "Nothing to be done" in snakemake(touched_run, "--dry-run").stdout
    key = "causal.k_grid"
    changed = touched_run / "changed.yaml"
    # the same key order as cfg.yaml: params are compared by repr, and a dict's repr follows its keys' order
    changed.write_text(yaml.safe_dump(with_key(base_config(), key, copy.deepcopy(TABLE["keys"][key]["to"])), sort_keys=False))
    result = snakemake(touched_run, "--dry-run", configfile=changed)
    planned = {job.rule for job in parse_dry_run(result.stdout).jobs} - {"all"}
    assert planned == expand(TABLE["keys"][key]["reruns"]) == {"causal_sweep", "causal_tables", "causal_figures", "headline_table"}, \
        result.stdout[-3000:]
