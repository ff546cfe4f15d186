"""The factorial design's modification matrices (METHODS §2), n x d with one row per prompt, in float64.

A cell is the activation matrix of one model (A aligned, B base, U unsafe reference) under one format (chat, raw)
on one dataset, rows in the dataset's prompt order. Every variant is a difference of cells that share that order,
so row i of every matrix belongs to prompt i. The identities the design rests on hold exactly (up to float64
round-off) and are tested:
    M_naive = M_template + base_format = M_aligned + [A(raw) - B(raw)],
    interaction = M_aligned - base_format,
    mean row of M_DiD = r_A - r_B (the aligned-minus-base harmful-minus-control direction under chat).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rankaudit.spectra import as_matrix

VARIANTS = ("naive", "template", "aligned", "did")
EXTRAS = ("base_format", "interaction")


def _cells(**cells: np.ndarray) -> dict[str, np.ndarray]:
    """Convert cells to float64 and check they share one n x d shape, naming the odd one out."""
    arrays = {name: as_matrix(value, name) for name, value in cells.items()}
    shapes = {name: array.shape for name, array in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"cells must share one (n prompts, d) shape, got {shapes}")
    return arrays


def dataset_matrices(a_chat: np.ndarray, a_raw: np.ndarray, b_chat: np.ndarray, b_raw: np.ndarray) -> dict[str, np.ndarray]:
    """The variants one dataset's four cells determine: naive, template, aligned, base_format, interaction.

    naive = A(chat) - B(raw); template = A(chat) - B(chat); aligned = A(chat) - A(raw);
    base_format = B(chat) - B(raw); interaction = [A(chat) - A(raw)] - [B(chat) - B(raw)].
    """
    cells = _cells(a_chat=a_chat, a_raw=a_raw, b_chat=b_chat, b_raw=b_raw)
    a_chat, a_raw, b_chat, b_raw = cells["a_chat"], cells["a_raw"], cells["b_chat"], cells["b_raw"]
    aligned = a_chat - a_raw
    base_format = b_chat - b_raw
    return {
        "naive": a_chat - b_raw,
        "template": a_chat - b_chat,
        "aligned": aligned,
        "base_format": base_format,
        "interaction": aligned - base_format,
    }


def did_matrix(template_safety: np.ndarray, template_control: np.ndarray) -> np.ndarray:
    """M_DiD = M_template(D_s) - mean row of M_template(D_c): removes what alignment does to every prompt.

    The two datasets may have different numbers of prompts but must share d.
    """
    safety = as_matrix(template_safety, "template_safety")
    control = as_matrix(template_control, "template_control")
    if safety.shape[1] != control.shape[1]:
        raise ValueError(f"did_matrix: d differs between safety {safety.shape} and control {control.shape}")
    return safety - control.mean(axis=0, keepdims=True)


def all_matrices(safety_cells: Mapping[str, np.ndarray], control_cells: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every variant and extra of the safety dataset, including M_DiD, from both datasets' cells.

    Each mapping holds the keys a_chat, a_raw, b_chat, b_raw (the `dataset_matrices` arguments).
    """
    required = {"a_chat", "a_raw", "b_chat", "b_raw"}
    for label, cells in (("safety_cells", safety_cells), ("control_cells", control_cells)):
        missing = required - set(cells)
        if missing:
            raise KeyError(f"{label}: missing cells {sorted(missing)}")
    safety = dataset_matrices(**{key: safety_cells[key] for key in required})
    control_template = _cells(a_chat=control_cells["a_chat"], b_chat=control_cells["b_chat"])
    safety["did"] = did_matrix(safety["template"], control_template["a_chat"] - control_template["b_chat"])
    return safety


def shift_matrix(model_chat: np.ndarray, base_chat: np.ndarray) -> np.ndarray:
    """model(chat) - base(chat): the template-controlled shift of any model (honest A or an unsafe reference U).

    The spectral-gap test takes S = shift(A) - shift(U) = A(chat) - U(chat) from two of these.
    """
    cells = _cells(model_chat=model_chat, base_chat=base_chat)
    return cells["model_chat"] - cells["base_chat"]


def concept_pair_matrix(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Rows h(a_i) - h(b_i) for concept pairs (e.g. English / French): the linear-representation baseline."""
    cells = _cells(first=first, second=second)
    return cells["first"] - cells["second"]
