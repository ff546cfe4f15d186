"""The sign-flip data null of the energy eps-rank (METHODS §3): the rank the data's own entries give on their own.

Each entry of the n x d matrix M gets an independent random sign: M_flip = R * M (elementwise, R_ij = +-1). Every
entry keeps its magnitude, so every pair's (row's) energy and every coordinate's (column's) energy is unchanged,
but no direction is shared between pairs any more: E[M_flip M_flip^T] = diag(row energies). rank_eps(M_flip) is
what the pairs' variation produces without a shared shift or subspace (the random-signflip parallel analysis of
Hong, Sheng and Dobriban, 2020). A rank well below it is shared low-dimensional structure; a rank near it is no
lower than per-pair, per-coordinate magnitudes alone give. Unlike the Gaussian null it keeps the data's
coordinate scales, so a few massive coordinates pull it down as they pull the data's rank down.

Flipping whole rows (M -> D M with D a random +-1 diagonal) is no null for a spectral rank: D is orthogonal, so
D M has exactly the singular values of M (the Gram D M M^T D is similar to M M^T); it only changes statistics of
the mean row.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from rankaudit.spectra import as_matrix, energy_rank, singular_values


@functools.lru_cache(maxsize=8)
def sign_matrices(n: int, d: int, draws: int, seed: int) -> tuple[np.ndarray, ...]:
    """`draws` n x d float64 matrices of independent fair +-1 signs from `numpy.random.default_rng(seed)`.

    Drawn once per (shape, draws, seed) and shared read-only by every matrix of that shape in a job (common random
    numbers: differences between variants are not sampling noise of the null). Packed random bytes keep the draw
    cheap at d = 4096.
    """
    rng = np.random.default_rng(seed)
    matrices = []
    for _ in range(draws):
        bits = np.unpackbits(rng.integers(0, 256, size=(n, (d + 7) // 8), dtype=np.uint8), axis=1, count=d)
        signs = 1.0 - 2.0 * bits
        signs.flags.writeable = False
        matrices.append(signs)
    return tuple(matrices)


def sign_flip_ranks(matrix: np.ndarray, eps_list: Sequence[float], draws: int, seed: int) -> np.ndarray:
    """rank_eps of R * M for `draws` independent sign matrices R: an int array of shape (draws, len(eps_list))."""
    if draws < 1:
        raise ValueError(f"sign_flip_ranks: draws must be >= 1, got {draws}")
    matrix = as_matrix(matrix)
    ranks = np.empty((draws, len(eps_list)), dtype=np.int64)
    for draw, signs in enumerate(sign_matrices(*matrix.shape, draws, seed)):
        values = singular_values(signs * matrix)
        ranks[draw] = [energy_rank(values, eps) for eps in eps_list]
    return ranks
