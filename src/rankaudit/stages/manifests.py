"""Entry points of the rules of rules/manifests.smk (`model_manifest`, `template_manifest`): describe one model's
files (rankaudit.manifests) and write the manifest every job that loads the model reads."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rankaudit import io
from rankaudit.manifests import build_manifest

logger = logging.getLogger(__name__)


def write_manifest(model: str, spec: Mapping[str, Any], output: str, *, template: bool = False) -> None:
    """The manifest rule's job: describe one model and write its manifest atomically."""
    manifest = build_manifest(model, spec, template=template)
    io.write_json(output, manifest)
    logger.info(
        "%s: %s manifest of %s (%s, resolved revision %s, weights sha256 %s) written to %s",
        model,
        manifest["part"],
        manifest["location"],
        manifest["kind"],
        manifest.get("resolved_revision"),
        manifest.get("weights_sha256"),
        output,
    )
