"""Matrices and vectors whose rank or cosine is not evidence: exact zeros and rank <= 1 certificates.

At layer 0 (the embedding output) the chat-format read token is the same template token for every prompt, so
M_template has identical rows (rank <= 1), its centered version and M_DiD are zero and the Arditi direction is
zero, which makes every cosine 0/0. Such layers must be reported as what they are, and kept out of every mean
over layers (docs/METHODS.md §3).

"Zero" is decided in float64 against the scale of the activations the layer was built from: a matrix or vector
counts as zero when every entry is at most ZERO_RTOL times the largest absolute activation among its input cells.
The analysis only subtracts float32/bfloat16 values in float64 (exact) and averages at most n rows (round-off at
most about (n + 3) * 2^-53, i.e. 1.1e-13 of the largest activation for n = 1000); the coarsest genuine difference
between two float32 activations is 2^-24 ~ 6e-8 of that activation. ZERO_RTOL = 1e-10 sits three decades above
the first (valid up to ~10^6 rows) and far below the second.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

ZERO_RTOL = 1e-10

OK = "ok"
ZERO = "zero"
RANK_AT_MOST_1 = "rank_at_most_1"
MATRIX_STATUSES = (OK, ZERO, RANK_AT_MOST_1)

COSINE_OK = "ok"
COSINE_UNDEFINED = "undefined"


def activation_scale(arrays: Iterable[np.ndarray]) -> float:
    """Largest absolute entry over the input cells: the scale that round-off in the differences is measured against."""
    return max((float(np.max(np.abs(array))) for array in arrays if np.size(array)), default=0.0)


def zero_tolerance(scale: float) -> float:
    """Absolute per-entry tolerance below which a difference of cells of this scale is float64 round-off."""
    return ZERO_RTOL * scale


def is_zero(array: np.ndarray, tolerance: float) -> bool:
    """True when every entry of `array` is at most `tolerance` in absolute value (an empty array is zero)."""
    array = np.asarray(array)
    return array.size == 0 or float(np.max(np.abs(array))) <= tolerance


def matrix_status(matrix: np.ndarray, numerical_rank: int, tolerance: float) -> str:
    """ZERO, RANK_AT_MOST_1 (numerical rank <= 1: one shared row direction at most) or OK."""
    if is_zero(matrix, tolerance):
        return ZERO
    if numerical_rank <= 1:
        return RANK_AT_MOST_1
    return OK
