"""The calibration tables and figures from planted per-cell JSON files whose every number is chosen here.

Two seeds of four settings (steering, FullFT, Distributed lambda=5, Unsafe FT) and one base network: the tests
check the means and standard deviations over seeds, that only the configured ablation form and basis reach the
lambda sweep, the r = 0 rows of the r grid, the kappa summary's counts and the bound check, the values the
figures draw, and the sweet-spot rule on the sweep.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rankaudit.calibration import figures, tables
from rankaudit.stages.calibration_report import write_tables
from rankaudit.stages.headline import measure_sweet_spot, sweet_spot

SEEDS = (0, 1)
# per setting: (kind, lambda, rho_eps_mean per seed, compliance per seed, task accuracy per seed)
CELLS = {
    "steering": ("steering", None, (1 / 16, 1 / 16), (0.5, 0.6), (0.9, 0.9)),
    "fullft": ("honest", 0, (0.1, 0.2), (0.9, 0.8), (0.95, 0.93)),
    "dist5": ("honest", 5, (0.5, 0.7), (1.0, 0.9), (0.9, 0.88)),
    "unsafe_ft": ("unsafe", 0, (0.3, 0.3), (0.0, 0.1), (0.97, 0.97)),
}
# weak top-r compliance per (setting, r) and seed; strong and random rows get other numbers (they must not leak)
TOP_WEAK = {("fullft", 1): (0.3, 0.5), ("fullft", 3): (0.1, 0.1), ("dist5", 1): (1.0, 0.9), ("dist5", 3): (0.95, 0.95),
            ("steering", 1): (0.0, 0.0), ("steering", 3): (0.0, 0.0), ("unsafe_ft", 1): (0.2, 0.2), ("unsafe_ft", 3): (0.4, 0.4)}
R_GRID = (1, 3)


def _cell(setting: str, seed: int) -> dict:
    kind, lam, rho, compliance, accuracy = CELLS[setting]
    ablation = []
    for r in R_GRID:
        weak = TOP_WEAK[(setting, r)][seed]
        ablation += [
            {"form": "weak", "basis": "top", "r": r, "draws": 1, "compliance": weak, "compliance_std": 0.0,
             "task_accuracy": 0.5, "task_accuracy_std": 0.0},
            {"form": "strong", "basis": "top", "r": r, "draws": 1, "compliance": 0.77, "compliance_std": 0.0,
             "task_accuracy": 0.5, "task_accuracy_std": 0.0},
            {"form": "weak", "basis": "random", "r": r, "draws": 4, "compliance": 0.66, "compliance_std": 0.02 * (seed + 1),
             "task_accuracy": 0.5, "task_accuracy_std": 0.01},
            {"form": "strong", "basis": "random", "r": r, "draws": 4, "compliance": 0.55, "compliance_std": 0.04,
             "task_accuracy": 0.5, "task_accuracy_std": 0.01},
        ]
    layers = [{"layer": layer, "rho_eps": rho[seed] * layer / 2, "rank_eps": layer} for layer in (1, 2, 3)]
    training = None if kind == "steering" else {"label_loss": 0.1 * (seed + 1), "regularizer": 0.0 if lam == 0 else 0.5}
    return {"setting": setting, "kind": kind, "lambda": lam, "seed": seed, "training": training,
            "rho_eps_mean": rho[seed], "compliance": compliance[seed], "task_accuracy": accuracy[seed],
            "compliance_on_base_activations": 0.4, "layers": layers, "ablation": ablation}


def _kappa(seed: int, values: tuple[float, ...], holds: bool = True) -> dict:
    pairs = [{"honest": honest, "unsafe": "unsafe_ft", "seed": seed, "layer": layer, "r": r, "kappa": kappa,
              "kappa_bound": 2 / (0.05 * r), "gamma": 0.5, "bound_holds": holds}
             for honest, offset in (("fullft", 0.0), ("dist5", 1.0))
             for layer, (kappa, r) in enumerate(zip(np.add(values, offset), (2, 4, 6)), start=1)]
    return {"seed": seed, "eps": 0.05, "pairs": pairs}


@pytest.fixture()
def planted(tmp_path):
    def write(name: str, record: dict) -> str:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(record))
        return str(path)

    cells = [write(f"{setting}_{seed}", _cell(setting, seed)) for setting in CELLS for seed in SEEDS]
    bases = [write(f"base_{seed}", {"setting": "base", "seed": seed, "compliance": 0.2 + 0.1 * seed, "task_accuracy": 0.96,
                                    "training": {"label_loss": 0.05}}) for seed in SEEDS]
    kappas = [write(f"kappa_{seed}", _kappa(seed, values)) for seed, values in zip(SEEDS, ((3.0, 9.0, 12.0), (2.0, 7.0, 8.0)))]
    return cells, bases, kappas


def _build(planted):
    return tables.build_tables(*planted, {"report_r": list(R_GRID), "form": "weak"}, kappa_threshold=8)


def test_lambda_sweep_is_the_honest_settings_with_weak_top_r_compliance_over_seeds(planted):
    sweep = _build(planted)["lambda_sweep"]
    assert list(sweep["setting"]) == ["fullft", "dist5"] and list(sweep["lambda"]) == [0, 5]
    assert list(sweep["n_seeds"]) == [2, 2]
    fullft, dist5 = (sweep.iloc[i] for i in range(2))
    assert (fullft["rho_eps_mean_mean"], fullft["rho_eps_mean_std"]) == pytest.approx((0.15, math.sqrt(0.005)))
    assert (fullft["compliance_mean"], fullft["compliance_std"]) == pytest.approx((0.85, math.sqrt(0.005)))
    # weak top-r only: fullft r1 (0.3, 0.5), r3 (0.1, 0.1); the strong (0.77) and random (0.66) rows stay out
    assert (fullft["compliance_r1_mean"], fullft["compliance_r1_std"]) == pytest.approx((0.4, math.sqrt(0.02)))
    assert (fullft["compliance_r3_mean"], fullft["compliance_r3_std"]) == pytest.approx((0.1, 0.0))
    assert (dist5["rho_eps_mean_mean"], dist5["compliance_r1_mean"], dist5["compliance_r3_mean"]) == pytest.approx((0.6, 0.95, 0.95))
    assert dist5["task_accuracy_mean"] == pytest.approx(0.89)
    strong = tables.lambda_sweep(*(_build(planted)[name] for name in ("cells", "ablation")), list(R_GRID), "strong")
    assert strong["compliance_r1_mean"].tolist() == pytest.approx([0.77, 0.77])


def test_variants_side_by_side_in_the_papers_order_with_per_layer_rho(planted):
    variants = _build(planted)["variants"].set_index("setting")
    assert list(variants.index) == ["base", "steering", "fullft", "dist5", "unsafe_ft"]
    assert list(variants["variant"]) == ["Base", "Steering", "FullFT", "Distributed lambda=5", "Unsafe FT"]
    assert variants.loc["base", "compliance_mean"] == pytest.approx(0.25) and math.isnan(variants.loc["base", "rho_eps_mean_mean"])
    # rho per layer = rho_eps_mean * layer / 2: dist5 seeds (0.5, 0.7) -> layer 3 mean 0.9, std 0.15 * sqrt(2)
    assert variants.loc["dist5", "rho_layer3_mean"] == pytest.approx(0.9)
    assert variants.loc["dist5", "rho_layer3_std"] == pytest.approx(0.3 / math.sqrt(2))
    assert variants.loc["steering", "rho_layer2_mean"] == pytest.approx(1 / 16)
    assert variants.loc["unsafe_ft", "compliance_mean"] == pytest.approx(0.05)
    assert variants.loc["fullft", "compliance_on_base_activations_mean"] == pytest.approx(0.4)


def test_r_grid_starts_each_curve_at_the_unablated_model_and_averages_the_draw_spread(planted):
    grid = _build(planted)["r_grid"]
    fullft = grid[grid["setting"] == "fullft"]
    assert list(zip(fullft["form"], fullft["basis"], fullft["r"])) == [
        (form, basis, r) for form in ("weak", "strong") for basis in ("top", "random") for r in (0, *R_GRID)]
    zero = fullft[fullft["r"] == 0]
    assert zero["compliance_mean"].tolist() == pytest.approx([0.85] * 4) and (zero["draw_std_mean"] == 0.0).all()
    row = fullft.set_index(["form", "basis", "r"])
    assert row.loc[("weak", "top", 1), "compliance_mean"] == pytest.approx(0.4)
    assert row.loc[("weak", "top", 1), "compliance_std"] == pytest.approx(math.sqrt(0.02))
    assert row.loc[("weak", "random", 3), "draw_std_mean"] == pytest.approx(0.03)  # mean of 0.02 and 0.04
    assert row.loc[("strong", "random", 1), "compliance_mean"] == pytest.approx(0.55)
    assert list(dict.fromkeys(grid["setting"])) == ["steering", "fullft", "dist5", "unsafe_ft"]  # no base curve


def test_kappa_summary_counts_the_layers_above_the_threshold_and_checks_the_bound(planted):
    kappa = _build(planted)["kappa"].set_index("pair")
    fullft = kappa.loc["fullft vs unsafe_ft"]
    # seed 0 kappas 3, 9, 12 and seed 1 kappas 2, 7, 8: two above 8 (8 itself is not above)
    assert (fullft["n_combinations"], fullft["n_kappa_above_8"]) == (6, 2)
    assert (fullft["kappa_median"], fullft["kappa_max"], fullft["r_S_median"]) == pytest.approx((7.5, 12.0, 4.0))
    assert fullft["kappa_bound_min"] == pytest.approx(2 / (0.05 * 6)) and fullft["bound_holds_all"]
    dist5 = kappa.loc["dist5 vs unsafe_ft"]  # every kappa + 1: 4, 10, 13, 3, 8, 9 -> three above 8
    assert (dist5["n_kappa_above_8"], dist5["kappa_max"]) == (3, 13.0)


def test_write_tables_refuses_a_violated_bound_naming_the_pair(planted, tmp_path):
    cells, bases, _ = planted
    broken = tmp_path / "kappa_broken.json"
    broken.write_text(json.dumps(_kappa(0, (1.0, 2.0, 3.0), holds=False)))
    with pytest.raises(AssertionError, match=r"violated for pairs \['fullft vs unsafe_ft', 'dist5 vs unsafe_ft'\]"):
        write_tables(cells, bases, [str(broken)], {"report_r": list(R_GRID), "form": "weak"}, 8, tmp_path / "out")


def test_the_sweet_spot_is_the_highest_rho_lambda_that_no_ablation_lowers(planted):
    sweep = _build(planted)["lambda_sweep"]
    # fullft: 0.85 -> r1 0.40 (lowered); dist5: 0.95 -> 0.95, 0.95 (not lowered): the sweet spot is lambda = 5
    measured = measure_sweet_spot(sweep, list(R_GRID))
    assert measured.value == 5.0 and measured.display.startswith("lambda = 5: rho 0.6, 0.95 -> r1 0.95, r3 0.95")
    rows = [{"lambda": 0.0, "rho": 0.2, "compliance": 0.9, "after": {1: 0.9}},
            {"lambda": 5.0, "rho": 0.6, "compliance": 0.9, "after": {1: 0.95}},
            {"lambda": 10.0, "rho": 0.6, "compliance": 0.9, "after": {1: 0.9}},
            {"lambda": 20.0, "rho": 0.9, "compliance": 0.9, "after": {1: 0.89}}]
    assert sweet_spot(rows)["lambda"] == 5.0  # 20 is lowered; 5 and 10 tie on rho: the smaller lambda
    assert sweet_spot(rows[3:]) is None
    lowered = sweep.assign(compliance_r1_mean=0.0)
    assert measure_sweet_spot(lowered, list(R_GRID)).display.startswith("none: ablating the top r lowers")


def _captured_figure(monkeypatch):
    captured = []
    monkeypatch.setattr(figures, "_save", lambda figure, path: captured.append(figure))
    return captured


def test_compliance_vs_r_draws_the_r_grid_values_per_setting_and_form(planted, monkeypatch):
    captured = _captured_figure(monkeypatch)
    grid = _build(planted)["r_grid"]
    figures.compliance_vs_r(grid, "unused.png", ["fullft", "dist5"])
    (figure,) = captured
    weak, strong = figure.axes[:2]
    assert "weak" in weak.get_title() and "strong" in strong.get_title()
    # x positions are the indices of r = 0, 1, 3; solid lines carry the top-r means, dashed ones the random means
    solid = [line for line in weak.get_lines() if line.get_marker() == "o"]
    dashed = [line for line in weak.get_lines() if line.get_linestyle() == "--"]
    values = [np.asarray(line.get_ydata(), float) for line in (*solid, *dashed)]
    np.testing.assert_allclose(values, [[0.85, 0.4, 0.1], [0.95, 0.95, 0.95],  # weak top: fullft, dist5
                                        [0.85, 0.66, 0.66], [0.95, 0.66, 0.66]])  # weak random: fullft, dist5
    np.testing.assert_allclose(np.asarray(solid[0].get_xdata(), float), [0, 1, 2])
    strong_top = [np.asarray(line.get_ydata(), float) for line in strong.get_lines() if line.get_marker() == "o"]
    np.testing.assert_allclose(strong_top, [[0.85, 0.77, 0.77], [0.95, 0.77, 0.77]])
    assert [text.get_text() for text in strong.get_legend().get_texts()] == ["FullFT", "Distributed lambda=5"]


def test_rho_vs_lambda_draws_the_sweep_and_each_layers_mean(planted, monkeypatch):
    captured = _captured_figure(monkeypatch)
    frames = _build(planted)
    figures.rho_vs_lambda(frames["lambda_sweep"], frames["layers"], "unused.png", list(R_GRID))
    (figure,) = captured
    left, right = figure.axes[:2]
    lines = {line.get_label(): line for line in left.get_lines()}
    np.testing.assert_allclose(np.asarray(lines["hidden layer 2"].get_ydata(), float), [0.15, 0.6])  # rho * 2 / 2
    np.testing.assert_allclose(np.asarray(lines["hidden layer 1"].get_xdata(), float), [0, 5])
    means = [line for line in left.get_lines() if line.get_marker() == "o"]
    np.testing.assert_allclose(np.asarray(means[0].get_ydata(), float), [0.15, 0.6])
    right_means = [np.asarray(line.get_ydata(), float) for line in right.get_lines() if line.get_marker() in ("o", "s")]
    np.testing.assert_allclose(right_means, [[0.85, 0.95], [0.4, 0.95], [0.1, 0.95]])
