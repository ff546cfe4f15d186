"""The limits records of one layer (METHODS §3 and §7): rho next to its nulls, its uncertainty and its bounds.

Pure functions of matrices, one record list per kind:
- `lrh`: rho_eps of every concept-pair difference matrix (base/aligned x raw/chat x concept set) next to the safety
  rho of the same layer (M_template = A(chat) - B(chat) on D_s), their ratio, and the ratio at a matched prompt count;
- `resampling`: the full-sample rank at every eps of the sweep with pure noise of the same (n, d, eps) beside it, and
  the rank's distribution over subsamples drawn without replacement;
- `split_half`: principal angles between the top-k subspaces of two disjoint random halves;
- `sv_gaps`: each leading singular value's gaps against its resampling spread (is its direction identifiable?);
- `n_sweep`: the rank at each requested prompt count, capped by the data, next to pure noise;
- `spectral_gap`: for every unsafe reference, kappa, the structural bound (checked; a violation raises
  `StructuralBoundError`), the modal separation gamma and the tail-energy budgets.
Every matrix is analysed uncentered and centered (column mean removed), except S, which §7 defines uncentered.
Every record carries its layer's `layer_status` (`shift_status`): layer 0 (the embedding output) and layers whose
M_template (uncentered or centered) is zero or of numerical rank <= 1 stay in the per-layer tables but are left out
of every mean, median and count. numpy only: these jobs never import torch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankaudit import degeneracy, resampling, spectra
from rankaudit.bounds import spectral_gap
from rankaudit.config_schema import settings_from_section
from rankaudit.limits.claims import CENTERINGS

logger = logging.getLogger(__name__)

RECORD_KINDS = ("lrh", "resampling", "split_half", "sv_gaps", "n_sweep", "spectral_gap")
# kappa <= 2 / (eps r), so kappa > 8 is impossible by arithmetic once eps r >= 1/4 (docs/THEORY.md §7).
STRUCTURAL_EPS_R = 0.25
EMBEDDING_OUTPUT = "embedding output"


class StructuralBoundError(AssertionError):
    """kappa exceeded gamma / (eps r) or 2 / (eps r): impossible mathematically, so the inputs or the code are wrong."""


@dataclass(frozen=True)
class LimitsSettings:
    """What one per-layer limits job reads of the `limits` section (defaults: config/schema/limits.schema.yaml).

    `headline_eps` and `claims` belong to the tables, the figure and the generated section, not to the layer jobs
    (their params leave them out, so changing them re-runs no layer job); that `headline_eps` is one of `eps` is a
    start-up config check (`rankaudit.config_checks`)."""

    eps: tuple[float, ...]
    subsample_fraction: float
    draws: int
    split_half_k: tuple[int, ...]
    split_half_draws: int
    gap_top: int
    n_sweep: tuple[int, ...]
    tail_eps_fraction: float
    noise_draws: int
    interval_level: float
    seed: int

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> LimitsSettings:
        """Build from a config section (keys this job does not read, such as `headline_eps` or `claims`, are ignored)."""
        return settings_from_section(cls, section, "limits")


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
            logger.info("split-half k=%d skipped: a half of shape %s allows k <= %d", k, matrix.shape, limit)
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


