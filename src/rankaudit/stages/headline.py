"""The headline table: a run's key figures per family beside the paper's published ones, with their sources.

Reads only finished tables of the other stages (parquet or CSV, by suffix): the diagnosis tables always, the
limits, causal and calibration tables when those stages ran; a stage that did not run shows "not run". Columns
are read by name (`COLUMNS`); a missing one fails with the table and column named. The paper's figures come from
reference/paper_figures.yaml (`rankaudit.paper_figures`); nothing here holds a published number.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rankaudit import io
from rankaudit.paper_figures import CALIBRATION, Comparison, Figure, PaperFigures, compare_family, load_paper_figures

NOT_RUN = "not run"
NO_PAPER = "-"
NOT_REPORTED = "not reported"

# table -> the columns the headline reads from it (calibration columns that depend on the config are added by
# `required_columns`)
COLUMNS = {
    "rho_per_family": ["family", "eps", "mean_rank", "d", "rho_d"],
    "centered_vs_uncentered": ["family", "variant", "dataset", "eps", "mean_rank_uncentered", "mean_rank_centered",
                               "centered_over_uncentered"],
    "arditi_cosines": ["family", "variant", "cos_top_arditi"],
    "limits_lrh_baseline": ["family", "centered", "rho_concept", "rho_safety", "ratio"],
    "limits_kappa_per_reference": ["family", "reference", "layers", "count_kappa_gt_8", "layers_kappa_gt_8"],
    "causal_k3_narrow": ["family", "basis", "band", "k", "baseline_rate", "principal_rate", "principal_low",
                         "principal_high", "baseline_score", "principal_score", "random_score_mean"],
    "calibration_lambda_sweep": ["lambda", "rho_eps_mean_mean", "compliance_mean"],
    "calibration_kappa": ["n_combinations", "kappa_max"],
}
AUDIT_TABLES = ("rho_per_family", "centered_vs_uncentered", "arditi_cosines")
# shown when present: how many layers a mean used; the kappa crossings that certify only rank <= 1; the random
# k-subspaces' refusal rate (only when those draws were judged); a note such as "no refusal to ablate"
OPTIONAL_COLUMNS = {
    "rho_per_family": ("layers_averaged",),
    "limits_kappa_per_reference": ("count_kappa_gt_8_trivial",),
    "causal_k3_narrow": ("random_rate_mean", "note"),
}

FAMILY_QUANTITIES = {
    "rho_template": "rho_eps of M_template on D_s (uncentered, mean over layers)",
    "centered_over_uncentered": "centered / uncentered mean rank_eps (M_template, D_s)",
    "did_cos_arditi": "|cos| of M_DiD's top direction with the Arditi direction (mean over layers)",
    "k3_narrow": "refusal after ablating the top-k of M_template in the narrow band, vs random k-subspaces",
    "kappa_gt_8": "kappa > 8 over layer x unsafe-reference pairs",
    "lrh_ratio": "LRH: concept-pair rho / safety rho (uncentered, mean over concept x model x format cells)",
}
CALIBRATION_QUANTITIES = {
    "sweet_spot": "sweet spot: the highest-rho lambda whose compliance no top-r ablation lowers",
    "lambda_sweep": "lambda: rho, compliance -> compliance after ablating the top r directions",
    "kappa_gt_8": "MLP kappa above the threshold over honest x unsafe x seed x layer combinations",
}
SCOPE_HEADINGS = {
    "paper model": "{family}: the paper's models ({base} -> {aligned}); the paper column is {name}",
    "organism stand-in": ("{family}: model organisms ({base} -> {aligned}), not the paper's models; the paper "
                          "column is {name}, for orientation, not a replication"),
    "stand-in": ("{family}: {base} -> {aligned}, not the paper's models; the paper column is {name}, for "
                 "orientation only"),
    "none": "{family}: {base} -> {aligned}; no paper counterpart",
}


class HeadlineInputError(ValueError):
    """An input table lacks a column or a row the headline needs (the message names the table)."""


@dataclass(frozen=True)
class Measured:
    display: str
    value: float = math.nan
    status: str = "measured"


NOT_RUN_CELL = Measured(NOT_RUN, status=NOT_RUN)


def required_columns(name: str, report_r: Sequence[int] = (), kappa_threshold: float | None = None) -> list[str]:
    columns = list(COLUMNS[name])
    if name == "calibration_lambda_sweep":
        columns += [f"compliance_r{r}_mean" for r in report_r]
    if name == "calibration_kappa":
        if kappa_threshold is None:
            raise HeadlineInputError("table calibration_kappa given without calibration.kappa.threshold")
        columns.append(_kappa_column(kappa_threshold))
    return columns


def read_table(path: str | Path, name: str, columns: Sequence[str]) -> pd.DataFrame:
    """One finished table (parquet or CSV), checked to hold every column the headline reads."""
    frame = pd.read_csv(path) if str(path).endswith(".csv") else pd.read_parquet(path)
    if frame.empty:
        # a stage with nothing to tabulate (no concept sets, no references) may write a table without columns
        return pd.DataFrame(columns=list(dict.fromkeys([*columns, *frame.columns])))
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        optional = f" (and, when present, {list(OPTIONAL_COLUMNS[name])})" if name in OPTIONAL_COLUMNS else ""
        raise HeadlineInputError(f"table {name} ({path}) lacks column(s) {missing} that the headline table reads; "
                                 f"it reads {list(columns)}{optional} and has {list(frame.columns)}")
    return frame


def _kappa_column(threshold: float | None) -> str:
    return f"n_kappa_above_{threshold:g}"


def _f(value: float, spec: str) -> str:
    return "undefined" if value is None or not np.isfinite(value) else format(value, spec)


def _rows(frame: pd.DataFrame, family: str) -> pd.DataFrame:
    return frame[frame["family"] == family]


def _one_row(frame: pd.DataFrame, name: str, what: str) -> pd.Series:
    if len(frame) != 1:
        raise HeadlineInputError(f"table {name}: expected one row for {what}, found {len(frame)}")
    return frame.iloc[0]


def measure_rho(frame: pd.DataFrame, family: str, eps: float) -> Measured:
    rows = _rows(frame, family)
    row = _one_row(rows[np.isclose(rows["eps"].astype(float), eps)], "rho_per_family", f"family {family} at eps {eps:g}")
    layers = f", {int(row['layers_averaged'])} layers" if pd.notna(row.get("layers_averaged", math.nan)) else ""
    rho = float(row["rho_d"])
    return Measured(f"{_f(rho, '.3g')} (mean rank_eps {_f(row['mean_rank'], '.3g')} of d = {int(row['d'])}{layers})", rho,
                    "measured" if np.isfinite(rho) else "undefined")


def measure_centering(frame: pd.DataFrame, family: str, eps: float) -> Measured:
    rows = _rows(frame, family)
    rows = rows[(rows["variant"] == "template") & (rows["dataset"] == "safety") & np.isclose(rows["eps"].astype(float), eps)]
    row = _one_row(rows, "centered_vs_uncentered", f"family {family}, variant template, dataset safety, eps {eps:g}")
    ratio = float(row["centered_over_uncentered"])
    if not np.isfinite(ratio):
        return Measured(f"undefined (uncentered mean rank {_f(row['mean_rank_uncentered'], '.3g')})", status="undefined")
    return Measured(f"{ratio:.1f}x (centered {_f(row['mean_rank_centered'], '.3g')} / uncentered "
                    f"{_f(row['mean_rank_uncentered'], '.3g')})", ratio)


def measure_did_cos(frame: pd.DataFrame, family: str) -> Measured:
    rows = _rows(frame, family)
    did = _one_row(rows[rows["variant"] == "did"], "arditi_cosines", f"family {family}, variant did")
    cos = float(did["cos_top_arditi"])
    if not np.isfinite(cos):
        return Measured("undefined (zero shift or zero Arditi direction)", status="undefined")
    template = rows[rows["variant"] == "template"]["cos_top_arditi"]
    beside = f" (vs {_f(float(template.iloc[0]), '.3f')} for M_template)" if len(template) == 1 else ""
    return Measured(f"{cos:.3f}{beside}", cos)


def measure_k3(frame: pd.DataFrame, family: str) -> Measured:
    rows = _rows(frame, family)
    rows = rows[rows["basis"] == "template"]
    if rows.empty:
        return Measured(f"{NOT_RUN} (no M_template sweep for {family})", status=NOT_RUN)
    row = _one_row(rows, "causal_k3_narrow", f"family {family}, basis template")
    k, band = int(row["k"]), row["band"]
    text = (f"{band} band, k = {k}: baseline {_f(row['baseline_rate'], '.2f')}; top-{k} {_f(row['principal_rate'], '.2f')} "
            f"[{_f(row['principal_low'], '.2f')}, {_f(row['principal_high'], '.2f')}]")
    random_rate = row.get("random_rate_mean", math.nan)
    if pd.notna(random_rate):
        text += f"; random rank-{k} {_f(random_rate, '.2f')}"
    else:
        text += (f"; random rank-{k} not judged (refusal score: baseline {_f(row['baseline_score'], '.3g')}, "
                 f"top-{k} {_f(row['principal_score'], '.3g')}, random {_f(row['random_score_mean'], '.3g')})")
    note = row.get("note")
    if isinstance(note, str) and note:
        text += f"; {note}"
    return Measured(text, float(row["principal_rate"]))


def measure_kappa(frame: pd.DataFrame, family: str) -> Measured:
    rows = _rows(frame, family)
    if rows.empty:
        return Measured("no unsafe reference", status="none")
    above, pairs = int(rows["count_kappa_gt_8"].sum()), int(rows["layers"].sum())
    parts = [f"{ref} {int(n)}/{int(layers)}" + (f" at layer(s) {where}" if int(n) else "")
             for ref, n, layers, where in zip(rows["reference"], rows["count_kappa_gt_8"], rows["layers"], rows["layers_kappa_gt_8"])]
    text = f"{above} of {pairs} layer-reference pairs ({'; '.join(parts)})"
    if "count_kappa_gt_8_trivial" in rows and int(rows["count_kappa_gt_8_trivial"].sum()):
        text += f"; {int(rows['count_kappa_gt_8_trivial'].sum())} of the {above} certify only rank <= 1 (r <= 2)"
    return Measured(text, float(above))


def measure_lrh(frame: pd.DataFrame, family: str) -> Measured:
    rows = _rows(frame, family)
    rows = rows[~rows["centered"].astype(bool)]
    if rows.empty:
        return Measured("no concept sets", status="none")
    concept, safety = float(rows["rho_concept"].mean()), float(rows["rho_safety"].mean())
    if not safety > 0:
        return Measured(f"undefined (safety rho {_f(safety, '.2g')})", status="undefined")
    ratio = concept / safety
    return Measured(f"{ratio:.1f}x (rho {concept:.2g} vs safety {safety:.2g}; {_f(rows['ratio'].min(), '.1f')}-"
                    f"{_f(rows['ratio'].max(), '.1f')}x over {len(rows)} cells)", ratio)


def sweep_entry(lam: float, rho: float, compliance: float, after: Mapping[int, float]) -> str:
    """One lambda of a sweep, written the same way for the run and for the paper."""
    ablated = ", ".join(f"r{int(r)} {_f(value, '.2f')}" for r, value in sorted(after.items()))
    return f"{lam:g}: rho {_f(rho, '.3g')}, {_f(compliance, '.2f')} -> {ablated}"


def _sweep(frame: pd.DataFrame, report_r: Sequence[int]) -> list[dict[str, Any]]:
    return [{"lambda": float(row["lambda"]), "rho": float(row["rho_eps_mean_mean"]), "compliance": float(row["compliance_mean"]),
             "after": {int(r): float(row[f"compliance_r{r}_mean"]) for r in report_r}}
            for _, row in frame.sort_values("lambda").iterrows()]


def sweet_spot(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The highest-rho lambda among those whose mean compliance no reported top-r ablation lowers (ties: the
    smaller lambda); None when ablation lowers compliance at every lambda."""
    robust = [row for row in rows if all(value >= row["compliance"] for value in row["after"].values())]
    return max(robust, key=lambda row: (row["rho"], -row["lambda"]), default=None)


def measure_sweet_spot(frame: pd.DataFrame, report_r: Sequence[int]) -> Measured:
    best = sweet_spot(_sweep(frame, report_r))
    if best is None:
        return Measured("none: ablating the top r lowers compliance at every lambda")
    return Measured(f"lambda = {sweep_entry(best['lambda'], best['rho'], best['compliance'], best['after'])}", best["lambda"])


def measure_lambda_sweep(frame: pd.DataFrame, report_r: Sequence[int]) -> Measured:
    return Measured("; ".join(sweep_entry(row["lambda"], row["rho"], row["compliance"], row["after"]) for row in _sweep(frame, report_r)))


def measure_mlp_kappa(frame: pd.DataFrame, threshold: float) -> Measured:
    above, total = int(frame[_kappa_column(threshold)].sum()), int(frame["n_combinations"].sum())
    return Measured(f"{above} of {total} combinations above {threshold:g} (max kappa {_f(frame['kappa_max'].max(), '.3g')})",
                    float(above))


def _paper_cell(comparison_kind: str, figure: Figure | None, quantity: str) -> tuple[str, float, str]:
    if comparison_kind == "none":
        return NO_PAPER, math.nan, ""
    if figure is None:
        return NOT_REPORTED, math.nan, ""
    text = figure.text
    if quantity == "lambda_sweep" and figure.rows:
        text = "; ".join(sweep_entry(row["lambda"], row["rho"], row["compliance"], row["after"]) for row in figure.rows)
    return text, math.nan if figure.value is None else figure.value, figure.source


def family_measurements(tables: Mapping[str, pd.DataFrame | None], family: str, audit_eps: float,
                        causal_families: Sequence[str]) -> dict[str, Measured]:
    def limits(name: str, measure: Any) -> Measured:
        return NOT_RUN_CELL if tables.get(name) is None else measure(tables[name], family)

    k3 = tables.get("causal_k3_narrow")
    return {
        "rho_template": measure_rho(tables["rho_per_family"], family, audit_eps),
        "centered_over_uncentered": measure_centering(tables["centered_vs_uncentered"], family, audit_eps),
        "did_cos_arditi": measure_did_cos(tables["arditi_cosines"], family),
        "k3_narrow": NOT_RUN_CELL if k3 is None or family not in causal_families else measure_k3(k3, family),
        "kappa_gt_8": limits("limits_kappa_per_reference", measure_kappa),
        "lrh_ratio": limits("limits_lrh_baseline", measure_lrh),
    }


def calibration_measurements(tables: Mapping[str, pd.DataFrame | None], report_r: Sequence[int],
                             kappa_threshold: float | None) -> dict[str, Measured]:
    sweep, kappa = tables.get("calibration_lambda_sweep"), tables.get("calibration_kappa")
    return {
        "sweet_spot": NOT_RUN_CELL if sweep is None else measure_sweet_spot(sweep, report_r),
        "lambda_sweep": NOT_RUN_CELL if sweep is None else measure_lambda_sweep(sweep, report_r),
        "kappa_gt_8": NOT_RUN_CELL if kappa is None else measure_mlp_kappa(kappa, kappa_threshold),
    }


def _row(scope: str, comparison: Comparison, models: str, quantity: str, description: str, measured: Measured,
         figure: Figure | None) -> dict[str, Any]:
    paper, paper_value, source = _paper_cell(comparison.kind, figure, quantity)
    return {"scope": scope, "comparison": comparison.kind, "run_models": models,
            "paper_model": comparison.paper.name if comparison.paper else "", "quantity": quantity,
            "description": description, "measured": measured.display, "measured_value": measured.value,
            "status": measured.status, "paper": paper, "paper_value": paper_value, "paper_source": source}


def headline_frame(tables: Mapping[str, pd.DataFrame | None], figures: PaperFigures, families: Mapping[str, Mapping[str, str]],
                   audit_eps: float, causal_families: Sequence[str], report_r: Sequence[int] = (),
                   kappa_threshold: float | None = None) -> pd.DataFrame:
    """One row per (family or the calibration MLP) x quantity: the run's figure, the paper's, and its source."""
    missing = [name for name in AUDIT_TABLES if tables.get(name) is None]
    if missing:
        raise HeadlineInputError(f"the headline table needs the diagnosis tables {missing}")
    rows = []
    for family, models in families.items():
        comparison = compare_family(family, models, figures)
        measured = family_measurements(tables, family, audit_eps, causal_families)
        figure_of = comparison.paper.figures if comparison.paper else {}
        rows += [_row(family, comparison, f"{models['base']} -> {models['aligned']}", quantity, description,
                      measured[quantity], figure_of.get(quantity)) for quantity, description in FAMILY_QUANTITIES.items()]
    calibration = Comparison("calibration grid", None)
    measured = calibration_measurements(tables, report_r, kappa_threshold)
    rows += [_row(CALIBRATION, calibration, "MLP", quantity, description, measured[quantity], figures.calibration.get(quantity))
             for quantity, description in CALIBRATION_QUANTITIES.items()]
    return pd.DataFrame(rows)


def scope_heading(scope: str, first: pd.Series) -> str:
    """The heading of one scope's table: which models it measures and whether they are the paper's, stand-ins or neither."""
    if scope == CALIBRATION:
        return "calibration MLP (model-independent): the run's grid beside the paper's (Sec. 5, App. A.8-A.11)"
    base, aligned = first["run_models"].split(" -> ")
    return SCOPE_HEADINGS[first["comparison"]].format(family=scope, base=base, aligned=aligned, name=first["paper_model"])


def headline_markdown(frame: pd.DataFrame, figures: PaperFigures) -> str:
    """Per family (then the calibration MLP) a table of the run's figures beside the paper's, under a heading
    that says whether these are the paper's models, stand-ins (the demo's organisms) or neither."""
    paper = figures.paper
    lines = ["### Headline figures: this run beside the paper", "",
             (f"Paper: {paper['title']} ({paper['author']}; {paper['archive']}); figures from {Path(figures.path).name}, "
              f"each with its source. Paper figures are at eps = {paper['eps']:g}."), "",
             f"Layers: {paper['layers']} The run's means over layers are those of its source tables.", ""]
    for scope, rows in frame.groupby("scope", sort=False):
        first = rows.iloc[0]
        heading = scope_heading(scope, first)
        columns = ["description", "measured"] + (["paper", "paper_source"] if first["comparison"] != "none" else [])
        table = rows[columns].rename(columns={"description": "quantity", "measured": "this run", "paper_source": "paper source"})
        lines += [f"#### {heading}", "", io.markdown_table(table)]
    return "\n".join(lines)


HTML_ID = "rankaudit-headline"
# Snakemake's report shows its workflow description in a narrow column (Tailwind's `prose max-w-lg`) beside the
# rule graph, vertically centred in a scrolling pane: a page taller than the screen would open scrolled to its
# middle, with its top out of reach. These rules apply only to the pane and column that hold the headline: the
# column widens so the tables are readable, and the pane starts at the top of the page.
HTML_STYLE = f"""
.prose.max-w-lg:has(#{HTML_ID}) {{ max-width: min(72rem, 92vw); }}
.items-center.overflow-auto:has(#{HTML_ID}) {{ align-items: flex-start; justify-content: flex-start; }}
#{HTML_ID} table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }}
#{HTML_ID} th, #{HTML_ID} td {{ border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }}
#{HTML_ID} th {{ background: #f3f3f3; }}
"""


def headline_html(frame: pd.DataFrame, figures: PaperFigures) -> str:
    """The tables of `headline_markdown` as one HTML fragment: a report item of its own, and the table the report
    opens on (report/workflow.rst includes it). Each row carries data-scope and data-quantity, so a browser test
    can read the rendered figures back and compare them with headline.parquet."""
    paper = figures.paper
    esc = html.escape
    parts = [f'<div id="{HTML_ID}">', f"<style>{HTML_STYLE}</style>",
             "<h2>Headline figures: this run beside the paper</h2>",
             (f"<p>Paper: {esc(str(paper['title']))} ({esc(str(paper['author']))}; {esc(str(paper['archive']))}); figures "
              f"from {esc(Path(figures.path).name)}, each with its source. Paper figures are at eps = {paper['eps']:g}.</p>"),
             f"<p>Layers: {esc(str(paper['layers']))} The run's means over layers are those of its source tables.</p>"]
    for scope, rows in frame.groupby("scope", sort=False):
        first = rows.iloc[0]
        heading = scope_heading(scope, first)
        with_paper = first["comparison"] != "none"
        header = ["quantity", "this run"] + (["paper", "paper source"] if with_paper else [])
        parts += [f'<h3 data-scope="{esc(str(scope))}">{esc(heading)}</h3>', f'<table data-scope="{esc(str(scope))}">',
                  "<thead><tr>" + "".join(f"<th>{name}</th>" for name in header) + "</tr></thead>", "<tbody>"]
        for _, row in rows.iterrows():
            cells = [("description", row["description"]), ("measured", row["measured"])]
            cells += [("paper", row["paper"]), ("paper_source", row["paper_source"])] if with_paper else []
            parts.append(f'<tr data-scope="{esc(str(scope))}" data-quantity="{esc(row["quantity"])}">'
                         + "".join(f'<td data-column="{column}">{esc(str(value))}</td>' for column, value in cells) + "</tr>")
        parts += ["</tbody>", "</table>"]
    parts.append("</div>")
    return "\n".join(parts) + "\n"


TABLE_NAMES = tuple(COLUMNS)


def write_headline(inputs: Mapping[str, str], figures_path: str, output_stem: str, families: Mapping[str, Mapping[str, str]],
                   audit_eps: float, causal_families: Sequence[str] = (), report_r: Sequence[int] = (),
                   kappa_threshold: float | None = None) -> pd.DataFrame:
    """Read the tables named in `inputs` (table name -> file; absent = stage not run) and write
    `<output_stem>.{parquet,csv,md,html}`."""
    figures = load_paper_figures(figures_path)
    tables = {name: read_table(path, name, required_columns(name, report_r, kappa_threshold))
              for name, path in inputs.items() if name in TABLE_NAMES}
    frame = headline_frame(tables, figures, families, audit_eps, causal_families, report_r, kappa_threshold)
    stem = Path(output_stem)
    with io.atomic_path(stem.with_suffix(".parquet")) as tmp:
        frame.to_parquet(tmp, index=False)
    with io.atomic_path(stem.with_suffix(".csv")) as tmp:
        frame.to_csv(tmp, index=False)
    with io.atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text(headline_markdown(frame, figures))
    with io.atomic_path(stem.with_suffix(".html")) as tmp:
        tmp.write_text(headline_html(frame, figures))
    return frame
