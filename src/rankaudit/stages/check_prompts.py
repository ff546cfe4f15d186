"""Entry point of the `check_prompts` rule (rules/prompts.smk): check the prompts one model job will feed its model.

It loads tokenizers and configs only, no weights, so a bad prompt fails this cheap job before the job that loads
the model starts (`rankaudit.prompt_checks`). Separate from `rankaudit.stages.prompts` because it needs
transformers, which the prompt-table jobs' environment does not have.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from rankaudit import io
from rankaudit.models import load_config, load_tokenizer
from rankaudit.prompt_checks import CheckedModel, check_prompt_sets
from rankaudit.prompts.tables import read_prompt_set

logger = logging.getLogger(__name__)

ModelSpec = tuple[str, Mapping[str, Any]]


def _checked_model(spec: ModelSpec) -> CheckedModel:
    name, settings = spec
    loader = {"revision": settings.get("revision"), "trust_remote_code": bool(settings.get("trust_remote_code", False))}
    return CheckedModel(name, load_tokenizer(settings["location"], **loader), load_config(settings["location"], **loader))


def check_job_prompts(*, job: str, model: ModelSpec, template: ModelSpec, partners: Sequence[ModelSpec],
                      prompt_files: Mapping[str, str], formats: Mapping[str, Sequence[str]], system_prompt: str,
                      special_token_text: str, record_path: str, version: int) -> None:
    """Check every prompt of `prompt_files` ({dataset: table}) in `formats[dataset]` as job `job` feeds `model`.

    `model`, `template` and each partner are (model name, loading spec with location, revision, trust_remote_code).
    """
    datasets = {dataset: (read_prompt_set(path), list(formats[dataset])) for dataset, path in prompt_files.items()}
    record = check_prompt_sets(model=_checked_model(model), template=_checked_model(template),
                               partners=[_checked_model(partner) for partner in partners], datasets=datasets,
                               system_prompt=system_prompt, special_token_text=special_token_text)
    escaped = sum(f["n_escaped"] for entry in record["datasets"].values() for f in entry["formats"].values())
    logger.info("%s: %d prompt tables checked for %s (limit %s positions), %d prompt renderings escaped", job,
                len(datasets), model[0], record["limit"], escaped)
    io.write_json(record_path, {"job": job, **record, "stage_version": version})
