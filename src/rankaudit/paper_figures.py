"""The paper's published headline figures (reference/paper_figures.yaml) and which run family each is compared with.

The numbers live in that data file, each with its source; this module only checks its shape, so that a figure
without a source or a family without model ids fails when the file is read with a ConfigError naming the
file and the key at fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rankaudit.plan import ConfigError

CALIBRATION = "calibration"
ORGANISM_PREFIX = "organism:"


@dataclass(frozen=True)
class Figure:
    """One published figure: how the paper states it, where, and the number compared (if a single one is)."""

    text: str
    source: str
    value: float | None = None
    of: int | None = None
    rows: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class PaperFamily:
    key: str
    name: str
    base: str
    aligned: str
    figures: Mapping[str, Figure]


@dataclass(frozen=True)
class PaperFigures:
    path: str
    paper: Mapping[str, Any]
    families: Mapping[str, PaperFamily]
    calibration: Mapping[str, Figure]


@dataclass(frozen=True)
class Comparison:
    """How a run family relates to the paper: `kind` is 'paper model', 'organism stand-in', 'stand-in' or 'none'."""

    kind: str
    paper: PaperFamily | None


def _require(mapping: Any, key: str, where: str, path: str) -> Any:
    if not isinstance(mapping, Mapping) or key not in mapping or mapping[key] in (None, ""):
        raise ConfigError(f"{where}.{key}" if where else key, "is missing", files=[path])
    return mapping[key]


def _figure(entry: Any, where: str, path: str) -> Figure:
    text, source = str(_require(entry, "text", where, path)), str(_require(entry, "source", where, path))
    value = entry.get("value")
    if value is not None and not isinstance(value, (int, float)):
        raise ConfigError(f"{where}.value", f"must be a number, got {value!r}", files=[path])
    rows = tuple(entry.get("rows") or ())
    for index, row in enumerate(rows):
        for key in ("lambda", "rho", "compliance", "after"):
            _require(row, key, f"{where}.rows[{index}]", path)
    return Figure(text=text, source=source, value=None if value is None else float(value), of=entry.get("of"), rows=rows)


def load_paper_figures(path: str | Path) -> PaperFigures:
    """Read and check the figures file: every figure has a text and a source, every family its model ids."""
    path = str(path)
    data = yaml.safe_load(Path(path).read_text())
    paper = _require(data, "paper", "", path)
    families = {}
    for key, entry in _require(data, "families", "", path).items():
        where = f"families.{key}"
        figures = {name: _figure(figure, f"{where}.figures.{name}", path)
                   for name, figure in _require(entry, "figures", where, path).items()}
        families[key] = PaperFamily(key=key, name=str(_require(entry, "name", where, path)),
                                    base=str(_require(entry, "base", where, path)),
                                    aligned=str(_require(entry, "aligned", where, path)), figures=figures)
    calibration = {name: _figure(figure, f"{CALIBRATION}.figures.{name}", path)
                   for name, figure in _require(_require(data, CALIBRATION, "", path), "figures", CALIBRATION, path).items()}
    return PaperFigures(path=path, paper=paper, families=families, calibration=calibration)


def compare_family(family: str, models: Mapping[str, str], figures: PaperFigures) -> Comparison:
    """The paper family a run family is compared with: the one whose Hub ids its base and aligned models load,
    else the paper family of the same name as a stand-in (the demo's organisms), else none."""
    base, aligned = models["base"].lower(), models["aligned"].lower()
    for paper_family in figures.families.values():
        if (paper_family.base.lower(), paper_family.aligned.lower()) == (base, aligned):
            return Comparison("paper model", paper_family)
    if family in figures.families:
        organisms = all(models[role].startswith(ORGANISM_PREFIX) for role in ("base", "aligned"))
        return Comparison("organism stand-in" if organisms else "stand-in", figures.families[family])
    return Comparison("none", None)
