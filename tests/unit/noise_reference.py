"""The pure-noise rank ceiling from the Marchenko-Pastur law, an independent reference for `spectra.noise_rho`.

For an n x d standard Gaussian matrix with beta = n / d <= 1, the eigenvalues of G G^T / d follow the
Marchenko-Pastur density on [(1 - sqrt(beta))^2, (1 + sqrt(beta))^2] with mean 1. The energy eps-rank keeps the
largest eigenvalues until they hold 1 - eps of the energy: above the threshold t where the integral of x f(x)
from t to the upper edge is 1 - eps, a fraction (integral of f from t) of the n eigenvalues. Finite matrices
sit within a rank or two of it (n = 50..120, d = 300..2000).
"""

from __future__ import annotations

import math

import scipy.integrate
import scipy.optimize


def marchenko_pastur_rho(n: int, d: int, eps: float) -> float:
    """Predicted rank_eps / d of Gaussian noise of shape n x d (n <= d)."""
    beta = n / d
    if not 0 < beta <= 1:
        raise ValueError(f"marchenko_pastur_rho: need 0 < n <= d, got n={n}, d={d}")
    low, high = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2

    def density(x: float) -> float:
        return math.sqrt(max(0.0, (high - x) * (x - low))) / (2 * math.pi * beta * x)

    def energy_above(t: float) -> float:
        return scipy.integrate.quad(lambda x: x * density(x), t, high)[0]

    threshold = scipy.optimize.brentq(lambda t: energy_above(t) - (1 - eps), low, high)
    return scipy.integrate.quad(density, threshold, high)[0] * n / d
