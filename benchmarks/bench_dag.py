"""Scale on paper (issue 7): the DAG of the real study, planned by a dry run through the SLURM profile.

Plans config/paper.yaml (all layers of Llama-3.1-8B L=32, Gemma-2-9B L=42, Qwen-2.5-7B L=28 and the two public
abliterated references) in an empty working directory and reports the jobs per rule, how many go to SLURM and how
many need a GPU, the wall time of the dry run and of a one-job dry run (start-up and parsing alone; the difference
is the DAG's own cost; medians of interleaved rounds), and the activation disk the capture jobs will write. Needs no weights and no network.
Not a test: `make bench` (or `python benchmarks/bench_dag.py`) prints the numbers for docs/CLUSTER.md.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml
from benchcommon import Ratio, benchmark_arguments, report

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
# hidden size d of the paper's model families, by the name prefix the paper config uses
HIDDEN_SIZE = {"llama": 4096, "gemma2": 3584, "qwen2": 3584}
# rows of each project-written concept set, from the prompts.generated key that sizes it (two rows per pair)
CONCEPT_PAIRS_KEY = {"concept_en_fr": "n_translation_pairs", "concept_question_statement": "n_question_statement_pairs"}
# read positions stored per prompt: last, mean_last_k and the post-instruction tokens (about 5 for these templates)
VECTORS_PER_PROMPT = 2 + 5


def dry_run(config: Path, workdir: Path, targets: list[str]) -> tuple[float, Counter, str]:
    """Wall seconds and jobs per rule of `snakemake --dry-run` through the SLURM workflow profile."""
    command = ["timeout", "-s", "KILL", "600", str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(config), "--workflow-profile", str(REPO / "profiles" / "slurm"),
               *targets, "--dry-run", "--quiet", "rules"]  # targets first: --quiet takes the names after it
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"dry run failed ({' '.join(command)}):\n{result.stdout[-4000:]}")
    return seconds, job_stats(result.stdout), result.stdout


def job_stats(text: str) -> Counter:
    """The first `Job stats` table of a dry run, as rule -> count."""
    counts: Counter = Counter()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats"))
    for line in lines[start + 3:]:
        match = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not match or match.group(1) == "total":
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def local_rules() -> set[str]:
    """Rules that run on the submit host: `localrules:` lists and `localrule: True` in rules/*.smk, plus `all`.
    (A dry run does not say which jobs are local, so the rule files are read line by line.)"""
    names = {"all"}
    for path in (REPO / "rules").glob("*.smk"):
        in_list, rule = False, None
        for line in path.read_text().splitlines():
            if line.startswith("localrules:"):
                in_list = True
            elif in_list and line.startswith((" ", "\t")) and line.strip():
                names.update(name for name in line.replace(",", " ").split())
            else:
                in_list = False
            if line.startswith("rule "):
                rule = line[len("rule "):].rstrip(":").strip()
            elif rule and line.strip().startswith("localrule: True"):
                names.add(rule)
    return names


def gpu_rules() -> set[str]:
    """Rules that may ask for a GPU (a `gpu` resource or `model_resources(...)` in rules/*.smk); capture rules are
    named per model. Whether a job really gets one depends on its model's device, so this is an upper bound."""
    names = set()
    for path in (REPO / "rules").glob("*.smk"):
        rule = None
        for line in path.read_text().splitlines():
            if line.startswith("rule "):
                rule = line[len("rule "):].rstrip(":").strip()
            elif rule and ("gpu=" in line.replace(" ", "") or "model_resources(" in line):
                names.add(rule)
    return names


def dataset_rows(config: dict, key: str) -> int:
    if key in ("safety", "control"):
        return int(config["datasets"][key]["n"])
    return 2 * int(config["prompts"]["generated"][CONCEPT_PAIRS_KEY[key]])


def activation_bytes(config: dict) -> dict[str, int]:
    """Bytes of float32 activations each model of a family would write (every layer, every cell it takes part in)."""
    sys.path.insert(0, str(REPO / "src"))
    from rankaudit import plan

    sizes = {}
    for model in plan.captured_models(config):
        hidden = next((d for prefix, d in HIDDEN_SIZE.items() if model.startswith(prefix)), None)
        if hidden is None:
            continue
        rows = sum(dataset_rows(config, key) for _, key in plan.model_cells(config, model))
        sizes[model] = rows * len(plan.model_layers(config, model)) * VECTORS_PER_PROMPT * hidden * 4
    return sizes


def main() -> int:
    parser = benchmark_arguments(__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "config" / "paper.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    one_job, full = [], []
    with tempfile.TemporaryDirectory(prefix="bench_dag_") as tmp:
        workdir = Path(tmp)
        # interleaved rounds and medians: on a shared machine one timing alone means little
        for _ in range(args.rounds):
            one_job.append(dry_run(args.config, workdir, ["results/prompts/concept_en_fr.parquet"])[0])
            seconds, counts, _ = dry_run(args.config, workdir, ["all"])
            full.append(seconds)
    one_job_s, full_s = statistics.median(one_job), statistics.median(full)
    local = local_rules()
    remote = {rule: n for rule, n in counts.items() if rule not in local}
    gpu = {rule: n for rule, n in counts.items() if rule.startswith("capture_") or rule in gpu_rules()}
    print(f"config: {args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config}")
    print(f"families: {', '.join(f'{name} (L={len(layers) - 1})' for name, layers in family_layers(config).items())}")
    print(f"{'rule':<36}{'jobs':>6}")
    for rule, n in counts.most_common():
        print(f"{rule:<36}{n:>6}")
    print(f"total jobs: {sum(counts.values())}; SLURM jobs: {sum(remote.values())}; GPU jobs: {sum(gpu.values())}; "
          f"local: {sum(counts.values()) - sum(remote.values())}")
    print(f"dry run (median of {args.rounds}), whole study: {full_s:.2f} s; one job: {one_job_s:.2f} s; "
          f"so the study's DAG costs {full_s - one_job_s:.2f} s beyond start-up and parsing")
    sizes = {model: size for model, size in activation_bytes(config).items() if f"capture_{model}" in counts}
    for model, size in sizes.items():
        print(f"activations {model:<32}{size / 1e9:>7.2f} GB")
    print(f"activations total: {sum(sizes.values()) / 1e9:.1f} GB (float32, {VECTORS_PER_PROMPT} vectors per prompt)")
    print()
    report([Ratio("paper-sized DAG: dry run of the whole study / of one job (wall time only)", full_s / one_job_s, "-",
                  full_s / one_job_s, note=f"{sum(counts.values())} jobs ({sum(gpu.values())} on a GPU node), {full_s:.1f} s vs {one_job_s:.1f} s "
                  f"wall, median of {args.rounds}; {sum(sizes.values()) / 1e9:.0f} GB of activations")], args.ratios_json)
    return 0


def family_layers(config: dict) -> dict[str, list[int]]:
    sys.path.insert(0, str(REPO / "src"))
    from rankaudit import plan

    return {family: plan.family_layers(config, family) for family in config["families"]}


if __name__ == "__main__":
    sys.exit(main())
