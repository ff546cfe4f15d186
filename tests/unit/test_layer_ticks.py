"""Per-layer figures label whole layers only: with three layers matplotlib's default ticks would be 0, 0.25, ..."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from rankaudit.stages import tables as audit_tables


def test_rho_by_layer_ticks_are_whole_layers(monkeypatch, tmp_path) -> None:
    saved = []
    monkeypatch.setattr(audit_tables, "_save", lambda fig, output: saved.append(fig))
    frame = pd.DataFrame({"family": "llama", "centered": False, "dataset": "safety", "eps": 0.05, "variant": "template",
                          "layer": [0, 1, 2], "rho_d": [0.01, 0.03, 0.02]})
    audit_tables.plot_rho_by_layer(frame, str(tmp_path / "rho.png"), "llama")
    axis = saved[0].axes[0]
    low, high = axis.get_xlim()
    ticks = [tick for tick in axis.get_xticks() if low <= tick <= high]
    plt.close(saved[0])
    assert ticks == [0.0, 1.0, 2.0]
