"""Entry point of the `download_model` rule (rules/download.smk): fetch one model into the cache, record it."""

from __future__ import annotations

from rankaudit import io
from rankaudit.download import download_model


def write_download_record(model: str, source: str, revision: str | None, output: str) -> None:
    """The `download_model` rule's job: fetch one model and write its record (results/models/<model>.download.json)."""
    io.write_json(output, download_model(model, source, revision))
