"""Singular-value spectra and the rank measures computed from them (METHODS §3).

Everything here is numpy/scipy in float64, so the per-layer analysis jobs never import torch. Matrices are
n x d with one row per prompt. Singular values come from the eigenvalues of the smaller Gram matrix by default:
for the paper's shapes (n = 200, d = 4096) that is ~10x faster than an SVD and, because every measure below is a
function of the energies s_i^2, the Gram route loses nothing that matters (its absolute error on s_i^2 is about
max(n, d) * machine-eps * s_1^2, far below any energy fraction we threshold). `method="svd"` is available when
small singular values themselves are needed accurately. See docs/THEORY.md for the definitions and proofs.
Which modes count as non-zero follows the precision the activations were computed in (`dtype`, default float64):
float32 or bfloat16 round-off is not signal (`numerical_tolerance`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import scipy.linalg

Method = Literal["gram", "svd"]

# An energy fraction that differs from the eps threshold by less than this (relative to the total energy) is
# treated as meeting it. Round-off in sum(s_i^2) is ~ k * 1e-16 and the Gram eigenvalues carry ~ n * 1e-16 of
# s_1^2, so 1e-10 absorbs both with a wide margin while being far below any eps a study would use.
ENERGY_RTOL = 1e-10

# Unit round-off u (half the gap between 1 and the next representable number) of each precision a model can be run
# in: a stored activation x is x_true * (1 + delta) with |delta| <= u. float64 is the default: the analysis's own.
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def as_matrix(matrix: np.ndarray, name: str = "matrix") -> np.ndarray:
    """Return `matrix` as a finite 2-D float64 array, naming it in the error otherwise."""
    array = np.asarray(matrix, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (n prompts x d) array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: contains NaN or inf")
    return array


def center_columns(matrix: np.ndarray) -> np.ndarray:
    """Remove the column mean (the mean row), leaving the spread of prompts around their common shift."""
    matrix = as_matrix(matrix)
    return matrix - matrix.mean(axis=0, keepdims=True)


def singular_values(matrix: np.ndarray, method: Method = "gram") -> np.ndarray:
    """All min(n, d) singular values of `matrix`, descending, float64.

    `gram`: sqrt of the eigenvalues of the smaller of M M^T and M^T M (negative round-off clipped to 0).
    `svd`: LAPACK's divide-and-conquer SVD, accurate for small singular values as well.
    """
    matrix = as_matrix(matrix)
    n, d = matrix.shape
    if min(n, d) == 0:
        return np.zeros(0)
    if method == "svd":
        values = scipy.linalg.svd(matrix, compute_uv=False, check_finite=False)
    elif method == "gram":
        gram = matrix @ matrix.T if n <= d else matrix.T @ matrix
        eigenvalues = np.linalg.eigvalsh(gram)[::-1]
        values = np.sqrt(np.clip(eigenvalues, 0.0, None))
    else:
        raise ValueError(f"singular_values: unknown method {method!r} (use 'gram' or 'svd')")
    return np.asarray(values, dtype=np.float64)


def energy_rank(singular_values: np.ndarray, eps: float) -> int:
    """Energy eps-rank: min k with sum_{i<=k} s_i^2 >= (1 - eps) sum_i s_i^2; 0 for the zero matrix.

    Evaluated as "tail energy after k <= eps * total", with the tail summed smallest-first (no cancellation for
    small eps), and a relative tolerance ENERGY_RTOL on the comparison so that a spectrum sitting exactly on the
    threshold (e.g. energies [0.5, 0.3, 0.15, 0.05] at eps = 0.05) gives the mathematically exact answer.
    """
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"energy_rank: eps must lie in [0, 1), got {eps}")
    energies = np.sort(np.square(np.asarray(singular_values, dtype=np.float64)))[::-1]
    total = float(energies.sum())
    if total == 0.0:
        return 0
    # tails[k] = energy of modes k+1, ..., m (1-based), i.e. what a rank-k approximation leaves out.
    tails = np.append(np.cumsum(energies[::-1])[::-1], 0.0)
    meets = tails <= (eps + ENERGY_RTOL) * total
    return int(np.argmax(meets))


def unit_roundoff(dtype: str) -> float:
    """u of `dtype` (the precision the activations were computed in), naming the accepted ones otherwise."""
    if dtype not in UNIT_ROUNDOFF:
        raise ValueError(f"dtype {dtype!r}: not a precision activations are computed in (use one of {sorted(UNIT_ROUNDOFF)})")
    return UNIT_ROUNDOFF[dtype]


def coarsest_dtype(dtypes: Iterable[str]) -> str:
    """The least precise of `dtypes`: a difference of cells is only as exact as its coarsest operand."""
    dtypes = list(dtypes)
    if not dtypes:
        raise ValueError("coarsest_dtype: no dtypes given")
    return max(dtypes, key=unit_roundoff)


def numerical_tolerance(
    singular_values: np.ndarray, shape: tuple[int, int], dtype: str = "float64", operand_norm: float | None = None,
) -> float:
    """Largest singular value that round-off alone can explain: the larger of two floors.

    - the Gram route's own: sqrt(max(n, d) * eps_float64) * s_1 (eigenvalues of M M^T carry ~ that error);
    - the data's precision: u_dtype * operand_norm, where operand_norm is the sum of the Frobenius norms of the
      stored matrices M is a difference of (default ||M||_F: M itself was rounded). Rounding every stored entry to
      relative precision u perturbs M by E with ||E||_2 <= ||E||_F <= u * sum_k ||X_k||_F, so no singular value
      of round-off exceeds it; a difference of large activations carries their round-off, not its own.
    For float64 data the Gram floor dominates unless M is ~1e8 times smaller than its operands (a centered matrix
    that is round-off of its uncentered one), so the default keeps the float64 count.
    """
    return float(np.sqrt(_tolerance_sq(np.asarray(singular_values, dtype=np.float64), shape, dtype, operand_norm)))


def _tolerance_sq(values: np.ndarray, shape: tuple[int, int], dtype: str, operand_norm: float | None) -> float:
    """numerical_tolerance squared, compared with s_i^2 directly (so float64 counts are exactly as before)."""
    precision = unit_roundoff(dtype)
    if values.size == 0 or values.max() == 0.0:
        return 0.0
    gram_floor_sq = max(shape) * np.finfo(np.float64).eps * float(values.max()) ** 2
    norm_sq = float(np.sum(np.square(values))) if operand_norm is None else float(operand_norm) ** 2
    return max(gram_floor_sq, precision**2 * norm_sq)


def numerical_rank(
    singular_values: np.ndarray, shape: tuple[int, int], dtype: str = "float64", operand_norm: float | None = None,
) -> int:
    """Count of modes above `numerical_tolerance` (the round-off floor of the Gram route and of the data's dtype)."""
    values = np.asarray(singular_values, dtype=np.float64)
    tolerance_sq = _tolerance_sq(values, shape, dtype, operand_norm)
    if tolerance_sq == 0.0:
        return 0
    return int(np.count_nonzero(np.square(values) > tolerance_sq))


def _retained(singular_values: np.ndarray, shape: tuple[int, int], dtype: str = "float64",
              operand_norm: float | None = None) -> np.ndarray:
    """The numerically non-zero singular values (descending); all entropy-type ranks use exactly these."""
    values = np.sort(np.asarray(singular_values, dtype=np.float64))[::-1]
    return values[: numerical_rank(values, shape, dtype, operand_norm)]


def stable_rank(singular_values: np.ndarray) -> float:
    """||M||_F^2 / s_1^2 (the Renyi-infinity exponential of the energy distribution); 0 for the zero matrix."""
    energies = np.square(np.asarray(singular_values, dtype=np.float64))
    return float(energies.sum() / energies.max()) if energies.size and energies.max() > 0 else 0.0


def participation_ratio(singular_values: np.ndarray) -> float:
    """(sum s^2)^2 / sum s^4 (the Renyi-2 exponential of the energy distribution); 0 for the zero matrix."""
    energies = np.square(np.asarray(singular_values, dtype=np.float64))
    denominator = float(np.square(energies).sum())
    return float(energies.sum() ** 2 / denominator) if denominator > 0 else 0.0


def entropy_rank(weights: np.ndarray) -> float:
    """exp(Shannon entropy) of `weights` normalised to sum 1; 0 when all weights are 0."""
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights[weights > 0]
    if weights.size == 0:
        return 0.0
    p = weights / weights.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def gavish_donoho_threshold(singular_values: np.ndarray, shape: tuple[int, int]) -> float:
    """Gavish-Donoho (2014) hard threshold for unknown noise level: omega(beta) * median singular value.

    beta = min(n, d) / max(n, d); omega is their cubic approximation of the optimal coefficient.
    """
    values = np.asarray(singular_values, dtype=np.float64)
    if values.size == 0:
        return 0.0
    beta = min(shape) / max(shape)
    omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
    return float(omega * np.median(values))


def gavish_donoho_count(
    singular_values: np.ndarray, shape: tuple[int, int], dtype: str = "float64", operand_norm: float | None = None,
) -> int:
    """Modes above the Gavish-Donoho threshold and above the round-off floor (`numerical_tolerance`).

    The threshold estimates white noise from the median singular value; round-off is not white (its largest
    modes sit a few times above its median), so without the floor an exactly rank-r matrix stored in float32
    counts its largest round-off mode as signal.
    """
    values = np.asarray(singular_values, dtype=np.float64)
    if values.size == 0 or values.max() == 0.0:
        return 0
    threshold = max(gavish_donoho_threshold(values, shape), numerical_tolerance(values, shape, dtype, operand_norm))
    return int(np.count_nonzero(values > threshold))


@functools.lru_cache(maxsize=256)
def null_top_ratio(n: int, d: int, seed: int, draws: int = 1) -> float:
    """Mean over draws of s_1 / ||G||_F for a standard Gaussian n x d matrix G.

    The ratio is scale-free, so one cached value per (shape, seed) serves every matrix of that shape: a null of
    any Frobenius norm F has top singular value F times this ratio.
    """
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(draws):
        noise = rng.standard_normal((n, d))
        values = singular_values(noise)
        ratios.append(values[0] / np.sqrt(np.sum(np.square(values))))
    return float(np.mean(ratios))


def noise_ranks(n: int, d: int, eps: float, draws: int = 5, seed: int = 0) -> np.ndarray:
    """rank_eps of `draws` standard Gaussian n x d matrices (the pure-noise reference for that shape)."""
    rng = np.random.default_rng(seed)
    return np.array([energy_rank(singular_values(rng.standard_normal((n, d))), eps) for _ in range(draws)])


@functools.lru_cache(maxsize=1024)
def noise_rho(n: int, d: int, eps: float, draws: int = 5, seed: int = 0) -> float:
    """Mean rho_eps = rank_eps / d of pure Gaussian noise of shape n x d (about 0.9 n / d when d >> n)."""
    return float(noise_ranks(n, d, eps, draws, seed).mean() / d)


def explained_energy(singular_values: np.ndarray) -> np.ndarray:
    """Cumulative explained-energy curve: entry k-1 is sum_{i<=k} s_i^2 / sum_i s_i^2 (ends at 1)."""
    energies = np.square(np.sort(np.asarray(singular_values, dtype=np.float64))[::-1])
    total = energies.sum()
    return np.cumsum(energies) / total if total > 0 else np.zeros_like(energies)


@dataclass(frozen=True)
class SpectrumSummary:
    """Every rank measure of one matrix (one family x variant x dataset x layer, centered or not)."""

    n: int
    d: int
    centered: bool
    dtype: str
    singular_values: np.ndarray
    eps: tuple[float, ...]
    rank_eps: tuple[int, ...]
    rho_d: tuple[float, ...]
    rho_min: tuple[float, ...]
    mean_energy_fraction: float
    frobenius_sq: float
    numerical_tolerance: float
    numerical_rank: int
    stable_rank: float
    participation_ratio: float
    energy_entropy_rank: float
    roy_vetterli_rank: float
    null_top_singular_value: float
    noise_count_null: int
    gavish_donoho_threshold: float
    noise_count_gavish_donoho: int
    explained_energy: np.ndarray

    def rank_at(self, eps: float) -> int:
        """rank_eps for one of the eps values this summary was computed at."""
        return self.rank_eps[self.eps.index(eps)]

    def to_dict(self) -> dict:
        """JSON-ready dict (arrays as lists)."""
        payload = asdict(self)
        for key in ("singular_values", "explained_energy"):
            payload[key] = payload[key].tolist()
        for key in ("eps", "rank_eps", "rho_d", "rho_min"):
            payload[key] = list(payload[key])
        return payload


def spectrum_summary(
    matrix: np.ndarray,
    eps_list: Sequence[float],
    *,
    centered: bool,
    null_seed: int = 0,
    null_draws: int = 1,
    method: Method = "gram",
    dtype: str = "float64",
    operand_norm: float | None = None,
) -> SpectrumSummary:
    """All rank measures of `matrix` (after removing its column mean when `centered`).

    `dtype` is the precision the activations behind `matrix` were computed in and `operand_norm` the sum of the
    Frobenius norms of the stored matrices it is a difference of (default: its own, uncentered); together they set
    the round-off floor below which no mode counts (`numerical_tolerance`; centering cannot enlarge round-off, so
    one floor serves both summaries). Both are recorded in the summary.

    The mean-energy fraction n * ||mean row||^2 / ||M||_F^2 always refers to the uncentered matrix, so the two
    summaries of one matrix report the same value. The entropy-type ranks use only the numerically non-zero
    modes, which makes 1 <= stable <= participation <= energy-entropy <= Roy-Vetterli <= numerical rank exact.
    Noise-calibrated counts: modes above the top singular value of a Gaussian null of the same shape scaled to
    the same Frobenius norm (conservative: the null then carries the signal's energy too), and modes above the
    Gavish-Donoho threshold, both only above the round-off floor.
    """
    raw = as_matrix(matrix)
    n, d = raw.shape
    frobenius_raw = float(np.sum(np.square(raw)))
    mean_row = raw.mean(axis=0)
    mean_fraction = float(n * np.sum(np.square(mean_row)) / frobenius_raw) if frobenius_raw > 0 else 0.0
    work = raw - mean_row if centered else raw
    values = singular_values(work, method=method)
    operand_norm = float(np.sqrt(frobenius_raw)) if operand_norm is None else float(operand_norm)
    tolerance = numerical_tolerance(values, (n, d), dtype, operand_norm)
    retained = _retained(values, (n, d), dtype, operand_norm)
    frobenius = float(np.sum(np.square(values)))
    ranks = tuple(energy_rank(values, eps) for eps in eps_list)
    null_top = null_top_ratio(n, d, null_seed, null_draws) * np.sqrt(frobenius)
    gd_threshold = gavish_donoho_threshold(values, (n, d))
    return SpectrumSummary(
        n=n,
        d=d,
        centered=centered,
        dtype=dtype,
        singular_values=values,
        eps=tuple(float(e) for e in eps_list),
        rank_eps=ranks,
        rho_d=tuple(rank / d for rank in ranks),
        rho_min=tuple(rank / min(n, d) for rank in ranks),
        mean_energy_fraction=mean_fraction,
        frobenius_sq=frobenius,
        numerical_tolerance=tolerance,
        numerical_rank=int(retained.size),
        stable_rank=stable_rank(retained),
        participation_ratio=participation_ratio(retained),
        energy_entropy_rank=entropy_rank(np.square(retained)),
        roy_vetterli_rank=entropy_rank(retained),
        null_top_singular_value=float(null_top),
        noise_count_null=int(np.count_nonzero(values > null_top)) if frobenius > 0 else 0,
        gavish_donoho_threshold=gd_threshold,
        noise_count_gavish_donoho=gavish_donoho_count(values, (n, d), dtype, operand_norm) if frobenius > 0 else 0,
        explained_energy=explained_energy(values),
    )
