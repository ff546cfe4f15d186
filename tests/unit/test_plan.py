"""What the DAG is planned from: cells per model, layers, template models (the cross-key checks: test_config_checks.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rankaudit import plan

DEMO = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "config.yaml").read_text())


def test_base_and_aligned_take_every_cell_references_only_chat_safety_and_control() -> None:
    cells = plan.model_cells(DEMO, "llama_aligned")
    assert len(cells) == 2 * (2 + len(DEMO["datasets"]["concepts"]))
    assert {fmt for fmt, _ in cells} == {"raw", "chat"}
    assert plan.model_cells(DEMO, "llama_unsafe_ft") == [("chat", "safety"), ("chat", "control")]


def test_a_shared_base_is_captured_once_with_one_template() -> None:
    assert plan.captured_models(DEMO).count("llama_base") == 1
    assert set(plan.model_families(DEMO, "llama_base")) == {"llama", "llama_planted"}
    assert plan.model_template(DEMO, "llama_base") == "llama_aligned"
    assert plan.model_template(DEMO, "llama_planted") == "llama_aligned"


def test_layers_run_from_the_embedding_output_to_the_last_block() -> None:
    blocks = DEMO["organisms"]["architectures"]["llama"]["num_hidden_layers"]
    assert plan.family_layers(DEMO, "llama") == list(range(blocks + 1))


def test_a_reference_without_n_layers_takes_its_aligned_models_depth() -> None:
    assert plan.model_n_layers(DEMO, "llama_abliterated") == plan.model_n_layers(DEMO, "llama_aligned")


def test_workflow_built_sources_are_recognised() -> None:
    assert plan.built_by_workflow("resources/abliterated/llama")
    assert not plan.built_by_workflow("meta-llama/Llama-3.1-8B")


def test_a_malformed_organism_source_is_named() -> None:
    with pytest.raises(plan.ConfigError, match="organism:<family>/<role>"):
        plan.parse_organism("organism:llama")
