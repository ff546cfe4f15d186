"""Snakemake adapter: check every prompt one model job will read, from tokenizers and configs only."""

from rankaudit.stages.check_prompts import check_job_prompts
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    params = snakemake.params
    check_job_prompts(
        job=params.job,
        model=tuple(params.model),
        template=tuple(params.template),
        partners=[tuple(partner) for partner in params.partners],
        prompt_files=params.prompt_files,
        formats=params.formats,
        system_prompt=params.system_prompt,
        special_token_text=params.special_token_text,
        record_path=snakemake.output[0],
        version=params.version,
    )
