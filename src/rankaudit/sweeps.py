"""The ablation sweeps of METHODS §5: which layers, which bases, which k, which controls, and how to read them.

Pure numpy/scipy (no torch): the sweep job builds its condition list here and the aggregator computes the
ordering statistics here.

- Bands: `narrow` = 5 evenly spaced layers in [0.45 L, 0.70 L], `wide` = 8 in [0.30 L, 0.85 L], rounded to the
  nearest layer and deduplicated (a small model has fewer distinct layers than requested; the band records the
  ones it really uses). Layer indices follow METHODS §1 (l = output of block l-1), so they lie in 1..L.
- Bases: per band layer, the top right singular vectors of that layer's M_template (default), M_naive or M_DiD
  on the training safety prompts. k runs over the cumulative grid capped by the numerical rank; u_1..u_5 are
  also ablated one at a time; random k-dimensional subspaces (Haar-distributed, independent per layer and draw)
  are the control.
- Ordering: the per-direction effects give a causal ranking of u_1..u_K, compared with the SVD order by Spearman's
  rho with a bootstrap interval over prompts; cumulative curves are flagged when refusal rises with k.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.stats

from rankaudit import matrices

BASES = ("template", "naive", "did")
CELLS_PER_BASIS = {"template": ("a_chat", "b_chat"), "naive": ("a_chat", "b_raw"), "did": ("a_chat", "b_chat")}
RANK_RTOL = 1e-10


def band_layers(n_blocks: int, low: float, high: float, count: int) -> list[int]:
    """`count` evenly spaced layers in [low L, high L], rounded and deduplicated, clipped to 1..L."""
    if not 0 <= low <= high <= 1 or count < 1:
        raise ValueError(f"band [{low}, {high}] x {count}: need 0 <= low <= high <= 1 and count >= 1")
    points = np.rint(np.linspace(low * n_blocks, high * n_blocks, count)).astype(int)
    return sorted({int(min(max(point, 1), n_blocks)) for point in points})


def basis_matrix(basis: str, safety: Mapping[str, np.ndarray], control: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """M_basis (n x d) of one layer from its cells (keys a_chat, b_chat, b_raw as the basis needs)."""
    if basis not in BASES:
        raise ValueError(f"causal basis {basis!r} is not one of {BASES}")
    missing = [key for key in CELLS_PER_BASIS[basis] if key not in safety]
    if missing:
        raise KeyError(f"basis {basis}: missing safety cells {missing}")
    if basis == "naive":
        return np.asarray(safety["a_chat"], np.float64) - np.asarray(safety["b_raw"], np.float64)
    template = np.asarray(safety["a_chat"], np.float64) - np.asarray(safety["b_chat"], np.float64)
    if basis == "template":
        return template
    if control is None:
        raise KeyError("basis did: needs the control cells a_chat and b_chat")
    return matrices.did_matrix(template, np.asarray(control["a_chat"], np.float64) - np.asarray(control["b_chat"], np.float64))


def basis_rank(matrix: np.ndarray, rtol: float = RANK_RTOL) -> int:
    """How many directions a basis matrix offers: its singular values above rtol x the largest (a relative cut that
    caps the k grid; the dtype-aware numerical rank of the spectra is `rankaudit.spectra.numerical_rank`)."""
    values = np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)
    return int(np.sum(values > rtol * values[0])) if values.size and values[0] > 0 else 0


def k_grid(grid: Sequence[int], rank: int) -> list[int]:
    """The cumulative k values, each capped by `rank`, deduplicated and sorted."""
    if rank < 1:
        raise ValueError("k_grid: the basis matrix has rank 0; there is no direction to ablate")
    return sorted({min(int(k), rank) for k in grid if int(k) >= 1})


def random_basis(d: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random d x k orthonormal basis (QR of a Gaussian matrix, signs fixed by R's diagonal)."""
    q, r = np.linalg.qr(rng.standard_normal((d, k)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


@dataclass(frozen=True)
class Condition:
    """One intervention of the sweep: what is ablated, at which layers."""

    band: str
    kind: str
    k: int
    direction: int | None = None
    draw: int | None = None
    bases: Mapping[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        if self.kind == "baseline":
            return "baseline"
        detail = {"cumulative": f"k{self.k}", "single": f"u{self.direction}", "random": f"k{self.k}_draw{self.draw}"}[self.kind]
        return f"{self.band}/{self.kind}/{detail}"


def plan_conditions(top_bases: Mapping[str, Mapping[int, np.ndarray]], ks: Sequence[int], n_single: int,
                    random_draws: int, seed: int) -> list[Condition]:
    """Baseline, then per band: cumulative top-k, single u_j (j <= n_single), and `random_draws` random k-subspaces.

    `top_bases[band][layer]` is that layer's d x K_max singular basis; random draws are seeded by (seed, band,
    k, draw), so a condition's basis does not depend on which other conditions exist.
    """
    conditions = [Condition("none", "baseline", 0)]
    for band_index, (band, by_layer) in enumerate(top_bases.items()):
        available = min(basis.shape[1] for basis in by_layer.values())
        for k in ks:
            if k > available:
                raise ValueError(f"band {band}: k={k} exceeds the {available} directions computed per layer")
            conditions.append(Condition(band, "cumulative", k, bases={l: b[:, :k] for l, b in by_layer.items()}))
        for j in range(1, min(n_single, available) + 1):
            conditions.append(Condition(band, "single", 1, direction=j, bases={l: b[:, j - 1:j] for l, b in by_layer.items()}))
        for k in ks:
            for draw in range(random_draws):
                rng = np.random.default_rng([seed, band_index, k, draw])
                conditions.append(Condition(band, "random", k, draw=draw,
                                            bases={l: random_basis(b.shape[0], k, rng) for l, b in sorted(by_layer.items())}))
    return conditions


def spearman_ordering(effects: np.ndarray, n_boot: int, seed: int, confidence: float = 0.95) -> dict[str, float]:
    """Spearman's rho between SVD order and causal effect of u_1..u_K, with a bootstrap interval over prompts.

    `effects` is (n_prompts, K): the drop in refusal attributable to ablating u_j alone, per prompt (higher =
    more causal). rho = 1 when the SVD order is exactly the causal order; NaN when the effects are all tied.
    """
    effects = np.asarray(effects, np.float64)
    if effects.ndim != 2 or effects.shape[1] < 2:
        raise ValueError(f"spearman_ordering: need (n_prompts, K >= 2) effects, got {effects.shape}")
    order = -np.arange(1, effects.shape[1] + 1, dtype=np.float64)

    def rho(means: np.ndarray) -> float:
        if np.ptp(means) == 0:
            return float("nan")
        return float(scipy.stats.spearmanr(order, means).statistic)

    mean_effects = effects.mean(axis=0)
    rng = np.random.default_rng(seed)
    n = effects.shape[0]
    draws = np.array([rho(effects[rng.integers(0, n, n)].mean(axis=0)) for _ in range(n_boot)])
    finite = draws[np.isfinite(draws)]
    tail = (1.0 - confidence) / 2.0
    low, high = (np.quantile(finite, [tail, 1.0 - tail]) if finite.size else (np.nan, np.nan))
    causal_order = list(np.argsort(-mean_effects, kind="stable") + 1)
    return {"spearman": rho(mean_effects), "ci_low": float(low), "ci_high": float(high),
            "boot_finite": int(finite.size), "causal_order": " ".join(f"u{j}" for j in causal_order)}


def monotonicity(ks: Sequence[int], rates: Sequence[float], tolerance: float) -> dict[str, object]:
    """Flag a cumulative curve whose refusal rate rises with k by more than `tolerance` anywhere.

    Removing more of the subspace should never restore refusal; a rise says the directions interact (or the
    prompts are too few), as the paper saw at k = 5 on Llama.
    """
    rates = np.asarray(rates, np.float64)
    steps = np.diff(rates)
    rises = [f"k{ks[i]}->k{ks[i + 1]}: +{steps[i]:.3f}" for i in range(steps.size) if steps[i] > tolerance]
    return {"non_monotone": bool(rises), "max_rise": float(steps.max(initial=0.0)), "rises": "; ".join(rises)}
