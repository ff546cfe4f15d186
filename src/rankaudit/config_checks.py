"""Every cross-key check of the configuration, run once at start-up, before any job is planned.

The JSON Schemas (config/schema/) check each key on its own; what they cannot express (a family naming an unknown
model, a causal band whose layers are not captured, a split a prompt set does not have) is checked here, so that a
bad config fails in `snakemake -n` with one line per problem naming the config file(s) and the dotted key, not in
job 200. rules/common.smk calls `check_config` once, after schema validation has filled the defaults. Errors about
data files (prompt tables, weights, GGUF files) stay with the code that reads them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rankaudit import plan
from rankaudit.calibration import grid as calibration_grid
from rankaudit.checkpoints import checkpoint_of_source
from rankaudit.download import is_hub_id
from rankaudit.plan import ConfigError
from rankaudit.prompts.build import GENERATED_SET_KEYS
from rankaudit.prompts.concepts import CONCEPT_SPLIT
from rankaudit.prompts.generated import SPLITS
from rankaudit.prompts.public import DEFAULT_SPLIT
from rankaudit.sweeps import band_layers

__all__ = ["ConfigError", "check_config", "dataset_splits"]

# The project-written sets whose rows are concept pairs (columns pair, side); public sets never are.
CONCEPT_PAIR_SETS = ("concept_en_fr", "concept_question_statement")
# The project-written request sets, split train/val/test by prompts.generated.split_fractions.
REQUEST_SETS = ("demo_harmful", "demo_benign")
CAUSAL_PHASES = ("selection", "evaluation")
# refusal-tuned checkpoints: derive key -> the split the tuning job reads from that prompt set
REFUSAL_TUNED_SPLITS = {"harmful_dataset": "train", "harmless_dataset": "train",
                        "eval_harmful_dataset": "test", "eval_harmless_dataset": "test"}
COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")

Problems = list[ConfigError]


def check_config(config: Mapping[str, Any], files: Sequence[str] = ()) -> None:
    """Run every cross-key check on a schema-validated config; raise one ConfigError naming `files` and every
    problem's dotted key. Names are resolved first: the other checks follow them."""
    problems = [problem for check in NAME_CHECKS for problem in check(config)]
    if not problems:
        problems = [problem for check in PLAN_CHECKS for problem in check(config)]
    if problems:
        raise ConfigError.combine(_one_per_key(problems), files)


def _one_per_key(problems: Problems) -> Problems:
    """One problem per dotted key, its distinct messages joined in order (two families, two roles, one key)."""
    messages: dict[str, list[str]] = {}
    for problem in problems:
        if problem.message not in messages.setdefault(problem.key, []):
            messages[problem.key].append(problem.message)
    return [ConfigError(key, "; ".join(texts)) for key, texts in messages.items()]


def known_datasets(config: Mapping[str, Any]) -> set[str]:
    """Every prompt set the config defines: the project-written ones and the public ones by name."""
    return set(GENERATED_SET_KEYS) | set(config["prompts"].get("public") or {})


def dataset_splits(config: Mapping[str, Any], dataset: str) -> set[str]:
    """The split labels a prompt set's rows carry, known from the config alone.

    Request sets: each split with a positive fraction; concept-pair sets: `all`; a public set: the one label
    `prompts.public.<name>.split` writes into every row (`all` when null).
    """
    if dataset in REQUEST_SETS:
        fractions = config["prompts"]["generated"]["split_fractions"]
        return {split for split in SPLITS if fractions.get(split, 0) > 0}
    if dataset in GENERATED_SET_KEYS:
        return {CONCEPT_SPLIT}
    return {config["prompts"]["public"][dataset].get("split") or DEFAULT_SPLIT}


# --- names: every reference resolves ------------------------------------------------------------------------------

def _model_sources(config: Mapping[str, Any]) -> Problems:
    problems = []
    organism_families = set((config.get("organisms") or {}).get("families", []))
    for name, entry in config["models"].items():
        try:
            organism = plan.parse_organism(entry["source"])
        except ConfigError as error:
            problems.append(ConfigError(f"models.{name}.source", error.message))
            continue
        if organism and organism[0] not in organism_families:
            problems.append(ConfigError(f"models.{name}.source", f"organism family {organism[0]!r} is not in "
                                        f"organisms.families {sorted(organism_families)}"))
    return problems


def _remote_code_pinned(config: Mapping[str, Any]) -> Problems:
    """Code from a Hub repository runs only at a commit that cannot move (a 40-hex revision)."""
    return [
        ConfigError(f"models.{name}.trust_remote_code", f"is true for the Hub model {entry['source']!r} but "
                    f"models.{name}.revision is {entry.get('revision')!r}; remote code needs a pinned revision, "
                    "a 40-hex commit hash")
        for name, entry in config["models"].items()
        if entry.get("trust_remote_code") and is_hub_id(entry["source"])
        and not COMMIT_HASH.match(str(entry.get("revision") or ""))
    ]


def _family_models(config: Mapping[str, Any]) -> Problems:
    models = config["models"]
    problems = []
    for family, entry in config["families"].items():
        for key in ("base", "aligned", "template"):
            if key in entry and entry[key] not in models:
                problems.append(ConfigError(f"families.{family}.{key}", f"unknown model {entry[key]!r} (known: {sorted(models)})"))
        for ref in entry.get("references", []):
            if ref not in models:
                problems.append(ConfigError(f"families.{family}.references", f"unknown model {ref!r} (known: {sorted(models)})"))
        if entry["base"] == entry["aligned"]:
            problems.append(ConfigError(f"families.{family}.aligned", f"is the base model too ({entry['base']!r}): "
                                        "a family compares two different models"))
        elif entry["base"] in models and entry["aligned"] in models and _same_weights(models[entry["base"]], models[entry["aligned"]]):
            problems.append(ConfigError(f"families.{family}.aligned", f"{entry['aligned']!r} loads the same weights as "
                                        f"the base model {entry['base']!r} (source, revision and dtype): the shift would be zero"))
    return problems


def _same_weights(first: Mapping[str, Any], second: Mapping[str, Any]) -> bool:
    keys = ("source", "revision", "dtype")
    return all(first.get(key) == second.get(key) for key in keys)


def _datasets_known(config: Mapping[str, Any]) -> Problems:
    known = known_datasets(config)

    def unknown(key: str, dataset: str | None) -> Problems:
        if dataset is None or dataset in known:
            return []
        return [ConfigError(key, f"unknown prompt dataset {dataset!r} (known: {sorted(known)})")]

    problems = [problem for key in plan.SAMPLE_KEYS for problem in unknown(f"datasets.{key}.dataset", config["datasets"][key]["dataset"])]
    problems += [problem for dataset in config["datasets"].get("concepts", []) for problem in unknown("datasets.concepts", dataset)]
    causal = config.get("causal") or {}
    for phase in CAUSAL_PHASES:
        for role in plan.SAMPLE_KEYS:
            problems += unknown(f"causal.{phase}.{role}_dataset", causal.get(phase, {}).get(f"{role}_dataset"))
    for name, derive in _refusal_tuned(config).items():
        for key in REFUSAL_TUNED_SPLITS:
            problems += unknown(f"checkpoints.{name}.derive.{key}", derive.get(key))
    clash = sorted(set(GENERATED_SET_KEYS) & set(config["prompts"].get("public") or {}))
    if clash:
        problems.append(ConfigError("prompts.public", f"{clash} reuse the name of a project-written prompt set; rename them"))
    return problems


def _causal_families(config: Mapping[str, Any]) -> Problems:
    families = (config.get("causal") or {}).get("families", [])
    unknown = [family for family in families if family not in config["families"]]
    problems = []
    if unknown:
        problems.append(ConfigError("causal.families", f"unknown famil{'y' if len(unknown) == 1 else 'ies'} {unknown} "
                                    f"(known: {sorted(config['families'])})"))
    if "causal" in config.get("stages", []) and not families:
        problems.append(ConfigError("stages", "'causal' is chosen but causal.families is empty (name the families "
                                    "whose refusal direction is tested, or leave 'causal' out)"))
    return problems


def _checkpoint_references(config: Mapping[str, Any]) -> Problems:
    """Derivations lead back to a checkpoint without a cycle; a model loading a checkpoint names one that exists."""
    entries = config.get("checkpoints") or {}
    problems = []
    for name, entry in entries.items():
        derive = entry.get("derive")
        if derive is None:
            continue
        seen = [name]
        parent = derive["from"]
        while parent in entries and "derive" in entries[parent] and parent not in seen:
            seen.append(parent)
            parent = entries[parent]["derive"]["from"]
        if parent not in entries:
            via = f" (through {' -> '.join(seen)})" if len(seen) > 1 else ""
            problems.append(ConfigError(f"checkpoints.{name}.derive.from", f"unknown checkpoint {parent!r}{via} (known: {sorted(entries)})"))
        elif parent in seen:
            problems.append(ConfigError(f"checkpoints.{name}.derive.from", f"derivation cycle {' -> '.join([*seen, parent])}"))
    for model, entry in config["models"].items():
        name = checkpoint_of_source(entry["source"])
        if name is not None and name not in entries:
            problems.append(ConfigError(f"models.{model}.source", f"{entry['source']!r} is not written by any checkpoints "
                                        f"entry (known: {sorted(entries)})"))
    return problems


def _refusal_tuned(config: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    entries = config.get("checkpoints") or {}
    return {name: entry["derive"] for name, entry in entries.items() if (entry.get("derive") or {}).get("kind") == "refusal_tuned"}


# --- what the plan is built from ----------------------------------------------------------------------------------

def _models_plannable(config: Mapping[str, Any]) -> Problems:
    """One chat template per captured model, a known depth, and captured layers that exist."""
    problems = []
    for model in plan.captured_models(config):
        templates = {plan.template_model(config, family) for family in plan.model_families(config, model)}
        if len(templates) > 1:
            problems.append(ConfigError(f"models.{model}", f"takes part in families rendered with different chat templates "
                                        f"{sorted(templates)}; set families.<name>.template so that they agree (a model's "
                                        "activations are captured once)"))
        try:
            plan.model_n_layers(config, model)
            plan.model_layers(config, model)
        except ConfigError as error:
            problems.append(error)
    return problems


def _concepts_paired(config: Mapping[str, Any]) -> Problems:
    unpaired = [dataset for dataset in config["datasets"].get("concepts", []) if dataset not in CONCEPT_PAIR_SETS]
    if not unpaired:
        return []
    return [ConfigError("datasets.concepts", f"{unpaired} are not concept-pair sets (rows pair i side a, pair i side b); "
                        f"the concept sets are {list(CONCEPT_PAIR_SETS)}")]


def _split_fractions(config: Mapping[str, Any]) -> Problems:
    fractions = config["prompts"]["generated"]["split_fractions"]
    total = sum(float(value) for value in fractions.values())
    if math.isclose(total, 1.0, abs_tol=1e-6):
        return []
    return [ConfigError("prompts.generated.split_fractions", f"{dict(fractions)} sum to {total:g}, not 1")]


def _splits_requested(config: Mapping[str, Any]) -> Problems:
    """Every split a stage draws from is one its prompt set has."""
    requests: list[tuple[str, str, str, str]] = []  # (key asking, split, dataset, where the dataset comes from)
    for role in plan.SAMPLE_KEYS:
        sample = config["datasets"][role]
        if sample.get("split") is not None:
            requests.append((f"datasets.{role}.split", sample["split"], sample["dataset"], f"datasets.{role}.dataset"))
    causal = config.get("causal") or {}
    if causal.get("families"):
        for phase in CAUSAL_PHASES:
            spec = causal[phase]
            for role in plan.SAMPLE_KEYS:
                origin = f"causal.{phase}.{role}_dataset" if spec[f"{role}_dataset"] else f"datasets.{role}.dataset"
                dataset = spec[f"{role}_dataset"] or config["datasets"][role]["dataset"]
                requests.append((f"causal.{phase}.split", spec["split"], dataset, origin))
    for name, derive in _refusal_tuned(config).items():
        for key, split in REFUSAL_TUNED_SPLITS.items():
            requests.append((f"checkpoints.{name}.derive.{key}", split, derive[key], f"checkpoints.{name}.derive.{key}"))
    check = (config.get("organisms") or {}).get("refusal_check")
    if check and any(str(entry["source"]).startswith(plan.ORGANISM_PREFIX) for entry in config["models"].values()):
        requests += [("organisms.refusal_check.split", check["split"], dataset, "the organisms' refusal check") for dataset in REQUEST_SETS]
    problems = []
    for key, split, dataset, origin in requests:
        splits = dataset_splits(config, dataset)
        if split not in splits:
            declared = (f"prompts.public.{dataset}.split" if dataset in (config["prompts"].get("public") or {})
                        else "prompts.generated.split_fractions" if dataset in REQUEST_SETS else "the generator")
            problems.append(ConfigError(key, f"split {split!r} is not in prompt set {dataset!r} ({origin}), whose rows "
                                        f"have split(s) {sorted(splits)} (set by {declared})"))
    return problems


def _causal_grids(config: Mapping[str, Any]) -> Problems:
    """Bands are proper ranges whose layers are captured; the headline band and k are in the bands and k grid."""
    causal = config.get("causal") or {}
    if not causal.get("families"):
        return []
    bands, k_grid = causal["bands"], causal["k_grid"]
    problems = []
    proper = {}
    for name, spec in bands.items():
        low, high = spec["range"]
        if low > high:
            problems.append(ConfigError(f"causal.bands.{name}.range", f"[{low}, {high}]: the low end exceeds the high end"))
        else:
            proper[name] = spec
    uncaptured: dict[str, list[str]] = {name: [] for name in proper}
    for family in causal["families"]:
        try:
            n_blocks = plan.model_n_layers(config, config["families"][family]["aligned"])
            captured = set(plan.family_layers(config, family))
        except ConfigError:
            continue  # reported by _models_plannable
        for name, spec in proper.items():
            missing = [layer for layer in band_layers(n_blocks, *spec["range"], spec["count"]) if layer not in captured]
            if missing:
                uncaptured[name].append(f"{missing} of family {family!r} ({n_blocks} blocks)")
    problems += [ConfigError(f"causal.bands.{name}", f"layers {', '.join(where)} are not captured; capture.layers "
                             "must include them") for name, where in uncaptured.items() if where]
    ordering = causal["ordering"]
    if ordering["headline_band"] not in bands:
        problems.append(ConfigError("causal.ordering.headline_band", f"{ordering['headline_band']!r} is not a band of "
                                    f"causal.bands {sorted(bands)}"))
    if ordering["headline_k"] not in k_grid:
        problems.append(ConfigError("causal.ordering.headline_k", f"{ordering['headline_k']} is not in causal.k_grid "
                                    f"{list(k_grid)}"))
    return problems


def _limits(config: Mapping[str, Any]) -> Problems:
    limits = config["limits"]
    if limits["headline_eps"] in limits["eps"]:
        return []
    return [ConfigError("limits.headline_eps", f"{limits['headline_eps']} is not one of limits.eps {limits['eps']}")]


def _calibration(config: Mapping[str, Any]) -> Problems:
    try:
        calibration_grid.check_grid(config["calibration"])
    except ConfigError as error:
        return list(error.problems)
    return []


NAME_CHECKS: tuple[Callable[[Mapping[str, Any]], Problems], ...] = (
    _model_sources, _remote_code_pinned, _family_models, _datasets_known, _causal_families, _checkpoint_references,
)
PLAN_CHECKS: tuple[Callable[[Mapping[str, Any]], Problems], ...] = (
    _models_plannable, _concepts_paired, _split_fractions, _splits_requested, _causal_grids, _limits, _calibration,
)
