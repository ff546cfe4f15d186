"""The per-family limits figure: rank per layer with its intervals beside pure noise, and kappa against its bounds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from rankaudit.limits.claims import CENTERINGS, KAPPA_THRESHOLD


def limits_figure(frames: Mapping[str, pd.DataFrame], family: str, headline_eps: float) -> Any:
    """Left: the rank per layer with its corrected interval, the raw subsample range and pure noise; right: kappa
    against its bounds. Layers left out of aggregates (`shift_status`) are shaded grey. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    resampled = frames["resampling"]
    for centered, colour in zip(CENTERINGS, ("C0", "C1")):
        rows = resampled[(resampled["centered"] == centered) & (resampled["eps"] == headline_eps)].sort_values("layer")
        label = "centered" if centered else "uncentered"
        left.plot(rows["layer"], rows["rank_full"], marker="o", ms=3, color=colour, label=f"{label}: full sample")
        level = f"{100 * float(rows['interval_level'].iloc[0]):g}%" if not rows.empty else ""
        left.fill_between(rows["layer"], rows["pred_low"], rows["pred_high"], color=colour, alpha=0.25,
                          label=f"{label}: corrected {level} interval (repeat study)")
        left.vlines(rows["layer"], rows["raw_low"], rows["raw_high"], color=colour, lw=2.5, alpha=0.8,
                    label=f"{label}: raw subsample {level} range")
        left.plot(rows["layer"], rows["noise_rho"] * rows["d"], color=colour, ls=":", label=f"{label}: pure noise")
    left.set_xlabel("layer (0 = embedding output)")
    left.set_ylabel(f"rank_eps (eps = {headline_eps:g})")
    left.set_title(f"{family}: M_template on D_s")
    left.legend(fontsize=7)
    pairs = frames["spectral_gap"]
    if pairs.empty:
        right.text(0.5, 0.5, "no unsafe reference configured", ha="center", va="center", transform=right.transAxes)
    else:
        rows = pairs[pairs["eps"] == headline_eps]
        for index, (reference, group) in enumerate(rows.groupby("reference")):
            group = group.sort_values("layer")
            right.plot(group["layer"], group["kappa"], marker="o", ms=3, color=f"C{index}", label=f"kappa, {reference}")
            right.plot(group["layer"], group["kappa_bound"], ls="--", color=f"C{index}", label=f"2/(eps r), {reference}")
        right.axhline(KAPPA_THRESHOLD, color="grey", lw=0.8, label="kappa = 8")
        right.set_yscale("log")
        right.legend(fontsize=7)
    left_out = sorted(set(resampled.loc[~resampled["counted"].astype(bool), "layer"])) if not resampled.empty else []
    for axis in (left, right):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axis in (left,) if pairs.empty else (left, right):
        for layer in left_out:
            axis.axvspan(layer - 0.5, layer + 0.5, color="0.85", zorder=0)
    right.set_xlabel("layer (0 = embedding output)")
    right.set_ylabel("kappa")
    right.set_title(f"{family}: spectral gap vs structural bound")
    fig.tight_layout()
    return fig
