"""Prompt datasets: project-written demo sets, public sets fetched by URL, and the tidy table they share.

Every set is stored as `results/prompts/<dataset>.parquet` (columns instruction, category, source, split;
concept-pair sets add pair and side) next to `<dataset>.provenance.json`.
"""

from rankaudit.prompts.build import GENERATED_SET_KEYS, generate_set, generated_settings
from rankaudit.prompts.public import load_public_set
from rankaudit.prompts.tables import PromptDataError, read_prompt_set, select_prompts, write_prompt_set

__all__ = [
    "GENERATED_SET_KEYS",
    "PromptDataError",
    "generate_set",
    "generated_settings",
    "load_public_set",
    "read_prompt_set",
    "select_prompts",
    "write_prompt_set",
]
