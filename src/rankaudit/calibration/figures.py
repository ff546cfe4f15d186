"""The two calibration figures, drawn from the written tables (matplotlib Agg, no torch)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rankaudit.io import atomic_path  # noqa: E402

PathLike = str | os.PathLike[str]


def _save(figure: plt.Figure, path: PathLike) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=150, bbox_inches="tight", format="png")
    plt.close(figure)


def compliance_vs_r(r_grid: pd.DataFrame, path: PathLike, settings: Sequence[str]) -> None:
    """Compliance after ablating the top-r directions (solid, +- std over seeds) and random r-subspaces (dashed),
    one panel per ablation form, one colour per setting; r = 0 is the unablated model."""
    forms = [form for form in ("weak", "strong") if form in set(r_grid["form"])]
    figure, axes = plt.subplots(1, len(forms), figsize=(6.0 * len(forms), 4.2), sharey=True, squeeze=False)
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, max(len(settings), 1)))
    r_values = sorted(r_grid["r"].unique())
    positions = {r: index for index, r in enumerate(r_values)}
    for axis, form in zip(axes[0], forms):
        for colour, setting in zip(colours, settings):
            rows = r_grid[(r_grid["setting"] == setting) & (r_grid["form"] == form)]
            if rows.empty:
                continue
            label = rows["variant"].iloc[0]
            top = rows[rows["basis"] == "top"].sort_values("r")
            random = rows[rows["basis"] == "random"].sort_values("r")
            x = top["r"].map(positions)
            axis.errorbar(x, top["compliance_mean"], yerr=top["compliance_std"], color=colour, marker="o",
                          capsize=2, label=label)
            axis.plot(random["r"].map(positions), random["compliance_mean"], color=colour, linestyle="--", alpha=0.6)
        axis.set_xticks(range(len(r_values)), [str(r) for r in r_values])
        axis.set_xlabel("directions ablated at the last hidden layer, r")
        axis.set_title(f"{form} ablation ({'(I-P)h' if form == 'weak' else 'h_B + (I-P)(h-h_B)'})")
        axis.set_ylim(-0.03, 1.03)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("compliance on probe D_s (fraction classified 0)")
    axes[0][-1].legend(fontsize=8, title="solid: top-r of M; dashed: random", title_fontsize=8)
    _save(figure, path)


def rho_vs_lambda(sweep: pd.DataFrame, layers: pd.DataFrame, path: PathLike, report_r: Sequence[int]) -> None:
    """Left: rho_eps (mean over layers, +- std over seeds; thin lines per layer) against lambda. Right: baseline
    compliance and compliance after top-r ablation at the reported r, against lambda."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11.0, 4.2))
    lambdas = sweep["lambda"].to_numpy()
    left.errorbar(lambdas, sweep["rho_eps_mean_mean"], yerr=sweep["rho_eps_mean_std"], marker="o", capsize=3,
                  color="black", label="mean over layers")
    honest_layers = layers[layers["setting"].isin(sweep["setting"])]
    by_setting = dict(zip(sweep["setting"], sweep["lambda"]))
    for layer, rows in honest_layers.groupby("layer"):
        means = rows.groupby("setting")["rho_eps"].mean()
        order = np.argsort([by_setting[s] for s in means.index])
        left.plot(np.array([by_setting[s] for s in means.index])[order], means.to_numpy()[order], alpha=0.5,
                  linewidth=1, label=f"hidden layer {layer}")
    left.set_ylabel("rho_eps = rank_eps(M) / d")
    right.errorbar(lambdas, sweep["compliance_mean"], yerr=sweep["compliance_std"], marker="o", capsize=3,
                   label="no ablation")
    for r in report_r:
        right.errorbar(lambdas, sweep[f"compliance_r{r}_mean"], yerr=sweep[f"compliance_r{r}_std"], marker="s",
                       capsize=3, label=f"top-{r} ablated")
    right.set_ylabel("compliance on probe D_s")
    right.set_ylim(-0.03, 1.03)
    for axis in (left, right):
        axis.set_xscale("symlog", linthresh=0.5)
        axis.set_xticks(lambdas, [f"{lam:g}" for lam in lambdas])
        axis.minorticks_off()
        axis.set_xlim(-0.1, max(lambdas.max(), 1.0) * 1.3)
        axis.set_xlabel("regularizer weight lambda (0 = FullFT)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    _save(figure, path)
