"""kill -9 a workflow job mid-way, resume it with Snakemake's own commands, compare with an uninterrupted run.

`kill_and_resume` drives one heavy job of a copy of a finished run: it deletes the job's outputs (the list comes
from Snakemake's own plan), starts `snakemake --cores 1 <target>` in its own process group, waits until the job is
provably mid-way (`MidJob`), freezes the group (SIGSTOP), checks again and SIGKILLs it, as a crash or a scheduler
would. Then it checks what a user would see: no output of the killed job passes for finished (each one is either
absent or listed by Snakemake as incomplete) and the job is planned again. It resumes as a user would:
`snakemake --cores 1 --rerun-incomplete <target>` is refused with the killed run's lock named, `snakemake --unlock`,
then the same command again (profiles/default, picked up next to the Snakefile, adds nothing that matters here).
The resumed outputs are compared with the finished run's by content (`assert_same_content`), and no `.{name}.*`
temporary sibling of any output may remain.

The kill configuration (`kill_config`) is the demo's, cut to one organism family and a few cells, and sized so
that every heavy job runs for seconds: long enough to be caught mid-way, never slowed by code made for tests.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from reduced_workflow import REPO, SNAKEFILE, SNAKEMAKE, snakemake, snakemake_env

# keys (JSON) and columns (tables) that say how long a job ran, when, or how much of it a resume reused
# (`resume`, rankaudit.parts): they differ between two runs that computed the same thing
TIMING_KEY = re.compile(r"^(seconds|elapsed|retrieved_at|resume)$|_seconds$")
# the temporary files and folders rankaudit.io writes before renaming them into place: `.{name}.{random}`
TEMPORARY = re.compile(r"^\.[^.].*\.[A-Za-z0-9_]{8}")
# the finished parts a long job keeps beside its main output while it runs (rankaudit.parts.PARTS_DIR)
PARTS = ".rankaudit_parts"
KILL_TIMEOUT_S = 300


def kill_config() -> dict:
    """The demo config (config/config.yaml) cut to the llama organisms, one concept set, one causal basis and one
    calibration seed. Capture runs in batches of 8 prompts and the sweep keeps three k values and three single
    directions, so that each heavy job lasts a few seconds on one core."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.pop("stages")
    organisms = config["organisms"]
    organisms["families"] = ["llama"]
    organisms["architectures"] = {"llama": organisms["architectures"]["llama"]}
    organisms["planted"]["families"] = []
    config["models"] = {f"llama_{role}": {"source": f"organism:llama/{role}"} for role in ("base", "aligned")}
    config["families"] = {"llama": {"base": "llama_base", "aligned": "llama_aligned", "references": []}}
    config["runtime"]["batch_size"] = 8
    config["datasets"]["concepts"] = ["concept_en_fr"]
    causal = config["causal"]
    causal.update(families=["llama"], bases=["template"], k_grid=[1, 3, 5], n_single=3)
    calibration = config["calibration"]
    calibration.update(seeds=[0], lambdas=[0], unsafe_lambdas=[0])
    calibration["kappa"].update(honest=["fullft"], unsafe=["unsafe_ft"])
    return config


# one output of each heavy job of `kill_config`; asking for it runs exactly that job in a finished run's copy
KILL_TARGETS = {
    "organism_base": "resources/organisms/llama/base",
    "capture_llama_aligned": "results/acts/llama_aligned/capture_record.json",
    "layer_spectra": "results/llama/directions/layer_2.safetensors",
    "causal_select": "results/llama/causal/selection.json",
    "causal_sweep": "results/llama/causal/sweep_template.json",
    "calibration_finetune": "results/calibration/seed0/fullft/measurements.json",
    "limits_layer": "results/llama/limits/layer_2.json",
}


@dataclass(frozen=True)
class MidJob:
    """What proves that the target job is running and not finished.

    Always: the job's log file exists (the script opens it after its imports) and its script process is alive in
    Snakemake's process group. `log_line`: a regex the log must show (the job's real work has begun). `partial`: a
    glob of a file the job writes before its end. `last`: the job's last write, which must still be missing.
    """

    script: str
    log: str
    last: str
    log_line: str | None = None
    partial: str | None = None

    def holds(self, workdir: Path, group: int) -> bool:
        log = workdir / self.log
        if not log.exists() or (workdir / self.last).exists():
            return False
        if self.log_line is not None and not re.search(self.log_line, log.read_text(errors="replace"), re.MULTILINE):
            return False
        if self.partial is not None and not any(workdir.glob(self.partial)):
            return False
        return script_alive(group, self.script)


def script_alive(group: int, script: str) -> bool:
    """Whether a process of process group `group` runs Snakemake's copy of `script` (.snakemake/scripts/tmp*.<script>)
    and has not exited (a zombie of a frozen group has exited: its parent cannot reap it)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        # the fields after the command name (which may hold spaces): state, ppid, pgrp, ...
        state, _, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == group and state != "Z" and re.search(rf"\.snakemake/scripts/tmp\w+\.{re.escape(script)}", cmdline):
            return True
    return False


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def kill_mid_job(process: subprocess.Popen, workdir: Path, mid_job: MidJob) -> float:
    """SIGKILL the process group of `process` (Snakemake and its job) once `mid_job` holds; the seconds waited.

    The group is frozen before the condition is checked again, so the job cannot finish between the check and the
    kill; if it did (the condition no longer holds), the group is let go and the test fails: the job is too short.
    """
    started = time.monotonic()
    wait_for(lambda: mid_job.holds(workdir, process.pid) or process.poll() is not None, KILL_TIMEOUT_S,
             f"{mid_job.script} to be mid-way")
    assert process.poll() is None, f"snakemake ended before {mid_job.script} was caught mid-way"
    os.killpg(process.pid, signal.SIGSTOP)
    caught = mid_job.holds(workdir, process.pid)
    os.killpg(process.pid, signal.SIGKILL if caught else signal.SIGCONT)
    assert caught, f"{mid_job.script} finished between two checks: make its job larger in kill_config()"
    return time.monotonic() - started


def planned_outputs(workdir: Path, target: str, rule: str) -> list[str]:
    """The outputs of the one job that makes `target`, as Snakemake's dry run lists them (forced to run)."""
    printout = snakemake(workdir, "--dry-run", target, "--forcerun", rule).stdout
    blocks = re.findall(rf"^(?:local)?rule {re.escape(rule)}:\n((?:    .*\n)+)", printout, re.MULTILINE)
    assert len(blocks) == 1, f"expected one {rule} job for {target}:\n{printout[-3000:]}"
    outputs = re.search(r"^    output: (.*)$", blocks[0], re.MULTILINE)
    assert outputs, blocks[0]
    return outputs.group(1).split(", ")


def remove(path: Path) -> None:
    """Delete an output, file or folder (a `directory()` output), if it is there."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


@dataclass(frozen=True)
class KillResult:
    """The killed job's outputs, how long it ran before the kill, the outputs it left that Snakemake named incomplete,
    and the temporary siblings its interrupted writes left (before the resume)."""

    outputs: list[str]
    seconds_to_kill: float
    incomplete: list[str]
    leftovers: list[str]


def kill_and_resume(workdir: Path, rule: str, target: str, mid_job: MidJob) -> KillResult:
    """Delete the target job's outputs in `workdir` (a finished run's copy), run it, kill it mid-way, check that
    nothing it left passes for finished, and resume it as a user would (`--rerun-incomplete`, `--unlock`)."""
    outputs = planned_outputs(workdir, target, rule)
    for output in outputs:
        remove(workdir / output)
    command = ["timeout", "-s", "KILL", str(KILL_TIMEOUT_S), str(SNAKEMAKE), "-s", str(SNAKEFILE), "--directory",
               str(workdir), "--cores", "1", target, "--configfile", str(workdir / "cfg.yaml")]
    log_path = workdir / "killed_run.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=workdir, env=snakemake_env(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            seconds = kill_mid_job(process, workdir, mid_job)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{log_path.read_text()[-3000:]}") from None
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert not (workdir / mid_job.last).exists()
    assert any((workdir / ".snakemake/incomplete").iterdir()), "Snakemake did not mark the killed job incomplete"
    leftovers = sorted(str(path.relative_to(workdir)) for path in temporary_siblings(workdir, outputs))
    incomplete = assert_nothing_passes_for_finished(workdir, target, rule, outputs)
    # the killed Snakemake left its lock: the first resume is refused with the fix named, as a user would see it
    locked = snakemake(workdir, target, "--cores", "1", "--rerun-incomplete", check=False)
    assert locked.returncode != 0 and "Directory cannot be locked" in locked.stdout, locked.stdout[-3000:]
    assert "It can be removed with the --unlock argument" in locked.stdout
    snakemake(workdir, "--unlock")
    snakemake(workdir, target, "--cores", "1", "--rerun-incomplete")
    return KillResult(outputs, seconds, incomplete, leftovers)


def assert_nothing_passes_for_finished(workdir: Path, target: str, rule: str, outputs: list[str]) -> list[str]:
    """Every output the killed job left on disk is one Snakemake calls incomplete (a plain run refuses to go on
    and names them), and with none left the job is simply planned again; returns the outputs named incomplete."""
    left = [output for output in outputs if (workdir / output).exists()]
    planned = snakemake(workdir, "--dry-run", target, check=False)
    if not left:
        assert planned.returncode == 0, planned.stdout[-3000:]
        assert re.search(rf"^(?:local)?rule {re.escape(rule)}:$", planned.stdout, re.MULTILINE), planned.stdout[-3000:]
        return []
    assert planned.returncode != 0 and "IncompleteFilesException" in planned.stdout, planned.stdout[-3000:]
    assert "rerun your command with the --rerun-incomplete flag" in planned.stdout
    listed = planned.stdout.split("Incomplete files:", 1)[1]
    named = [output for output in left if re.search(rf"^{re.escape(output)}\b", listed, re.MULTILINE)]
    assert named == left, f"outputs on disk that Snakemake does not call incomplete: {sorted(set(left) - set(named))}"
    return named


def temporary_siblings(workdir: Path, outputs: list[str]) -> list[Path]:
    """Temporary `.{name}.*` files or folders next to any of `outputs` (what an interrupted atomic write leaves)."""
    found = set()
    for output in outputs:
        path = workdir / output
        for candidate in path.parent.glob(f".{path.name}.*") if path.parent.exists() else ():
            found.add(candidate)
    return sorted(found)


def temporary_files(workdir: Path) -> list[str]:
    """Every `.{name}.*` temporary file or folder under results/ and resources/, and every folder of a job's kept
    parts (PARTS), which the job deletes once it has published its outputs."""
    return sorted(str(path.relative_to(workdir)) for top in ("results", "resources") if (workdir / top).exists()
                  for path in (workdir / top).rglob(".*") if TEMPORARY.match(path.name) or path.name == PARTS)


# --- comparison by content -----------------------------------------------------------------------------------------


def without_timing(value):
    """A JSON value without its timing and resume keys (TIMING_KEY) at any depth, NaN made comparable (NaN != NaN)."""
    if isinstance(value, dict):
        return {key: without_timing(item) for key, item in value.items() if not TIMING_KEY.search(str(key))}
    if isinstance(value, list):
        return [without_timing(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def assert_same_content(expected_root: Path, actual_root: Path, relative: str) -> None:
    """One output (file or folder) of two runs holds the same content: tensors bit for bit with their metadata,
    JSON and tables without their timing and resume fields, every other file byte for byte."""
    expected, actual = expected_root / relative, actual_root / relative
    assert actual.exists(), f"{relative}: missing after the resume"
    if expected.is_dir():
        names = sorted(path.relative_to(expected) for path in expected.rglob("*") if path.is_file())
        assert sorted(path.relative_to(actual) for path in actual.rglob("*") if path.is_file()) == names, relative
        for name in names:
            assert_same_content(expected_root, actual_root, str(Path(relative) / name))
        return
    suffix = expected.suffix
    if suffix == ".safetensors":
        _assert_same_tensors(expected, actual, relative)
    elif suffix == ".json":
        assert without_timing(json.loads(actual.read_text())) == without_timing(json.loads(expected.read_text())), relative
    elif suffix in (".parquet", ".csv"):
        _assert_same_table(expected, actual, relative)
    elif suffix == ".md" and _has_timing_columns(expected.with_suffix(".parquet")):
        _assert_same_table(expected.with_suffix(".parquet"), actual.with_suffix(".parquet"), relative)
    else:
        assert actual.read_bytes() == expected.read_bytes(), relative


def _assert_same_tensors(expected: Path, actual: Path, relative: str) -> None:
    import numpy as np
    from safetensors import safe_open

    def read(path: Path) -> tuple[dict, dict]:
        with safe_open(str(path), framework="numpy") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}

    (want, want_meta), (got, got_meta) = read(expected), read(actual)
    assert got_meta == want_meta, relative
    assert got.keys() == want.keys(), relative
    for key in want:
        assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), f"{relative}:{key}"


def _read_table(path: Path):
    import pandas as pd

    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _has_timing_columns(path: Path) -> bool:
    return path.exists() and any(TIMING_KEY.search(str(column)) for column in _read_table(path).columns)


def _assert_same_table(expected: Path, actual: Path, relative: str) -> None:
    import pandas as pd

    want, got = _read_table(expected), _read_table(actual)
    timing = [column for column in want.columns if TIMING_KEY.search(str(column))]
    assert list(got.columns) == list(want.columns), relative
    pd.testing.assert_frame_equal(got.drop(columns=timing), want.drop(columns=timing), check_exact=True, obj=relative)
