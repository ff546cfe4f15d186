"""The corrected rank interval covers the rank of fresh n-prompt samples at its nominal rate; the raw range does not.

Rows are drawn from a fixed Gaussian population with a decaying covariance spectrum, so the rank_eps of a fresh
n-row sample has a known (simulated) law. For each of several observed samples the interval is built from that
sample alone (its full-sample rank and its m = 0.8 n subsets), then checked against 200 fresh n-row samples. The
interval predicts a repeat study's rank, so its coverage is averaged over the observed samples.
"""

import math

import numpy as np
import pytest

from rankaudit import resampling, spectra

LEVEL = 0.9
EPS = 0.05


def _population_rows(rng, n, scales):
    return rng.standard_normal((n, scales.size)) * scales


def _rank(matrix):
    return spectra.energy_rank(spectra.singular_values(matrix), EPS)


def _coverages(n, scales, *, observed=20, fresh=200, seed=0):
    """Mean coverage of fresh-sample ranks by the corrected interval and by the raw subset range (same level)."""
    rng = np.random.default_rng(seed)
    fresh_ranks = np.array([_rank(_population_rows(rng, n, scales)) for _ in range(fresh)])
    m = round(0.8 * n)
    corrected, raw = [], []
    for index in range(observed):
        sample = _population_rows(rng, n, scales)
        subset_ranks = resampling.subsample_ranks(sample, [EPS], fraction=0.8, draws=50, seed=index)[:, 0]
        interval = resampling.rank_prediction_interval(_rank(sample), subset_ranks, n, m, LEVEL, min(n, scales.size))
        corrected.append(np.mean((fresh_ranks >= interval["low"]) & (fresh_ranks <= interval["high"])))
        raw_low, raw_high = resampling.raw_subset_interval(subset_ranks, LEVEL)
        raw.append(np.mean((fresh_ranks >= raw_low) & (fresh_ranks <= raw_high)))
    return float(np.mean(corrected)), float(np.mean(raw))


@pytest.mark.parametrize(("n", "d", "spectrum"), [
    (60, 200, "power"),       # d > n, as in the study: the rank sits near the noise ceiling and grows with n
    (100, 40, "power"),       # n > d: the rank converges to the population's
    (100, 200, "exponential"),  # a rank well below n and d
])
def test_corrected_interval_covers_fresh_ranks_and_raw_range_does_not(n, d, spectrum):
    k = np.arange(1, d + 1)
    scales = k ** -0.5 if spectrum == "power" else np.exp(-k / 15)
    corrected, raw = _coverages(n, scales)
    assert corrected >= 0.85, f"corrected interval covered {corrected:.3f} of fresh ranks (nominal {LEVEL})"
    assert raw < 0.85, f"the raw subset range covered {raw:.3f}: it passes the test the corrected interval must pass"


def test_interval_by_hand():
    subset_ranks = np.array([10, 12] * 25)  # std (ddof=1) = sqrt(50/49)
    interval = resampling.rank_prediction_interval(14, subset_ranks, 100, 80, 0.9, 60)
    se = math.sqrt(80 / 20) * math.sqrt(50 / 49)
    assert interval["rank_se"] == pytest.approx(se)
    assert interval["half_width"] == pytest.approx(1.6448536 * math.sqrt(2) * se, rel=1e-6)
    assert (interval["low"], interval["high"]) == (14 - 5, 14 + 5)  # half-width 4.70 rounds to 5
    constant = resampling.rank_prediction_interval(3, np.full(50, 3), 100, 80, 0.9, 60)
    assert (constant["low"], constant["high"], constant["rank_se"]) == (3, 3, 0.0)
    clipped = resampling.rank_prediction_interval(59, subset_ranks, 100, 80, 0.9, 60)
    assert clipped["high"] == 60
    assert resampling.raw_subset_interval(np.arange(101), 0.9) == pytest.approx((5.0, 95.0))
    with pytest.raises(ValueError, match="level"):
        resampling.rank_prediction_interval(3, subset_ranks, 100, 80, 1.0, 60)
    with pytest.raises(ValueError, match="m=100, n=100"):
        resampling.jackknife_factor(100, 100)
