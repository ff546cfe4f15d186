"""Where the selected Arditi direction sits among the audit's layers (numpy and pandas only; no torch).

Two report tables of the causal stage:

- the canonical cosines: for each family, variant and layer, |cos(u_1(M_v^l), r*)| between the top
  right-singular direction of each safety variant (uncentered and centered, from the per-layer direction files of
  the spectra stage) and the canonical direction r* chosen by Arditi's selection (one vector, at its own layer and
  post-instruction position), beside |cos(u_1, r_l)| with that layer's own difference in means. A cosine with a
  zero vector (zero as the spectra stage's `top_direction_status` / `refusal_direction_status` say, or exactly
  zero) is undefined and reported as NaN with a note, never as a number; the per-family means leave out
  layer 0 (the embedding output, where the chat-format last token is one template token for every prompt) and
  every layer whose u_1 is zero;
- the layer convention: our layer l is the output of block l-1 (layer 0 = embedding output, so layer l is also
  the input of block l, Arditi's resid_pre index), and the band layers the paper's script would have ablated for
  the same number of blocks L. That script indexes a layer by the block whose output it hooks and draws a band
  [low, high] x count as integer-truncated, evenly spaced points from int(low L) to max(int(high L), int(low L) + 1);
  in our convention its layers are those block indices + 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rankaudit import io
from rankaudit.causal.no_refusal import NO_REFUSAL
from rankaudit.degeneracy import OK, RANK_AT_MOST_1, ZERO
from rankaudit.sweeps import band_layers

TOP_PREFIX = "top_direction_"
CENTERED_SUFFIX = "_centered"
PER_LAYER_KEY = "refusal_direction"
EMBEDDING_LAYER = 0
LAYER_CONVENTION = "layer l = output of block l-1 (0 = embedding output) = input of block l"


def abs_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """|cos(a, b)|, NaN when either vector is zero (or not finite): the angle is then undefined."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    norm_a, norm_b = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if not (math.isfinite(norm_a) and math.isfinite(norm_b)) or norm_a == 0.0 or norm_b == 0.0:
        return math.nan
    return min(1.0, abs(float(a @ b)) / (norm_a * norm_b))


def _is_zero(vector: np.ndarray, status: str | None) -> bool:
    """Zero as the spectra stage decided it (against the activations' scale, `rankaudit.degeneracy`), else exactly."""
    return status == ZERO or not np.any(np.asarray(vector))


def layer_cosine_rows(family: str, layer: int, tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any],
                      selected: np.ndarray, where: str) -> list[dict[str, Any]]:
    """One row per (variant, centered) top direction in one layer's direction file (tensors and metadata)."""
    keys = sorted(key for key in tensors if key.startswith(TOP_PREFIX))
    if not keys or PER_LAYER_KEY not in tensors:
        raise KeyError(f"{where}: needs {PER_LAYER_KEY!r} and {TOP_PREFIX}<variant>[{CENTERED_SUFFIX}] directions "
                       f"(written by the spectra stage's layer_spectra rule), has {sorted(tensors)}")
    per_layer = tensors[PER_LAYER_KEY]
    per_layer_zero = _is_zero(per_layer, meta.get("refusal_direction_status"))
    statuses = meta.get("top_direction_status") or {}
    rows = []
    for key in keys:
        top = tensors[key]
        if top.size != selected.size or per_layer.size != selected.size:
            raise ValueError(f"{where}: {key} has {top.size} entries, the selected direction {selected.size}")
        top_zero = _is_zero(top, statuses.get(key))
        name = key.removeprefix(TOP_PREFIX)
        centered = name.endswith(CENTERED_SUFFIX)
        notes = []
        if layer == EMBEDDING_LAYER:
            notes.append("embedding output: not counted in means")
        if top_zero:
            notes.append("M is zero here: u_1 and its cosines undefined")
        elif statuses.get(key) == RANK_AT_MOST_1:
            notes.append("M has rank <= 1 here: u_1 is its one row direction")
        if not top_zero and per_layer_zero:
            notes.append("per-layer difference in means is zero: its cosine undefined")
        rows.append({"family": family, "variant": name.removesuffix(CENTERED_SUFFIX) if centered else name,
                     "centered": centered, "layer": layer, "top_status": ZERO if top_zero else statuses.get(key, OK),
                     "cos_selected": math.nan if top_zero else abs_cosine(top, selected),
                     "cos_per_layer": math.nan if top_zero or per_layer_zero else abs_cosine(top, per_layer),
                     "in_mean": layer != EMBEDDING_LAYER and not top_zero, "note": "; ".join(notes)})
    return rows


def canonical_cosine_table(records: Sequence[Mapping[str, Any]], selected_directions: Mapping[str, str],
                           layer_directions: Mapping[str, Mapping[int, str]]) -> pd.DataFrame:
    """Per family, variant, centering and layer: |cos(u_1, r*)| and |cos(u_1, r_l)|, with r*'s layer and position.

    A family with no refusal to ablate has no r*: it gets one row with the selection's note.
    """
    rows = []
    for record in records:
        family = record["family"]
        if record.get("status") == NO_REFUSAL:
            rows.append({"family": family, "note": record["note"]})
            continue
        chosen, chosen_meta = io.read_tensors(selected_directions[family])
        selected = chosen["unit"]
        anchor = {"selected_layer": int(chosen_meta["layer"]), "selected_position": int(chosen_meta["position"])}
        for layer, path in sorted(layer_directions[family].items()):
            tensors, meta = io.read_tensors(path)
            rows += [{**row, **anchor} for row in layer_cosine_rows(family, int(layer), tensors, meta, selected, path)]
    columns = ["family", "variant", "centered", "layer", "selected_layer", "selected_position", "top_status", "cos_selected",
               "cos_per_layer", "in_mean", "note"]
    return pd.DataFrame(rows).reindex(columns=columns)


def canonical_cosine_means(per_layer: pd.DataFrame) -> pd.DataFrame:
    """Per family, variant and centering: the means of both cosines over the layers counted (`in_mean`: not
    layer 0, u_1 not zero), how many layers that is, and the layers left out."""
    measured = per_layer[per_layer["variant"].notna()]
    rows = []
    for (family, variant, centered), group in measured.groupby(["family", "variant", "centered"], sort=True):
        counted = group[group["in_mean"].astype(bool)]
        per_layer_defined = counted["cos_per_layer"].dropna()
        rows.append({"family": family, "variant": variant, "centered": bool(centered),
                     "selected_layer": int(group["selected_layer"].iloc[0]),
                     "selected_position": int(group["selected_position"].iloc[0]),
                     "cos_selected_mean": float(counted["cos_selected"].mean()) if len(counted) else math.nan,
                     "cos_per_layer_mean": float(per_layer_defined.mean()) if len(per_layer_defined) else math.nan,
                     "n_layers": len(counted), "n_layers_per_layer_defined": len(per_layer_defined),
                     "excluded_layers": " ".join(str(int(layer)) for layer in sorted(group.loc[~group["in_mean"].astype(bool), "layer"]))})
    notes = per_layer[per_layer["variant"].isna()][["family", "note"]]
    frame = pd.DataFrame(rows)
    return pd.concat([frame.assign(note=""), notes], ignore_index=True) if len(notes) else frame.assign(note="")


def paper_script_band(n_blocks: int, low: float, high: float, count: int) -> list[int]:
    """The block indices the paper's script ablates for a band: integer-truncated evenly spaced points from
    int(low L) to max(int(high L), int(low L) + 1), duplicates kept, indexed by the block whose output is hooked."""
    start = int(low * n_blocks)
    stop = max(int(high * n_blocks), start + 1)
    return [int(point) for point in np.linspace(start, stop, count)]


def layer_convention_table(records: Sequence[Mapping[str, Any]], bands: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per family and band: our band layers and those of the paper's script for the same L, in both indexings."""
    rows = []
    for record in records:
        n_blocks = int(record["n_blocks"])
        for name, spec in bands.items():
            low, high = spec["range"]
            ours = band_layers(n_blocks, low, high, spec["count"])
            script = paper_script_band(n_blocks, low, high, spec["count"])
            script_ours = sorted({block + 1 for block in script})
            rows.append({"family": record["family"], "n_blocks": n_blocks, "band": name, "range": f"[{low}, {high}]",
                         "count": int(spec["count"]), "layers": " ".join(map(str, ours)),
                         "paper_script_blocks": " ".join(map(str, script)),
                         "paper_script_layers": " ".join(map(str, script_ours)), "same_layers": ours == script_ours,
                         "convention": LAYER_CONVENTION})
    return pd.DataFrame(rows)
