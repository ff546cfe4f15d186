"""Snakemake adapter: capture every cell of one model (or, for the precision floor, its first prompts in float32)."""

from rankaudit.manifests import with_manifest
from rankaudit.stages.capture import capture_model
from rankaudit.workflow_logging import log_to

with log_to(snakemake.log[0]):
    params = snakemake.params
    capture_model(
        model_name=params.model_name,
        model=with_manifest(params.model, snakemake.input.model),
        template_name=params.template_name,
        template=with_manifest(params.template, snakemake.input.template),
        cells=[tuple(cell) for cell in params.cells],
        layers=params.layers,
        prompt_files=params.prompt_files,
        output_pattern=params.output_pattern,
        record_path=snakemake.output.record,
        batch_size=params.batch_size,
        mean_last_k=params.mean_last_k,
        system_prompt=params.system_prompt,
        special_token_text=params.special_token_text,
        version=params.version,
        threads=snakemake.threads,
        first_prompts=getattr(params, "first_prompts", None),
        compute_dtype=getattr(params, "compute_dtype", None),
    )
