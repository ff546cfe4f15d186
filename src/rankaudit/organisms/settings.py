"""Which part of the `organisms` config each build step reads (pure Python: the rules call it at parse time).

Each role gets only the keys its weights depend on, so that changing, say, the unsafe fine-tune's learning
rate re-runs that one role and leaves the base and aligned models alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROLES = ("base", "aligned", "unsafe_ft", "planted")
_ROLE_PHASES = {"base": (), "aligned": ("align",), "unsafe_ft": ("align", "unsafe_ft"), "planted": ("planted",)}


def role_settings(organisms: Mapping[str, Any], family: str, role: str) -> dict[str, Any]:
    """The config slice that determines `role` of `family` (its parents' slices included)."""
    if role not in ROLES:
        raise ValueError(f"unknown organism role {role!r} (known: {list(ROLES)})")
    architectures = organisms.get("architectures", {})
    if family not in architectures:
        raise KeyError(f"organisms.architectures: no entry for family {family!r}")
    base = {
        "seed": organisms["seed"],
        "torch_threads": organisms["torch_threads"],
        "tokenizer": dict(organisms["tokenizer"]),
        "architecture": dict(architectures[family]),
        "pretrain": dict(organisms["pretrain"]),
    }
    return {**base, **{phase: dict(organisms[phase]) for phase in _ROLE_PHASES[role]}}


def require(section: Mapping[str, Any], key: str, where: str) -> Any:
    """Read one config key, naming its dotted path when it is missing."""
    if key not in section:
        raise KeyError(f"{where}.{key}: missing from the organisms config slice")
    return section[key]
