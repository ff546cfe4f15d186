"""Uncertainty of rank measures: row subsampling, split halves, singular-value gaps, n sweeps (METHODS §3, §7).

Rows (prompts) are resampled WITHOUT replacement: the with-replacement bootstrap duplicates rows, which removes
directions from the sample and biases every rank functional downward. All row subsets are taken from the n x n
Gram matrix G = M M^T computed once (a subset's Gram is G[idx][:, idx], and centering it is J G J), so a draw
costs an eigendecomposition of an m x m matrix instead of an SVD of an m x d one.

Subsets of m < n rows vary less than fresh samples of n and are centred on the rank at m, so their raw range
understates the uncertainty of the rank at n; `rank_prediction_interval` turns them into an interval for the rank a
repeat study with n fresh prompts would find (docs/METHODS.md §7).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.linalg
import scipy.stats

from rankaudit.directions import top_directions
from rankaudit.spectra import as_matrix, energy_rank, noise_rho


def principal_angles(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between span(u) and span(v), both d x k_i column bases.

    0 for identical subspaces, pi/2 for orthogonal ones; min(k_u, k_v) angles. Uses sines for small angles, so
    angles near 0 are accurate (arccos alone loses everything below ~1e-8).
    """
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if u.ndim != 2 or v.ndim != 2 or u.shape[0] != v.shape[0]:
        raise ValueError(f"principal_angles: need d x k bases with the same d, got {u.shape} and {v.shape}")
    return np.sort(scipy.linalg.subspace_angles(u, v))


def _subset_count(n: int, fraction: float) -> int:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"subsampling fraction must lie in (0, 1), got {fraction}")
    count = round(fraction * n)
    if not 2 <= count < n:
        raise ValueError(f"subsampling {fraction} of {n} rows gives {count} rows; need 2 <= rows < {n}")
    return count


def _subset_singular_values(gram: np.ndarray, rows: np.ndarray, centered: bool) -> np.ndarray:
    """Singular values (descending) of M[rows], optionally column-centered, from the full Gram matrix."""
    sub = gram[np.ix_(rows, rows)]
    if centered:
        row_means = sub.mean(axis=1, keepdims=True)
        sub = sub - row_means - row_means.T + sub.mean()
    return np.sqrt(np.clip(np.linalg.eigvalsh(sub)[::-1], 0.0, None))


def subsample_spectra(
    matrix: np.ndarray, *, fraction: float = 0.8, draws: int = 50, seed: int = 0, centered: bool = False
) -> np.ndarray:
    """draws x m singular values of random m = round(fraction n)-row subsets (without replacement).

    Values are of the subset itself (not rescaled); for n <= d all m of them are exact, for n > d the trailing
    m - d are zero.
    """
    matrix = as_matrix(matrix)
    n = matrix.shape[0]
    count = _subset_count(n, fraction)
    if draws < 1:
        raise ValueError(f"subsample_spectra: draws must be >= 1, got {draws}")
    gram = matrix @ matrix.T
    rng = np.random.default_rng(seed)
    return np.stack([_subset_singular_values(gram, rng.choice(n, count, replace=False), centered) for _ in range(draws)])


def subsample_ranks(
    matrix: np.ndarray,
    eps_list: Sequence[float],
    *,
    fraction: float = 0.8,
    draws: int = 50,
    seed: int = 0,
    centered: bool = False,
) -> np.ndarray:
    """draws x len(eps_list) integer array of rank_eps over row subsets (the rank's resampling distribution)."""
    spectra = subsample_spectra(matrix, fraction=fraction, draws=draws, seed=seed, centered=centered)
    return np.array([[energy_rank(values, eps) for eps in eps_list] for values in spectra], dtype=np.int64)


def summarize_ranks(ranks: np.ndarray, eps_list: Sequence[float], d: int) -> list[dict]:
    """One record per eps: mean, std, min, 5/50/95 percentiles and max of a rank distribution, and mean rho."""
    ranks = np.asarray(ranks)
    records = []
    for column, eps in enumerate(eps_list):
        values = ranks[:, column].astype(np.float64)
        q05, q50, q95 = np.percentile(values, [5, 50, 95])
        records.append({
            "eps": float(eps), "draws": int(values.size), "rank_mean": float(values.mean()),
            "rank_std": float(values.std(ddof=1)) if values.size > 1 else 0.0, "rank_min": int(values.min()),
            "rank_q05": float(q05), "rank_median": float(q50), "rank_q95": float(q95), "rank_max": int(values.max()),
            "rho_mean": float(values.mean() / d),
        })
    return records


def jackknife_factor(n: int, m: int) -> float:
    """sqrt(m / (n - m)): turns the spread of a statistic over m-row subsets (without replacement) of n rows into its
    spread over independent n-row samples (the delete-d jackknife with d = n - m; Shao and Wu 1989)."""
    if not 2 <= m < n:
        raise ValueError(f"jackknife_factor: need 2 <= m < n, got m={m}, n={n}")
    return math.sqrt(m / (n - m))


def rank_prediction_interval(full_rank: int, subset_ranks: np.ndarray, n: int, m: int, level: float, max_rank: int) -> dict:
    """The interval that covers, with probability `level`, the rank_eps a repeat study with n fresh prompts finds.

    Derivation (docs/METHODS.md §7): the delete-d jackknife standard error of the rank at n is
    se = sqrt(m / (n - m)) x std(subset ranks); a fresh rank R' and the observed full-sample rank R are independent
    with the same law, so R' - R is symmetric with variance 2 se^2. The interval is R +/- z sqrt(2) se, centred on the
    full-sample rank (not on the subsets, which sit at the rank of m prompts), with z the two-sided normal quantile
    of `level`; because ranks are integers the half-width is rounded to the nearest integer (continuity
    correction) and the ends clipped to [0, max_rank] (max_rank = min(n, d)). Keys: `rank_se`, `half_width` (before
    rounding), `low`, `high` (integers).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"rank_prediction_interval: level must lie in (0, 1), got {level}")
    values = np.asarray(subset_ranks, dtype=np.float64)
    spread = float(values.std(ddof=1)) if values.size > 1 else 0.0
    rank_se = jackknife_factor(n, m) * spread
    half_width = float(scipy.stats.norm.ppf(0.5 + level / 2.0)) * math.sqrt(2.0) * rank_se
    reach = math.floor(half_width + 0.5)
    return {"rank_se": rank_se, "half_width": half_width, "low": max(int(full_rank) - reach, 0),
            "high": min(int(full_rank) + reach, int(max_rank))}


def raw_subset_interval(subset_ranks: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` range of the subset ranks themselves (what the subsamples show before any correction)."""
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(np.asarray(subset_ranks, dtype=np.float64), [tail, 100.0 - tail])
    return float(low), float(high)


def split_half_angles(matrix: np.ndarray, k: int, *, draws: int = 10, seed: int = 0, centered: bool = False) -> np.ndarray:
    """draws x k principal angles between the top-k right singular subspaces of two disjoint random halves.

    Small angles mean the top-k subspace is a property of the prompt distribution, not of the particular prompts.
    """
    matrix = as_matrix(matrix)
    n = matrix.shape[0]
    half = n // 2
    if not 1 <= k <= min(half, matrix.shape[1]):
        raise ValueError(f"split_half_angles: k={k} needs 1 <= k <= min(n // 2, d) = {min(half, matrix.shape[1])}")
    rng = np.random.default_rng(seed)
    angles = []
    for _ in range(draws):
        order = rng.permutation(n)
        halves = [matrix[order[:half]], matrix[order[half : 2 * half]]]
        if centered:
            halves = [h - h.mean(axis=0, keepdims=True) for h in halves]
        angles.append(principal_angles(top_directions(halves[0], k), top_directions(halves[1], k)))
    return np.stack(angles)


def singular_value_gaps(
    matrix: np.ndarray,
    *,
    n_top: int = 10,
    fraction: float = 0.8,
    draws: int = 50,
    seed: int = 0,
    centered: bool = False,
) -> list[dict]:
    """Gaps around each of the top singular values and whether its direction is identifiable.

    The sampling spread of s_i is the delete-d jackknife estimate from the subsamples: subset values are rescaled
    by sqrt(n / m) to the full matrix's scale, and their standard deviation is multiplied by sqrt(m / (n - m)),
    which turns the spread among m-row subsets of the data into the spread of s_i across n-row samples. Direction
    i is flagged not identifiable when the smaller of its gaps to s_{i-1} and s_{i+1} is below that spread
    (for i = 1 only the gap to s_2 counts): resampling could then swap or rotate it with a neighbour.
    """
    matrix = as_matrix(matrix)
    if centered:
        matrix = matrix - matrix.mean(axis=0, keepdims=True)
    n = matrix.shape[0]
    count = _subset_count(n, fraction)
    gram = matrix @ matrix.T
    full = np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None))
    top = min(n_top, full.size - 1, count - 1)
    if top < 1:
        raise ValueError(f"singular_value_gaps: shape {matrix.shape} has too few singular values for a gap")
    rng = np.random.default_rng(seed)
    subsets = np.stack([
        _subset_singular_values(gram, rng.choice(n, count, replace=False), centered)[: top + 1] for _ in range(draws)
    ])
    spread = subsets.std(axis=0, ddof=1) * np.sqrt(n / count) * jackknife_factor(n, count) if draws > 1 else np.zeros(top + 1)
    records = []
    for i in range(top):
        gap_next = float(full[i] - full[i + 1])
        gap_prev = float(full[i - 1] - full[i]) if i > 0 else float("inf")
        smallest_gap = min(gap_prev, gap_next)
        records.append({
            "index": i + 1, "singular_value": float(full[i]), "gap_prev": gap_prev, "gap_next": gap_next,
            "spread": float(spread[i]), "identifiable": bool(smallest_gap > spread[i]),
        })
    return records


def n_sweep(
    matrix: np.ndarray,
    eps_list: Sequence[float],
    ns: Sequence[int] = (50, 100, 200),
    *,
    draws: int = 50,
    seed: int = 0,
    centered: bool = False,
    noise_draws: int = 3,
) -> list[dict]:
    """rank_eps at prompt counts `ns` (each capped by the rows available), next to pure noise of the same shape.

    Below the available n the rank is a distribution over `draws` subsets of that size (without replacement); at
    the available n it is the full matrix's single value. A capped request is marked `capped` and a count reached
    twice is reported once.
    """
    matrix = as_matrix(matrix)
    n, d = matrix.shape
    gram = matrix @ matrix.T
    rng = np.random.default_rng(seed)
    done: set[int] = set()
    records = []
    for requested in ns:
        size = min(int(requested), n)
        if size in done or size < 2:
            continue
        done.add(size)
        subsets = [np.arange(n)] if size == n else [rng.choice(n, size, replace=False) for _ in range(draws)]
        spectra = [_subset_singular_values(gram, rows, centered) for rows in subsets]
        for eps in eps_list:
            ranks = np.array([energy_rank(values, eps) for values in spectra], dtype=np.float64)
            records.append({
                "n_requested": int(requested), "n": size, "capped": size < int(requested), "eps": float(eps),
                "draws": len(subsets), "rank_mean": float(ranks.mean()),
                "rank_std": float(ranks.std(ddof=1)) if ranks.size > 1 else 0.0,
                "rank_min": int(ranks.min()), "rank_max": int(ranks.max()), "rho_mean": float(ranks.mean() / d),
                "rho_min_mean": float(ranks.mean() / min(size, d)),
                "noise_rho": noise_rho(size, d, float(eps), noise_draws, seed),
            })
    return records
