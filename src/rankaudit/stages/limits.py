"""Limits of the rank diagnostics (METHODS §3 and §7, issue 6): rho next to its nulls, its uncertainty and its bounds.

One job per family x layer reads that layer's cells once and writes one JSON of record lists,
`results/{family}/limits/layer_{layer}.json` (`analyse_limits_layer`):
- `lrh`: rho_eps of every concept-pair difference matrix (base/aligned x raw/chat x concept set) next to the safety
  rho of the same layer (M_template = A(chat) - B(chat) on D_s), their ratio, and the ratio at a matched prompt count;
- `resampling`: the full-sample rank at every eps of the sweep with pure noise of the same (n, d, eps) beside it, and
  the rank's distribution over subsamples drawn without replacement;
- `split_half`: principal angles between the top-k subspaces of two disjoint random halves;
- `sv_gaps`: each leading singular value's gaps against its resampling spread (is its direction identifiable?);
- `n_sweep`: the rank at each requested prompt count, capped by the data, next to pure noise;
- `spectral_gap`: for every unsafe reference, kappa, the structural bound (checked; a violation fails the job), the
  modal separation gamma and the tail-energy budgets.
Every matrix is analysed uncentered and centered (column mean removed), except S, which §7 defines uncentered.
Every record carries its layer's `layer_status` (`shift_status`): layer 0 (the embedding output) and layers whose
M_template (uncentered or centered) is zero or of numerical rank <= 1 stay in the per-layer tables but are left out
of every mean, median and count. `write_limits_tables` turns the records into the paper's tables and
`rankaudit.stages.limits_claims.limits_section` into a markdown section whose every statement is computed from those
tables against documented thresholds (`ClaimThresholds`).
numpy/pandas/matplotlib only: these jobs never import torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rankaudit import degeneracy, io, matrices, resampling, spectra
from rankaudit.bounds import spectral_gap
from rankaudit.stages.layer_analysis import read_cell
from rankaudit.stages.limits_claims import (
    CENTERINGS,
    KAPPA_THRESHOLD,
    ClaimThresholds,
    limits_section,
)

log = logging.getLogger(__name__)

RECORD_KINDS = ("lrh", "resampling", "split_half", "sv_gaps", "n_sweep", "spectral_gap")
# kappa <= 2 / (eps r), so kappa > 8 is impossible by arithmetic once eps r >= 1/4 (docs/THEORY.md §7).
STRUCTURAL_EPS_R = 0.25
EMBEDDING_OUTPUT = "embedding output"


class StructuralBoundError(AssertionError):
    """kappa exceeded gamma / (eps r) or 2 / (eps r): impossible mathematically, so the inputs or the code are wrong."""


@dataclass(frozen=True)
class LimitsSettings:
    """The `limits` config section (defaults as in config/schema/limits.schema.yaml)."""

    eps: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2)
    headline_eps: float = 0.05
    subsample_fraction: float = 0.8
    draws: int = 50
    split_half_k: tuple[int, ...] = (1, 3, 5, 10)
    split_half_draws: int = 10
    gap_top: int = 10
    n_sweep: tuple[int, ...] = (50, 100, 200)
    tail_eps_fraction: float = 0.25
    noise_draws: int = 3
    interval_level: float = 0.9
    seed: int = 0

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> LimitsSettings:
        """Build from the validated config section (keys of other sub-sections, such as `claims`, are ignored).

        The per-layer jobs get the section without `headline_eps` (only the tables and figure read it), so the
        check that it is one of `eps` applies when it is given."""
        names = {field.name for field in dataclasses.fields(cls)}
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in section.items() if key in names}
        settings = cls(**values)
        if "headline_eps" in section and settings.headline_eps not in settings.eps:
            raise ValueError(f"limits.headline_eps: {settings.headline_eps} is not one of limits.eps {list(settings.eps)}")
        return settings


# --- per-layer computations (pure functions of matrices) -----------------------------------------------------------


def shift_status(shift: np.ndarray, layer: int, zero_tolerance: float = 0.0) -> str:
    """Whether a layer's M_template is counted in aggregates ("ok"), and if not why.

    Layer 0 is the embedding output: under the chat format the read token is the same template token for every
    prompt, so M_template there is one row repeated (rank <= 1, centered form zero). Elsewhere the uncentered and
    centered matrix are classified by `rankaudit.degeneracy.matrix_status` (zero up to `zero_tolerance`, or
    numerical rank <= 1), as the rho tables do; a layer counts only when both are "ok".
    """
    if layer == 0:
        return EMBEDDING_OUTPUT
    for label, work in (("", spectra.as_matrix(shift, "M_template")), ("centered ", spectra.center_columns(shift))):
        rank = spectra.numerical_rank(spectra.singular_values(work), work.shape)
        status = degeneracy.matrix_status(work, rank, zero_tolerance)
        if status != degeneracy.OK:
            return f"{label}{status}"
    return degeneracy.OK


def full_ranks(matrix: np.ndarray, eps_list: Sequence[float], *, centered: bool) -> dict[float, int]:
    """rank_eps of the whole matrix (column-centered first when `centered`) at every eps."""
    work = spectra.center_columns(matrix) if centered else spectra.as_matrix(matrix)
    values = spectra.singular_values(work)
    return {float(eps): spectra.energy_rank(values, eps) for eps in eps_list}


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else math.nan


def _ranks_at_n(matrix: np.ndarray, eps_list: Sequence[float], n: int, *, centered: bool, draws: int, seed: int) -> dict[float, float]:
    """Mean rank_eps over `draws` n-row subsets drawn without replacement (the full matrix when n is all its rows)."""
    records = resampling.n_sweep(matrix, eps_list, (n,), draws=draws, seed=seed, centered=centered, noise_draws=1)
    return {record["eps"]: record["rank_mean"] for record in records}


def lrh_records(
    concept: np.ndarray,
    safety: np.ndarray,
    eps_list: Sequence[float],
    *,
    centered: bool,
    draws: int,
    seed: int,
    noise_draws: int,
) -> list[dict]:
    """The linear-representation baseline of one concept-pair matrix against the safety matrix of the same layer.

    `ratio` = rho(concept) / rho(safety) as measured (the paper's number); since rank grows with the prompt count and
    the two sets differ in size, `ratio_matched` compares mean ranks at the smaller of the two counts, the larger
    set subsampled without replacement.
    """
    concept = spectra.as_matrix(concept, "concept")
    safety = spectra.as_matrix(safety, "safety")
    if concept.shape[1] != safety.shape[1]:
        raise ValueError(f"lrh_records: d differs between concept {concept.shape} and safety {safety.shape}")
    (n_concept, d), n_safety = concept.shape, safety.shape[0]
    n_matched = min(n_concept, n_safety)
    concept_ranks = full_ranks(concept, eps_list, centered=centered)
    safety_ranks = full_ranks(safety, eps_list, centered=centered)
    concept_matched = _ranks_at_n(concept, eps_list, n_matched, centered=centered, draws=draws, seed=seed)
    safety_matched = _ranks_at_n(safety, eps_list, n_matched, centered=centered, draws=draws, seed=seed)
    records = []
    for eps in map(float, eps_list):
        records.append({
            "centered": centered, "eps": eps, "d": d,
            "n_concept": n_concept, "rank_concept": concept_ranks[eps], "rho_concept": concept_ranks[eps] / d,
            "noise_rho_concept": spectra.noise_rho(n_concept, d, eps, noise_draws, seed),
            "n_safety": n_safety, "rank_safety": safety_ranks[eps], "rho_safety": safety_ranks[eps] / d,
            "noise_rho_safety": spectra.noise_rho(n_safety, d, eps, noise_draws, seed),
            "ratio": _ratio(concept_ranks[eps], safety_ranks[eps]),
            "n_matched": n_matched, "rank_concept_matched": concept_matched[eps], "rank_safety_matched": safety_matched[eps],
            "ratio_matched": _ratio(concept_matched[eps], safety_matched[eps]),
        })
    return records


def resampling_records(
    matrix: np.ndarray,
    eps_list: Sequence[float],
    *,
    centered: bool,
    fraction: float,
    draws: int,
    seed: int,
    noise_draws: int,
    level: float = 0.9,
) -> list[dict]:
    """Full-sample rank per eps beside pure noise of the same shape, its subsample distribution and its interval.

    Subsets are drawn without replacement (`resampling.subsample_ranks`); `sub_*` columns summarize them and
    `raw_low`/`raw_high` are their central `level` range, which sits at the rank of m = fraction x n prompts and
    understates how much n fresh prompts vary. `pred_low`/`pred_high` is the corrected interval for the rank of a
    repeat study with n fresh prompts (`resampling.rank_prediction_interval`: centred on `rank_full`, delete-d
    jackknife spread `rank_se` x sqrt(2)); `contains_full`: the full-sample rank lies within the subsample range.
    """
    matrix = spectra.as_matrix(matrix)
    n, d = matrix.shape
    full = full_ranks(matrix, eps_list, centered=centered)
    ranks = resampling.subsample_ranks(matrix, eps_list, fraction=fraction, draws=draws, seed=seed, centered=centered)
    m = round(fraction * n)
    records = []
    for column, summary in enumerate(resampling.summarize_ranks(ranks, eps_list, d)):
        eps = summary["eps"]
        rank = full[eps]
        noise = spectra.noise_rho(n, d, eps, noise_draws, seed)
        raw_low, raw_high = resampling.raw_subset_interval(ranks[:, column], level)
        interval = resampling.rank_prediction_interval(rank, ranks[:, column], n, m, level, min(n, d))
        records.append({
            "centered": centered, "eps": eps, "n": n, "d": d, "n_subsample": m,
            "rank_full": rank, "rho_full": rank / d, "rho_min_full": rank / min(n, d), "noise_rho": noise,
            "rho_over_noise": _ratio(rank / d, noise),
            **{f"sub_{key}": value for key, value in summary.items() if key != "eps"},
            "contains_full": bool(summary["rank_min"] <= rank <= summary["rank_max"]),
            "interval_level": level, "raw_low": raw_low, "raw_high": raw_high, "rank_se": interval["rank_se"],
            "pred_half_width": interval["half_width"], "pred_low": interval["low"], "pred_high": interval["high"],
        })
    return records


def split_half_records(matrix: np.ndarray, ks: Sequence[int], *, centered: bool, draws: int, seed: int) -> list[dict]:
    """Principal angles (degrees) between the top-k subspaces of disjoint random halves, per k <= min(n // 2, d)."""
    matrix = spectra.as_matrix(matrix)
    limit = min(matrix.shape[0] // 2, matrix.shape[1])
    records = []
    for k in ks:
        if k > limit:
            log.info("split-half k=%d skipped: a half of shape %s allows k <= %d", k, matrix.shape, limit)
            continue
        degrees = np.degrees(resampling.split_half_angles(matrix, k, draws=draws, seed=seed, centered=centered))
        records.append({
            "centered": centered, "k": int(k), "draws": draws, "angle_mean_deg": float(degrees.mean()),
            "smallest_angle_mean_deg": float(degrees[:, 0].mean()),
            "largest_angle_mean_deg": float(degrees[:, -1].mean()), "largest_angle_max_deg": float(degrees[:, -1].max()),
        })
    return records


def gap_records(matrix: np.ndarray, *, centered: bool, n_top: int, fraction: float, draws: int, seed: int) -> list[dict]:
    """`resampling.singular_value_gaps` with the centering recorded."""
    return [
        {"centered": centered, **record}
        for record in resampling.singular_value_gaps(matrix, n_top=n_top, fraction=fraction, draws=draws, seed=seed, centered=centered)
    ]


def n_sweep_records(
    matrix: np.ndarray, eps_list: Sequence[float], ns: Sequence[int], *, centered: bool, draws: int, seed: int, noise_draws: int
) -> list[dict]:
    """`resampling.n_sweep` with the centering, d and rho / noise rho recorded."""
    d = spectra.as_matrix(matrix).shape[1]
    return [
        {"centered": centered, "d": d, **record, "rho_over_noise": _ratio(record["rho_mean"], record["noise_rho"])}
        for record in resampling.n_sweep(matrix, eps_list, ns, draws=draws, seed=seed, centered=centered, noise_draws=noise_draws)
    ]


def spectral_gap_records(
    m_honest: np.ndarray, m_unsafe: np.ndarray, eps_list: Sequence[float], *, tail_eps_fraction: float, where: str
) -> list[dict]:
    """`bounds.spectral_gap` at every eps, with rank_eps of both shifts; raise if the structural bound fails.

    The bound kappa <= gamma / (eps r) <= 2 / (eps r) is a theorem, so a violation means wrong inputs or wrong code,
    never a finding: it raises `StructuralBoundError` naming `where` (family, layer, reference) and the numbers.
    """
    honest = spectra.as_matrix(m_honest, "m_honest")
    unsafe = spectra.as_matrix(m_unsafe, "m_unsafe")
    honest_values = spectra.singular_values(honest)
    unsafe_values = spectra.singular_values(unsafe)
    records = []
    for eps in map(float, eps_list):
        result = spectral_gap(honest, unsafe, eps, eps_strict=tail_eps_fraction * eps)
        if not result["bound_holds"]:
            raise StructuralBoundError(
                f"{where}, eps={eps}: kappa={result['kappa']!r} violates kappa <= gamma/(eps r)={result['kappa_bound_gamma']!r} "
                f"<= 2/(eps r)={result['kappa_bound']!r} at r={result['r']}; this cannot happen for true matrices"
            )
        records.append({
            "n": honest.shape[0], "d": honest.shape[1],
            "rank_honest": spectra.energy_rank(honest_values, eps), "rank_unsafe": spectra.energy_rank(unsafe_values, eps),
            **result, "eps_r": eps * result["r"],
        })
    return records


# --- the per-layer job ---------------------------------------------------------------------------------------------


def check_pair_order(prompt_file: str, n_rows: int) -> None:
    """Concept rows must run pair 0 a, pair 0 b, pair 1 a, ... so that rows 2i and 2i+1 are one pair."""
    frame = pd.read_parquet(prompt_file, columns=["pair", "side"])
    if len(frame) != n_rows:
        raise ValueError(f"{prompt_file}: {len(frame)} prompts but the activations have {n_rows} rows")
    sides = frame["side"].to_numpy(dtype=object)
    pairs = frame["pair"].to_numpy()
    if n_rows % 2 or not (np.all(sides[0::2] == "a") and np.all(sides[1::2] == "b") and np.array_equal(pairs[0::2], pairs[1::2])):
        raise ValueError(f"{prompt_file}: concept rows are not ordered pair i side a, pair i side b")


def _check_same_prompts(cells: Mapping[str, Mapping[str, Any]]) -> None:
    """Cells subtracted row by row must have been captured on one prompt list (same dataset fingerprint and count)."""
    fingerprints = {path: (meta.get("dataset_sha256"), meta.get("n_prompts")) for path, meta in cells.items()}
    if len(set(fingerprints.values())) > 1:
        raise ValueError(f"cells subtracted row by row were captured on different prompt lists: {fingerprints}")


def _provenance(path: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    return {"path": path, **{key: meta[key] for key in ("model", "format", "dataset", "dataset_sha256", "n_prompts") if key in meta}}


def layer_limit_records(
    safety: np.ndarray,
    concepts: Mapping[tuple[str, str, str], np.ndarray],
    references: Mapping[str, np.ndarray],
    settings: LimitsSettings,
    *,
    where: str,
    layer: int,
    zero_tolerance: float = 0.0,
) -> dict[str, list[dict]]:
    """Every limits record of one layer, each with the layer, its `layer_status` and whether it is `counted`.

    `safety` is M_template on D_s; `concepts[(concept, role, fmt)]` a concept-pair difference matrix;
    `references[name]` the unsafe shift U(chat) - B(chat) of each reference on D_s; `zero_tolerance` the per-entry
    size below which M_template counts as zero (`shift_status`).
    """
    s = settings
    records: dict[str, list[dict]] = {kind: [] for kind in RECORD_KINDS}
    for centered in CENTERINGS:
        records["resampling"] += resampling_records(
            safety, s.eps, centered=centered, fraction=s.subsample_fraction, draws=s.draws, seed=s.seed,
            noise_draws=s.noise_draws, level=s.interval_level)
        records["split_half"] += split_half_records(safety, s.split_half_k, centered=centered, draws=s.split_half_draws, seed=s.seed)
        records["sv_gaps"] += gap_records(safety, centered=centered, n_top=s.gap_top, fraction=s.subsample_fraction, draws=s.draws, seed=s.seed)
        records["n_sweep"] += n_sweep_records(
            safety, s.eps, s.n_sweep, centered=centered, draws=s.draws, seed=s.seed, noise_draws=s.noise_draws)
        for (concept, role, fmt), matrix in concepts.items():
            records["lrh"] += [
                {"concept": concept, "model_role": role, "format": fmt, **record}
                for record in lrh_records(matrix, safety, s.eps, centered=centered, draws=s.draws, seed=s.seed, noise_draws=s.noise_draws)
            ]
    for reference, unsafe in references.items():
        records["spectral_gap"] += [
            {"reference": reference, **record}
            for record in spectral_gap_records(safety, unsafe, s.eps, tail_eps_fraction=s.tail_eps_fraction,
                                               where=f"{where}, reference {reference}")
        ]
    status = shift_status(safety, layer, zero_tolerance)
    for rows in records.values():
        for row in rows:
            row.update(layer=layer, layer_status=status, counted=status == degeneracy.OK)
    return records


def analyse_limits_layer(
    *,
    family: str,
    layer: int,
    cells: Mapping[str, Any],
    models: Mapping[str, str],
    concept_prompts: Mapping[str, str],
    output: str,
    read_position: str,
    settings: Mapping[str, Any],
    version: int,
) -> None:
    """Read one family x layer's cells, compute every limits record and write them to `output` (JSON).

    `cells` = {"safety": {"aligned": path, "base": path}, "references": {name: path},
    "concepts": {concept: {role: {fmt: path}}}}, all at this layer; `models` maps role (base, aligned) to model
    name; `concept_prompts[concept]` is the selected prompt table, used to check the pair order of the rows.
    """
    limits = LimitsSettings.from_config(settings)
    where = f"family {family}, layer {layer}"
    a_chat, a_meta = read_cell(cells["safety"]["aligned"], read_position)
    b_chat, b_meta = read_cell(cells["safety"]["base"], read_position)
    safety_meta = {cells["safety"]["aligned"]: a_meta, cells["safety"]["base"]: b_meta}
    references = {}
    for name, path in cells["references"].items():
        unsafe, meta = read_cell(path, read_position)
        safety_meta[path] = meta
        references[name] = matrices.shift_matrix(unsafe, b_chat)
    _check_same_prompts(safety_meta)
    sources = {"safety": {path: _provenance(path, meta) for path, meta in safety_meta.items()}, "concepts": {}}
    concepts = {}
    for concept, by_role in cells["concepts"].items():
        concept_meta = {}
        for role, by_format in by_role.items():
            for fmt, path in by_format.items():
                rows, meta = read_cell(path, read_position)
                check_pair_order(concept_prompts[concept], rows.shape[0])
                concept_meta[path] = meta
                concepts[(concept, role, fmt)] = matrices.concept_pair_matrix(rows[0::2], rows[1::2])
        _check_same_prompts(concept_meta)
        sources["concepts"][concept] = {path: _provenance(path, meta) for path, meta in concept_meta.items()}
    records = layer_limit_records(matrices.shift_matrix(a_chat, b_chat), concepts, references, limits, where=where,
                                  layer=layer, zero_tolerance=degeneracy.zero_tolerance(degeneracy.activation_scale([a_chat, b_chat])))
    for kind, rows in records.items():
        for row in rows:
            row["family"] = family
            if kind == "lrh":
                row["model"] = models[row["model_role"]]
    io.write_json(output, {
        "family": family, "layer": layer, "models": dict(models), "read_position": read_position,
        # the settings this job read: headline_eps belongs to the tables and figure (not in a layer job's params)
        "settings": {key: value for key, value in dataclasses.asdict(limits).items() if key != "headline_eps"},
        "stage_version": version, "sources": sources, "records": records,
    })


# --- aggregation into tables ---------------------------------------------------------------------------------------


def load_records(paths: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Concatenate the per-layer records of every JSON into one frame per record kind."""
    rows: dict[str, list[dict]] = {kind: [] for kind in RECORD_KINDS}
    for path in paths:
        payload = json.loads(Path(path).read_text())
        for kind in RECORD_KINDS:
            rows[kind] += payload["records"][kind]
    return {kind: pd.DataFrame(rows[kind]) for kind in RECORD_KINDS}


def _layers(values: Sequence[Any]) -> str:
    return ", ".join(str(int(v)) for v in sorted(values)) or "none"


def _sorted(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    return frame.sort_values([key for key in keys if key in frame.columns], kind="stable").reset_index(drop=True)


def _divide(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    return numerator / denominator.where(denominator > 0)


def _counted(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of counted layers (see `shift_status`); aggregates over layers never see the others."""
    return frame[frame["counted"].astype(bool)] if "counted" in frame.columns else frame


def _left_out(frame: pd.DataFrame, families: pd.Series) -> list[str]:
    """Per family of `families`: the layers left out of the aggregate, grouped by status ("none" if all counted)."""
    if "counted" not in frame.columns:
        return ["none"] * len(families)
    excluded = frame.loc[~frame["counted"].astype(bool), ["family", "layer", "layer_status"]].drop_duplicates()
    text = {
        family: "; ".join(f"{_layers(group['layer'])} ({status})" for status, group in rows.groupby("layer_status"))
        for family, rows in excluded.groupby("family")
    }
    return [text.get(family, "none") for family in families]


def _with_left_out(table: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    return table.assign(layers_left_out=_left_out(frame, table["family"]))


def lrh_baseline_table(lrh: pd.DataFrame, eps: float) -> pd.DataFrame:
    """Per family x concept x model x format x centering: rho of concept pairs and of safety, mean over counted layers."""
    if lrh.empty:
        return lrh
    rows = _counted(lrh[lrh["eps"] == eps])
    table = rows.groupby(["family", "concept", "model_role", "model", "format", "centered"], as_index=False).agg(
        layers=("layer", "size"), d=("d", "first"), n_concept=("n_concept", "first"), n_safety=("n_safety", "first"),
        rho_concept=("rho_concept", "mean"), rho_safety=("rho_safety", "mean"),
        noise_rho_concept=("noise_rho_concept", "first"), noise_rho_safety=("noise_rho_safety", "first"),
        n_matched=("n_matched", "first"), rank_concept_matched=("rank_concept_matched", "mean"),
        rank_safety_matched=("rank_safety_matched", "mean"),
    )
    table.insert(table.columns.get_loc("rho_safety") + 1, "ratio", _divide(table["rho_concept"], table["rho_safety"]))
    table["ratio_matched"] = _divide(table["rank_concept_matched"], table["rank_safety_matched"])
    return _sorted(_with_left_out(table, lrh), ["family", "centered", "concept", "model_role", "format"])


def eps_sensitivity_table(resampled: pd.DataFrame) -> pd.DataFrame:
    """Per family x centering x eps: full-sample rank and rho (mean over counted layers) beside pure noise."""
    table = _counted(resampled).groupby(["family", "centered", "eps"], as_index=False).agg(
        layers=("layer", "size"), n=("n", "first"), d=("d", "first"), rank_mean=("rank_full", "mean"),
        rank_min=("rank_full", "min"), rank_max=("rank_full", "max"), rho=("rho_full", "mean"),
        rho_min=("rho_min_full", "mean"), noise_rho=("noise_rho", "first"), subsample_rank_mean=("sub_rank_mean", "mean"),
    )
    table["rho_over_noise"] = _divide(table["rho"], table["noise_rho"])
    return _sorted(_with_left_out(table, resampled), ["family", "centered", "eps"])


def n_sweep_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per family x centering x eps x n: mean over counted layers of the rank at n prompts, beside pure noise."""
    table = _counted(sweep).groupby(["family", "centered", "eps", "n"], as_index=False).agg(
        n_requested=("n_requested", "max"), capped=("capped", "any"), draws=("draws", "first"), layers=("layer", "size"),
        d=("d", "first"), rank_mean=("rank_mean", "mean"), rank_std=("rank_std", "mean"), rho=("rho_mean", "mean"),
        noise_rho=("noise_rho", "first"),
    )
    table["rho_over_noise"] = _divide(table["rho"], table["noise_rho"])
    return _sorted(_with_left_out(table, sweep), ["family", "centered", "eps", "n"])


KAPPA_REFERENCE_COLUMNS = [
    "family", "reference", "eps", "layers", "layers_left_out", "n", "d", "r_median", "layers_s_zero", "eps_r_min",
    "layers_eps_r_ge_quarter", "kappa_median", "kappa_max", "count_kappa_gt_8", "count_kappa_gt_8_trivial",
    "layers_kappa_gt_8", "count_kappa_gt_2", "count_kappa_gt_2_trivial", "layers_kappa_gt_2", "certified_rank_max",
    "kappa_bound_min", "bound_holds_all", "gamma_median", "residual_budget_relative_median",
    "residual_budget_relative_max", "uniform_residual_relative", "per_mode_budget_ratio_max",
]


def kappa_per_reference_table(pairs: pd.DataFrame, eps: float) -> pd.DataFrame:
    """Per family x reference at `eps`, over counted layers: how often kappa clears 8 and 2, what that certifies, and
    why it cannot (eps r >= 1/4); a certificate of rank <= 1 (r <= 2) is counted apart as `*_trivial`."""
    if pairs.empty:
        return pd.DataFrame(columns=KAPPA_REFERENCE_COLUMNS)
    at_eps = pairs[pairs["eps"] == eps]
    rows = _counted(at_eps).assign(
        gt_2=lambda f: f["kappa"] > 2.0, structural=lambda f: f["eps_r"] >= STRUCTURAL_EPS_R, s_zero=lambda f: f["r"] == 0,
        gt_8_trivial=lambda f: f["kappa_gt_8"] & (f["r"] <= 2), gt_2_trivial=lambda f: (f["kappa"] > 2.0) & (f["r"] <= 2))
    table = rows.groupby(["family", "reference"], as_index=False).agg(
        eps=("eps", "first"), layers=("layer", "size"), n=("n", "first"), d=("d", "first"), r_median=("r", "median"),
        layers_s_zero=("s_zero", "sum"), eps_r_min=("eps_r", "min"), layers_eps_r_ge_quarter=("structural", "sum"),
        kappa_median=("kappa", "median"), kappa_max=("kappa", "max"), count_kappa_gt_8=("kappa_gt_8", "sum"),
        count_kappa_gt_8_trivial=("gt_8_trivial", "sum"), count_kappa_gt_2=("gt_2", "sum"),
        count_kappa_gt_2_trivial=("gt_2_trivial", "sum"), certified_rank_max=("certified_max_rank", "max"),
        kappa_bound_min=("kappa_bound", "min"), bound_holds_all=("bound_holds", "all"), gamma_median=("gamma", "median"),
        residual_budget_relative_median=("residual_budget_relative", "median"),
        residual_budget_relative_max=("residual_budget_relative", "max"),
        uniform_residual_relative=("uniform_residual_relative", "first"),
        per_mode_budget_ratio_max=("per_mode_budget_ratio", "max"),
    )
    keys = list(zip(table["family"], table["reference"]))
    for flag, column in (("kappa_gt_8", "layers_kappa_gt_8"), ("gt_2", "layers_kappa_gt_2")):
        listed = rows[rows[flag]].groupby(["family", "reference"])["layer"].agg(_layers)
        table[column] = [listed.get(key, "none") for key in keys]
    return _sorted(_with_left_out(table, at_eps)[KAPPA_REFERENCE_COLUMNS], ["family", "reference"])


def limits_tables(frames: Mapping[str, pd.DataFrame], headline_eps: float) -> dict[str, pd.DataFrame]:
    """The limits tables from the concatenated per-layer records (`load_records`)."""
    pairs = frames["spectral_gap"]
    if not pairs.empty and not bool(pairs["bound_holds"].all()):
        bad = pairs.loc[~pairs["bound_holds"], ["family", "reference", "layer", "eps"]].to_dict("records")
        raise StructuralBoundError(f"structural bound kappa <= 2/(eps r) violated on {bad}")
    return {
        "limits_lrh_baseline": lrh_baseline_table(frames["lrh"], headline_eps),
        "limits_lrh_per_layer": _sorted(frames["lrh"], ["family", "centered", "eps", "concept", "model_role", "format", "layer"]),
        "limits_rank_resampling": _sorted(frames["resampling"], ["family", "centered", "eps", "layer"]),
        "limits_eps_sensitivity": eps_sensitivity_table(frames["resampling"]),
        "limits_n_sweep": n_sweep_table(frames["n_sweep"]),
        "limits_split_half": _sorted(frames["split_half"], ["family", "centered", "k", "layer"]),
        "limits_sv_gaps": _sorted(frames["sv_gaps"], ["family", "centered", "layer", "index"]),
        "limits_kappa_pairs": _sorted(pairs, ["family", "reference", "eps", "layer"]),
        "limits_kappa_per_reference": kappa_per_reference_table(pairs, headline_eps),
    }


LEFT_OUT = "layer 0 (embedding output) and layers where M_template is zero or rank <= 1 left out, see layers_left_out"
PER_LAYER = "every layer, with its layer_status (only counted layers enter means, medians and counts)"
TITLES = {
    "limits_lrh_baseline": (f"LRH baseline: rho_eps of concept-pair differences vs the safety rho (M_template on D_s), mean over counted "
                            f"layers ({LEFT_OUT})"),
    "limits_lrh_per_layer": f"LRH baseline per layer and eps ({PER_LAYER})",
    "limits_rank_resampling": (f"rank_eps of M_template on D_s per layer: raw subsample range and the corrected interval for a "
                               f"repeat study's rank ({PER_LAYER})"),
    "limits_eps_sensitivity": f"eps sensitivity of rank_eps(M_template on D_s), mean over counted layers, beside pure noise ({LEFT_OUT})",
    "limits_n_sweep": f"n sweep of rank_eps(M_template on D_s), mean over counted layers, beside pure noise of the same (n, d, eps) ({LEFT_OUT})",
    "limits_split_half": f"Split-half principal angles (degrees) between top-k subspaces of M_template on D_s ({PER_LAYER})",
    "limits_sv_gaps": f"Singular-value gaps vs resampling spread: is each top direction identifiable? ({PER_LAYER})",
    "limits_kappa_pairs": f"Spectral gap per family x reference x layer x eps: kappa, structural bound, gamma, tail budgets ({PER_LAYER})",
    "limits_kappa_per_reference": (f"kappa per unsafe reference (headline eps) over counted layers: count above 8 and 2, trivial "
                                   f"certificates, median, max ({LEFT_OUT})"),
}


def write_limits_tables(layer_paths: Sequence[str], table_dir: str, section_path: str, headline_eps: float,
                        claims: Mapping[str, Any], floor_paths: Sequence[str] = ()) -> dict[str, pd.DataFrame]:
    """Write every limits table under `table_dir` and the generated section to `section_path`; return the tables.

    `floor_paths`: the precision-floor tables of the families captured below float32 (their claims say which ranks
    round-off could change)."""
    tables = limits_tables(load_records(layer_paths), headline_eps)
    for name, table in tables.items():
        io.write_table(table, Path(table_dir) / name, title=TITLES[name])
    floor = pd.concat([pd.read_parquet(path) for path in floor_paths], ignore_index=True) if floor_paths else None
    text = limits_section(tables, headline_eps, ClaimThresholds.from_config(claims), floor)
    with io.atomic_path(section_path) as tmp:
        tmp.write_text(text)
    return tables


def plot_limits(layer_paths: Sequence[str], output: str, family: str, headline_eps: float) -> None:
    """Per family: the rank per layer with its corrected interval, the raw subsample range and pure noise; kappa
    against its bounds. Layers left out of aggregates (`shift_status`) are shaded grey."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    frames = load_records(layer_paths)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    resampled = frames["resampling"]
    for centered, colour in zip(CENTERINGS, ("C0", "C1")):
        rows = resampled[(resampled["centered"] == centered) & (resampled["eps"] == headline_eps)].sort_values("layer")
        label = "centered" if centered else "uncentered"
        left.plot(rows["layer"], rows["rank_full"], marker="o", ms=3, color=colour, label=f"{label}: full sample")
        level = f"{100 * float(rows['interval_level'].iloc[0]):g}%" if not rows.empty else ""
        left.fill_between(rows["layer"], rows["pred_low"], rows["pred_high"], color=colour, alpha=0.25,
                          label=f"{label}: corrected {level} interval (repeat study)")
        left.vlines(rows["layer"], rows["raw_low"], rows["raw_high"], color=colour, lw=2.5, alpha=0.8,
                    label=f"{label}: raw subsample {level} range")
        left.plot(rows["layer"], rows["noise_rho"] * rows["d"], color=colour, ls=":", label=f"{label}: pure noise")
    left.set_xlabel("layer (0 = embedding output)")
    left.set_ylabel(f"rank_eps (eps = {headline_eps:g})")
    left.set_title(f"{family}: M_template on D_s")
    left.legend(fontsize=7)
    pairs = frames["spectral_gap"]
    if pairs.empty:
        right.text(0.5, 0.5, "no unsafe reference configured", ha="center", va="center", transform=right.transAxes)
    else:
        rows = pairs[pairs["eps"] == headline_eps]
        for index, (reference, group) in enumerate(rows.groupby("reference")):
            group = group.sort_values("layer")
            right.plot(group["layer"], group["kappa"], marker="o", ms=3, color=f"C{index}", label=f"kappa, {reference}")
            right.plot(group["layer"], group["kappa_bound"], ls="--", color=f"C{index}", label=f"2/(eps r), {reference}")
        right.axhline(KAPPA_THRESHOLD, color="grey", lw=0.8, label="kappa = 8")
        right.set_yscale("log")
        right.legend(fontsize=7)
    left_out = sorted(set(resampled.loc[~resampled["counted"].astype(bool), "layer"])) if not resampled.empty else []
    for axis in (left, right):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axis in (left,) if pairs.empty else (left, right):
        for layer in left_out:
            axis.axvspan(layer - 0.5, layer + 0.5, color="0.85", zorder=0)
    right.set_xlabel("layer (0 = embedding output)")
    right.set_ylabel("kappa")
    right.set_title(f"{family}: spectral gap vs structural bound")
    fig.tight_layout()
    with io.atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
