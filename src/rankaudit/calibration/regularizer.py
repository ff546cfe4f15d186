"""The rank-spreading regularizer R(M) of METHODS 6 (column orthogonality + stable-rank shortfall).

With M the d x n_s modification matrix (one column per safety input),
    R(M) = ||M^T M - (||M||_F^2 / n_s) I||_F^2 / ||M||_F^4 + max(0, T - ||M||_F^2 / s_1(M)^2)^2 / T^2.
The first term is zero when the columns are orthogonal with equal norms (the shift is spread over as many
directions as there are inputs); the second pushes the stable rank up to T.

Evaluated without forming the n_s x n_s Gram matrix: ||M^T M - c I||_F^2 = ||M M^T||_F^2 - 2 c ||M||_F^2 + c^2 n_s
(the nonzero spectra of M^T M and M M^T agree), and s_1^2 is the top eigenvalue of the d x d Gram M M^T.
"""

from __future__ import annotations

import torch

NORM_FLOOR = 1e-8


def rank_spreading_penalty(shift: torch.Tensor, stable_rank_target: float, floor: float = NORM_FLOOR) -> torch.Tensor:
    """R(M) for `shift` = M^T (n_s x d, one row per safety input, the project's row convention); differentiable.

    `floor` keeps the value finite where M = 0 (the first step of a fine-tune from the base, where R = 1): the
    denominators ||M||_F^4 and s_1^2 are clamped from below, which changes nothing once M is nonzero.
    """
    n_inputs = shift.shape[0]
    gram = shift.T @ shift
    energy = torch.trace(gram)
    level = energy / n_inputs
    off_target = (gram * gram).sum() - 2.0 * level * energy + level * level * n_inputs
    orthogonality = off_target / torch.clamp(energy * energy, min=floor * floor)
    top = torch.linalg.eigvalsh(gram)[-1]
    stable_rank = energy / torch.clamp(top, min=floor)
    shortfall = torch.clamp(stable_rank_target - stable_rank, min=0.0)
    return orthogonality + shortfall * shortfall / (stable_rank_target * stable_rank_target)
