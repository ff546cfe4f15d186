"""What a dry run on a finished run re-plans after one config change, computed in one process.

`snakemake -n` with the rerun triggers of profiles/* (mtime, params, input, software-env) schedules a job of a
finished run when its output is new (a job that did not exist), its params differ from the recorded ones, or its
set of input files differs, and then every job downstream of one that runs (mtime). `plan_dag` builds the workflow's
DAG for one config with Snakemake's Python API and keeps, per job, exactly what those triggers compare: the
serialized params (`persistence._params`, what Snakemake records and compares), the sorted input paths and the
outputs; `replanned_rules` applies the triggers to a base and a changed DAG. With `cached_parsing` one DAG of the
table's base config costs a quarter of a second here against 3-4 s for a `snakemake -n` subprocess, so a test can
change every config key in turn; a real dry run on a finished run cross-checks the emulation
(tests/workflow/test_rerun_scope.py).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reduced_workflow import SNAKEFILE

JobKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class JobState:
    """What the rerun triggers compare for one job."""

    params: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    directories: tuple[str, ...]  # the outputs that are directories (to write a finished run by hand)


@dataclass(frozen=True)
class PlannedDag:
    """Every job of a config's `rule all` (as if nothing existed yet) and the jobs that consume each job's output."""

    jobs: dict[JobKey, JobState]
    dependents: dict[JobKey, frozenset[JobKey]]


def job_key(job: Any) -> JobKey:
    return job.rule.name, tuple(sorted((name, str(value)) for name, value in job.wildcards_dict.items()))


def plan_dag(config: dict, workdir: Path, snakefile: Path = SNAKEFILE) -> PlannedDag:
    """The DAG of `config` (written to `workdir`/scope.json, passed as --configfile) built in this process.

    JSON, which Snakemake reads first and as fast as it writes, keeps the keys' order like a YAML file would."""
    from snakemake.api import SnakemakeApi
    from snakemake.io import is_flagged
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, Quietness, ResourceSettings

    configfile = workdir / "scope.json"
    configfile.write_text(json.dumps(config))
    cwd = os.getcwd()
    try:
        with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
            workflow_api = api.workflow(resource_settings=ResourceSettings(cores=1),
                                        config_settings=ConfigSettings(configfiles=[configfile]),
                                        snakefile=snakefile, workdir=workdir)
            workflow = workflow_api._workflow
            workflow_api.dag(DAGSettings())  # attaches the DAG settings to the workflow
            workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
            workflow._build_dag()
            dag, persistence = workflow.dag, workflow.persistence
            jobs = {job_key(job): JobState(tuple(persistence._params(job)), tuple(sorted(map(str, job.input))),
                                           tuple(sorted(map(str, job.output))),
                                           tuple(sorted(str(f) for f in job.output if is_flagged(f, "directory"))))
                    for job in dag.jobs if job.output}
            dependents = {job_key(job): frozenset(job_key(child) for child in dag.depending[job] if child.output)
                          for job in dag.jobs if job.output}
    finally:
        os.chdir(cwd)
    return PlannedDag(jobs, dependents)


def replanned_rules(base: PlannedDag, changed: PlannedDag) -> set[str]:
    """The rules a dry run schedules on a finished run of `base` once the config is that of `changed`."""
    triggered = [key for key, state in changed.jobs.items() if base.jobs.get(key) != state]
    seen = set(triggered)
    while triggered:
        for child in changed.dependents[triggered.pop()]:
            if child not in seen:
                seen.add(child)
                triggered.append(child)
    return {rule for rule, _ in seen}


def with_key(config: dict, dotted: str, value: Any) -> dict:
    """A copy of `config` with the dotted key set to `value` (missing sections created)."""
    changed = copy.deepcopy(config)
    *path, last = dotted.split(".")
    node = changed
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value
    return changed


@contextlib.contextmanager
def cached_parsing():
    """Snakemake re-reads every rule file and schema for each config; both are pure functions of the file's text
    (and, for a rule file, of the rule count before it), so within this context each is parsed once. Two thirds of
    a DAG's cost here; nothing the rerun triggers compare depends on it."""
    import io

    import snakemake.api  # imports snakemake.workflow in the order its circular imports need
    import snakemake.utils
    import snakemake.workflow

    parse, load = snakemake.workflow.parse, snakemake.utils._load_configfile
    parsed: dict[tuple, tuple] = {}
    schemas: dict[str, Any] = {}

    def cached_parse(snakefile, workflow, linemap, rulecount=0, **kwargs):
        path = snakefile.get_path_or_uri(secret_free=True)
        key = (path, rulecount, Path(path).read_bytes())
        if key not in parsed:
            lines: dict[int, int] = {}
            code, count = parse(snakefile, workflow, linemap=lines, rulecount=rulecount, **kwargs)
            parsed[key] = (code, count, lines)
        code, count, lines = parsed[key]
        linemap.update(lines)
        return code, count

    def cached_load(source, filetype="Config"):
        if filetype != "Schema":
            return load(source, filetype=filetype)
        if hasattr(source, "read"):
            with source:
                text = source.read()
        else:
            text = Path(source).read_text()
        text = text.decode() if isinstance(text, bytes) else text
        if text not in schemas:
            schemas[text] = load(io.StringIO(text), filetype=filetype)
        return copy.deepcopy(schemas[text])

    snakemake.workflow.parse, snakemake.utils._load_configfile = cached_parse, cached_load
    try:
        yield
    finally:
        snakemake.workflow.parse, snakemake.utils._load_configfile = parse, load
