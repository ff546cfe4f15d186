"""Spectral-gap test and tail-energy budget for honest vs unsafe shifts (METHODS §7; proofs in docs/THEORY.md).

M_h = A(chat) - B(chat) and M_u = U(chat) - B(chat) are the honest and unsafe shifts of one layer, both relative
to the base model; S = M_h - M_u. The Mirsky-route lower bound needs kappa = s_r(S)^2 / (eps (||M_h||_F^2 +
||M_u||_F^2)) > 8 at r = rank_eps(S), but kappa <= gamma / (eps r) <= 2 / (eps r) always, so that route is closed
once eps r > 1/4. The tail-energy route needs no gap: any residual E with ||E||_F below a budget proportional to
||S||_F leaves rank_eps'(S - E) >= rank_eps(S) for a stricter eps' < eps. Its budget relative to the pair scale,
beta sqrt(gamma), is below sqrt(2 eps) whenever eps' > 0 (beta < sqrt(eps), gamma <= 2), while eps-approximating
both shifts may leave a residual of sqrt(2 eps) of that scale; so, like the Mirsky route, it cannot close a lower
bound that holds uniformly over eps-approximable shifts.
"""

from __future__ import annotations

import math

import numpy as np

from rankaudit.spectra import as_matrix, energy_rank, singular_values

# Relative slack when checking kappa <= bound numerically (both sides are ratios of float64 sums).
BOUND_RTOL = 1e-9


def tail_energy_budget_factor(eps: float, eps_strict: float) -> float:
    """beta(eps, eps') = (sqrt(eps) - sqrt(eps')) / (1 + sqrt(eps')): the certified ||E||_F / ||S||_F."""
    if not 0.0 <= eps_strict < eps < 1.0:
        raise ValueError(f"tail-energy budget needs 0 <= eps' < eps < 1, got eps={eps}, eps'={eps_strict}")
    return (math.sqrt(eps) - math.sqrt(eps_strict)) / (1.0 + math.sqrt(eps_strict))


def spectral_gap(m_honest: np.ndarray, m_unsafe: np.ndarray, eps: float, eps_strict: float | None = None) -> dict:
    """kappa, its structural bound, the modal separation gamma and the tail-energy budgets of one layer.

    Keys:
    - `r`: rank_eps(S); `s_r`: its r-th singular value; `kappa`: s_r^2 / (eps (||M_h||^2 + ||M_u||^2));
      `kappa_bound` = 2 / (eps r) and `kappa_bound_gamma` = gamma / (eps r) (the tighter form);
      `bound_holds`: kappa <= kappa_bound_gamma <= kappa_bound (up to BOUND_RTOL); `kappa_gt_8`.
    - `certified_max_rank`: ceil(r / 2) when kappa > 2, else 0. kappa > 2 proves max(rank_eps(M_h),
      rank_eps(M_u)) >= r / 2 (docs/THEORY.md, "What a gap would buy"); 0 means nothing is certified.
    - `gamma` = ||S||_F^2 / (||M_h||_F^2 + ||M_u||_F^2), in [0, 2].
    - `eps_strict` (default eps / 4), `budget_factor` beta = (sqrt(eps) - sqrt(eps')) / (1 + sqrt(eps')),
      `residual_budget` = beta ||S||_F: any residual E with ||E||_F <= it keeps rank_eps'(S - E) >= r;
      `residual_budget_exact` = (||S - S_{r-1}||_F - sqrt(eps') ||S||_F) / (1 + sqrt(eps')), the same argument
      with this S's actual tail instead of its eps floor (always >= residual_budget);
      `residual_budget_relative` = residual_budget / sqrt(||M_h||^2 + ||M_u||^2) = beta sqrt(gamma), the budget in
      units of the pair's own scale (this is what gamma certifies);
      `per_mode_budget` = residual_budget / sqrt(r): the largest norm each of r mutually orthogonal rank-one
      residual components may have (their norms add in squares) while staying certified, and
      `per_mode_budget_ratio` = per_mode_budget / s_r: that per-mode allowance against the weakest retained mode.
    - `uniform_residual_relative` = sqrt(2 eps): the residual ||S - Y||_F / sqrt(||M_h||^2 + ||M_u||^2) that
      replacing both shifts by eps-approximations Y_h, Y_u (Y = Y_h - Y_u) may leave (docs/THEORY.md §7). A uniform
      lower bound would need residual_budget_relative >= it; beta < sqrt(eps) for eps' > 0 and gamma <= 2 make
      residual_budget_relative < sqrt(2 eps) always, so `tail_closes_uniform` is False for every pair with eps' > 0.
    For S = 0 (identical shifts) r = 0 and kappa, gamma-derived ratios are NaN; the bound holds vacuously.
    """
    honest = as_matrix(m_honest, "m_honest")
    unsafe = as_matrix(m_unsafe, "m_unsafe")
    if honest.shape != unsafe.shape:
        raise ValueError(f"spectral_gap: m_honest {honest.shape} and m_unsafe {unsafe.shape} differ in shape")
    if eps_strict is None:
        eps_strict = eps / 4.0
    beta = tail_energy_budget_factor(eps, eps_strict)
    difference = honest - unsafe
    values = singular_values(difference)
    energies = np.square(values)
    s_norm_sq = float(energies.sum())
    pair_energy = float(np.sum(np.square(honest)) + np.sum(np.square(unsafe)))
    r = energy_rank(values, eps)
    gamma = s_norm_sq / pair_energy if pair_energy > 0 else math.nan
    if r == 0:
        return {
            "r": 0, "s_r": 0.0, "kappa": math.nan, "kappa_bound": math.inf, "kappa_bound_gamma": math.inf,
            "bound_holds": True, "kappa_gt_8": False, "certified_max_rank": 0, "gamma": gamma, "eps": eps, "eps_strict": eps_strict,
            "budget_factor": beta, "residual_budget": 0.0, "residual_budget_exact": 0.0,
            "residual_budget_relative": 0.0 if pair_energy > 0 else math.nan,
            "per_mode_budget": 0.0, "per_mode_budget_ratio": math.nan,
            "uniform_residual_relative": math.sqrt(2.0 * eps), "tail_closes_uniform": False,
        }
    s_r = float(values[r - 1])
    kappa = s_r**2 / (eps * pair_energy)
    kappa_bound = 2.0 / (eps * r)
    kappa_bound_gamma = gamma / (eps * r)
    s_norm = math.sqrt(s_norm_sq)
    residual_budget = beta * s_norm
    tail_before_r = math.sqrt(float(energies[r - 1 :].sum()))
    per_mode = residual_budget / math.sqrt(r)
    return {
        "r": r,
        "s_r": s_r,
        "kappa": kappa,
        "kappa_bound": kappa_bound,
        "kappa_bound_gamma": kappa_bound_gamma,
        "bound_holds": bool(kappa <= kappa_bound_gamma * (1 + BOUND_RTOL) and kappa_bound_gamma <= kappa_bound * (1 + BOUND_RTOL)),
        "kappa_gt_8": bool(kappa > 8.0),
        "certified_max_rank": math.ceil(r / 2) if kappa > 2.0 else 0,
        "gamma": gamma,
        "eps": eps,
        "eps_strict": eps_strict,
        "budget_factor": beta,
        "residual_budget": residual_budget,
        "residual_budget_exact": (tail_before_r - math.sqrt(eps_strict) * s_norm) / (1.0 + math.sqrt(eps_strict)),
        "residual_budget_relative": beta * math.sqrt(gamma),
        "per_mode_budget": per_mode,
        "per_mode_budget_ratio": per_mode / s_r,
        "uniform_residual_relative": math.sqrt(2.0 * eps),
        "tail_closes_uniform": bool(beta * math.sqrt(gamma) >= math.sqrt(2.0 * eps)),
    }
