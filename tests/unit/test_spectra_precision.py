"""Numerical rank and noise counts follow the precision the activations were computed in (docs/THEORY.md §4).

Planted exactly-rank-r shifts are stored the way a run stores them: two activation matrices (base X and
X + M, M exactly rank r, X large and full rank) each rounded through the run's dtype with torch, then differenced
in float64. The float64 floor counts float32 round-off as modes; the dtype's floor does not.
"""

import numpy as np
import pytest
import torch

from rankaudit import spectra

RANK = 4
N, D = 32, 256
DTYPES = ["float64", "float32", "float16", "bfloat16"]


def _planted(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(activations X, exactly rank-4 shift M): ||X||_F ~ 75 x M's smallest mode, as at SmolLM2's planted layer.

    bfloat16 round-off of X puts ~0.55 into every mode of the difference, and the worst-case floor u * (||X||_F +
    ||X + M||_F) is ~7, so M's smallest mode (12) is kept only because it sits above that bound.
    """
    rng = np.random.default_rng(seed)
    left, _ = np.linalg.qr(rng.standard_normal((N, RANK)))
    right, _ = np.linalg.qr(rng.standard_normal((D, RANK)))
    shift = (left * np.array([32.0, 24.0, 16.0, 12.0])) @ right.T
    activations = 2.0 * rng.standard_normal((N, D)) + 10.0 * rng.standard_normal(D)  # a common mean plus spread
    return activations, shift


def _rounded(matrix: np.ndarray, dtype: str) -> np.ndarray:
    """`matrix` stored in `dtype` and read back exactly (what a capture in that dtype writes)."""
    return torch.from_numpy(matrix).to(getattr(torch, dtype)).to(torch.float64).numpy()


def _stored_shift(seed: int, dtype: str) -> tuple[np.ndarray, float]:
    """(rounded(X + M) - rounded(X), the sum of the two stored operands' Frobenius norms)."""
    activations, shift = _planted(seed)
    base, aligned = _rounded(activations, dtype), _rounded(activations + shift, dtype)
    return aligned - base, float(np.linalg.norm(base) + np.linalg.norm(aligned))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_rank_of_a_difference_of_rounded_activations(dtype, seed):
    difference, operands = _stored_shift(seed, dtype)
    values = spectra.singular_values(difference)
    assert spectra.numerical_rank(values, difference.shape, dtype, operands) == RANK
    for centered in (False, True):
        summary = spectra.spectrum_summary(difference, [0.05], centered=centered, dtype=dtype, operand_norm=operands)
        assert summary.numerical_rank == RANK and summary.noise_count_gavish_donoho == RANK
        assert summary.dtype == dtype and summary.to_dict()["dtype"] == dtype
        assert summary.to_dict()["numerical_tolerance"] == summary.numerical_tolerance
        assert values[RANK] < summary.numerical_tolerance < values[RANK - 1]
    # the floor is a bound on round-off: the error actually stored never exceeds it in spectral norm
    exact = _planted(seed)[1]
    error = np.linalg.norm(difference - exact, 2)
    assert error <= spectra.numerical_tolerance(values, difference.shape, dtype, operands)


def test_float64_floor_counts_float32_round_off_as_modes():
    """The bug of issue 14: a float32 run judged by the float64 floor reports round-off modes as rank."""
    gavish_donoho_float64 = []
    for seed in range(4):
        difference, operands = _stored_shift(seed, "float32")
        values = spectra.singular_values(difference)
        assert spectra.numerical_rank(values, difference.shape) > RANK  # float64 default: round-off counted
        assert spectra.numerical_rank(values, difference.shape, "float32", operands) == RANK
        assert spectra.gavish_donoho_count(values, difference.shape, "float32", operands) == RANK
        gavish_donoho_float64.append(spectra.gavish_donoho_count(values, difference.shape))
        default = spectra.spectrum_summary(difference, [0.05], centered=True)
        assert default.dtype == "float64" and default.numerical_rank > RANK
    assert max(gavish_donoho_float64) > RANK  # round-off's largest modes sit above its own median-based threshold


@pytest.mark.parametrize("dtype", DTYPES)
def test_planted_rank_of_a_matrix_rounded_once(dtype):
    """Without operands the matrix itself is the stored quantity: its own norm sets the floor."""
    _, shift = _planted(5)
    stored = _rounded(shift, dtype)
    summary = spectra.spectrum_summary(stored, [0.05], centered=False, dtype=dtype)
    assert summary.numerical_rank == RANK and summary.noise_count_gavish_donoho == RANK
    assert np.linalg.norm(stored - shift, 2) <= summary.numerical_tolerance


def test_float64_default_unchanged_and_entropy_ranks_use_retained_modes():
    """float64 (the default) keeps the Gram floor; the ordering chain ends at the dtype-aware numerical rank."""
    difference, operands = _stored_shift(3, "bfloat16")
    values = spectra.singular_values(difference)
    gram_floor = np.sqrt(max(difference.shape) * np.finfo(np.float64).eps) * values[0]
    assert spectra.numerical_tolerance(values, difference.shape) == pytest.approx(gram_floor, rel=1e-12)
    assert spectra.numerical_rank(values, difference.shape) == int(np.count_nonzero(values**2 > gram_floor**2))
    summary = spectra.spectrum_summary(difference, [0.05], centered=False, dtype="bfloat16", operand_norm=operands)
    kept = values[:RANK]
    assert summary.stable_rank == pytest.approx(spectra.stable_rank(kept))
    assert summary.participation_ratio <= summary.energy_entropy_rank <= summary.roy_vetterli_rank <= RANK


def test_dtype_helpers():
    assert spectra.coarsest_dtype(["float32", "bfloat16", "float16"]) == "bfloat16"
    assert spectra.coarsest_dtype(["float32", "float64"]) == "float32"
    assert spectra.unit_roundoff("bfloat16") == float(torch.finfo(torch.bfloat16).eps) / 2
    assert spectra.unit_roundoff("float32") == float(torch.finfo(torch.float32).eps) / 2
    assert spectra.unit_roundoff("float16") == float(torch.finfo(torch.float16).eps) / 2
    with pytest.raises(ValueError, match="int8"):
        spectra.numerical_rank(np.ones(3), (3, 3), "int8")
    with pytest.raises(ValueError, match="no dtypes"):
        spectra.coarsest_dtype([])
