"""Directions in R^d and how a matrix's top singular directions relate to them (METHODS §4).

Matrices are n x d with one row per prompt, so the directions that live in the residual stream are the RIGHT
singular vectors (rows of V^T); METHODS writes the transpose and calls them left singular vectors u_k. Here
`top_directions(M, k)` returns them as a d x k orthonormal basis U_k, and u_1 is its first column.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg

from rankaudit.degeneracy import COSINE_OK, COSINE_UNDEFINED, is_zero
from rankaudit.spectra import as_matrix


def difference_in_means(safety: np.ndarray, control: np.ndarray) -> np.ndarray:
    """Arditi's r = mean row of `safety` - mean row of `control`, float64 and unnormalized."""
    safety = as_matrix(safety, "safety")
    control = as_matrix(control, "control")
    if safety.shape[1] != control.shape[1]:
        raise ValueError(f"difference_in_means: d differs between safety {safety.shape} and control {control.shape}")
    return safety.mean(axis=0) - control.mean(axis=0)


def top_directions(matrix: np.ndarray, k: int) -> np.ndarray:
    """d x k orthonormal basis of the top-k right singular vectors of the n x d `matrix`.

    For n <= d the basis comes from the n x n Gram matrix (V_k = M^T U_k / s_k, ~8x faster than an SVD at the
    paper's shapes); if that basis is not orthonormal to 1e-10 (a near-zero s_k) the full SVD is used instead.
    Signs are fixed so that each column's largest-magnitude entry is positive (deterministic output).
    """
    matrix = as_matrix(matrix)
    n, d = matrix.shape
    available = min(n, d)
    if not 1 <= k <= available:
        raise ValueError(f"top_directions: k={k} outside [1, min(n, d)={available}] for shape {matrix.shape}")
    basis = _gram_basis(matrix, k) if n <= d else None
    if basis is None:
        _, _, vt = scipy.linalg.svd(matrix, full_matrices=False, check_finite=False)
        basis = vt[:k].T
    pivots = basis[np.argmax(np.abs(basis), axis=0), np.arange(k)]
    return basis * np.where(pivots < 0, -1.0, 1.0)


def _gram_basis(matrix: np.ndarray, k: int) -> np.ndarray | None:
    """Top-k right singular vectors via eigh(M M^T), or None when they are not numerically orthonormal."""
    eigenvalues, vectors = np.linalg.eigh(matrix @ matrix.T)
    top = eigenvalues[::-1][:k]
    if top[-1] <= 0:
        return None
    basis = (matrix.T @ vectors[:, ::-1][:, :k]) / np.sqrt(top)
    if np.max(np.abs(basis.T @ basis - np.eye(k))) > 1e-10:
        return None
    return basis


def abs_cos(u: np.ndarray, v: np.ndarray) -> float:
    """|cos| of the angle between two vectors; NaN when either is zero (no direction to compare)."""
    u = np.asarray(u, dtype=np.float64).ravel()
    v = np.asarray(v, dtype=np.float64).ravel()
    if u.shape != v.shape:
        raise ValueError(f"abs_cos: shapes {u.shape} and {v.shape} differ")
    norms = np.linalg.norm(u) * np.linalg.norm(v)
    return float(min(1.0, abs(u @ v) / norms)) if norms > 0 else float("nan")


def cos_top_with(matrix: np.ndarray, direction: np.ndarray) -> float:
    """|cos(u_1(M), direction)|, e.g. with the Arditi r of the same layer."""
    return abs_cos(top_directions(matrix, 1)[:, 0], direction)


def cos_top_mean(matrix: np.ndarray) -> float:
    """|cos(u_1(M), mean row of M)|: how much of the top direction is just the common shift."""
    matrix = as_matrix(matrix)
    return abs_cos(top_directions(matrix, 1)[:, 0], matrix.mean(axis=0))


def capture_fraction(basis: np.ndarray, direction: np.ndarray) -> float:
    """c = ||U^T r|| / ||r|| for an orthonormal d x k basis U: the part of r inside span(U), in [0, 1]."""
    basis = np.asarray(basis, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64).ravel()
    if basis.ndim != 2 or basis.shape[0] != direction.size:
        raise ValueError(f"capture_fraction: basis {basis.shape} does not match a direction of length {direction.size}")
    norm = np.linalg.norm(direction)
    if norm == 0:
        return float("nan")
    return float(min(1.0, np.linalg.norm(basis.T @ direction) / norm))


def capture_fractions(matrix: np.ndarray, direction: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """c_k = ||U_k^T r|| / ||r|| for each k in `ks`, U_k the top-k right singular vectors of `matrix`.

    A k above min(n, d) is evaluated at min(n, d) (the whole row space), under its requested key.
    """
    matrix = as_matrix(matrix)
    available = min(matrix.shape)
    if any(k < 1 for k in ks):
        raise ValueError(f"capture_fractions: every k must be >= 1, got {list(ks)}")
    basis = top_directions(matrix, min(max(ks), available)) if ks else np.zeros((matrix.shape[1], 0))
    return {int(k): capture_fraction(basis[:, : min(k, available)], direction) for k in ks}


def direction_summary(
    matrix: np.ndarray,
    direction: np.ndarray,
    ks: Sequence[int],
    *,
    zero_tolerance: float = 0.0,
    basis: np.ndarray | None = None,
) -> dict:
    """One SVD, every §4 number of one matrix: |cos(u_1, r)|, |cos(u_1, mean row)| and c_k for k in `ks`.

    A vector with every entry at most `zero_tolerance` (see `rankaudit.degeneracy`) has no direction, so a number
    that needs it is None (JSON null), not 0 or NaN: u_1 needs a non-zero matrix, |cos(u_1, r)| and c_k also a
    non-zero r, |cos(u_1, mean row)| a non-zero mean row. `status` is "undefined" when any number is None and
    `zero_vectors` names the zero ones. `basis`, when given, is the matrix's top-k basis (`top_directions`) with
    k >= min(max(ks), min(n, d)), so a caller that already has it pays no second decomposition.
    """
    matrix = as_matrix(matrix)
    direction = np.asarray(direction, dtype=np.float64).ravel()
    available = min(matrix.shape)
    mean_row = matrix.mean(axis=0)
    zero_vectors = [
        name for name, vector in (("matrix", matrix), ("refusal_direction", direction), ("mean_row", mean_row))
        if is_zero(vector, zero_tolerance)
    ]
    if "matrix" in zero_vectors:
        top = None
    else:
        if basis is None:
            basis = top_directions(matrix, min(max([1, *ks]), available))
        top = basis[:, 0]
    has_direction = top is not None and "refusal_direction" not in zero_vectors
    summary = {
        "cos_top_direction": abs_cos(top, direction) if has_direction else None,
        "cos_top_mean": abs_cos(top, mean_row) if top is not None and "mean_row" not in zero_vectors else None,
        "capture": {
            int(k): capture_fraction(basis[:, : min(k, available)], direction) if has_direction else None for k in ks
        },
        "zero_vectors": zero_vectors,
    }
    defined = summary["cos_top_direction"] is not None and summary["cos_top_mean"] is not None
    summary["status"] = COSINE_OK if defined else COSINE_UNDEFINED
    return summary
