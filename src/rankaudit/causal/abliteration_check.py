"""The check of the abliterated reference model (METHODS §6): weight edit against hook ablation, in float32.

`stages.causal.write_abliterated` captures the residual stream under the hook ablation and from the reloaded
weight-edited copy on the first `ABLITERATION_CHECK_PROMPTS` selection prompts, and `relative_differences` says
how far apart they are and how much of the direction is left.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rankaudit.interventions import unit

ABLITERATION_CHECK_PROMPTS = 8
CHECK_DTYPE = "float32"


def relative_differences(reference: Mapping[int, Mapping[str, np.ndarray]], other: Mapping[int, Mapping[str, np.ndarray]],
                         direction: np.ndarray) -> tuple[float, float]:
    """(worst over layers of max|reference - other| / max|reference|, worst of max|other . r| / max|other|) at the
    last position: how far the weight edit is from the hook ablation, and how much of r is left in the stream."""
    r = unit(direction, "abliteration check")
    difference = max(float(np.max(np.abs(reference[l]["last"] - other[l]["last"]))) / max(1e-12, float(np.max(np.abs(reference[l]["last"]))))
                     for l in reference)
    projection = max(float(np.max(np.abs(other[l]["last"] @ r))) / max(1e-12, float(np.max(np.abs(other[l]["last"]))))
                     for l in reference)
    return difference, projection
