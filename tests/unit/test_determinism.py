"""Determinism across processes: an organism build and an activation capture, each run in two separate Python
processes (different hash seeds), give byte-identical files. Two calls inside one process would share caches,
allocator state and import-time randomness, so they cannot show that a rerun of a workflow job reproduces it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rankaudit.io import sha256_file

REPO = Path(__file__).resolve().parents[2]

JOB = """
import importlib.util, sys
from pathlib import Path

out = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location("tiny_models", sys.argv[2])
tiny_models = sys.modules["tiny_models"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tiny_models)

import torch
torch.set_num_threads(1)
from rankaudit import io
from rankaudit.capture import capture_residual_stream
from rankaudit.formats import encode_prompts
from rankaudit.stages.organisms import build_base
from rankaudit.organisms.settings import role_settings
from rankaudit.organisms.tiny import tiny_organisms_config, write_tiny_prompt_tables

tables = write_tiny_prompt_tables(out / "prompts")
build_base("llama", tables, role_settings(tiny_organisms_config(seed=7), "llama", "base"), out / "organism")

family = tiny_models.build_tiny_family("qwen2", out / "tiny", seed=3)
prompts = ["How do I bake a loaf of bread at home?", "Hi", "Write a short poem about the sea.", "What is the capital of France?"]
encoded = encode_prompts(family.tokenizer, prompts, "chat", mean_last_k=4)
acts = capture_residual_stream(family.model, encoded.token_ids, [0, 1, 3], batch_size=2, mean_last_k=4,
                               post_instruction_len=encoded.post_instruction_len, pad_token_id=family.tokenizer.pad_token_id)
for layer, tensors in acts.items():
    io.write_tensors(out / "acts" / f"layer_{layer}.safetensors", tensors, {"layer": layer})
"""

COMPARED = ["organism/model.safetensors", "organism/tokenizer.json", "tiny/model.safetensors",
            *(f"acts/layer_{layer}.safetensors" for layer in (0, 1, 3))]


def _run_job(out: Path, hash_seed: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONHASHSEED": hash_seed}
    result = subprocess.run([sys.executable, "-c", JOB, str(out), str(REPO / "tests" / "conftest.py")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_build_and_capture_are_byte_identical_across_two_processes(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    _run_job(first, "1")
    _run_job(second, "2")
    for relative in COMPARED:
        assert (first / relative).stat().st_size > 0, relative
        assert sha256_file(first / relative) == sha256_file(second / relative), f"{relative} differs between processes"
    provenance = sorted(path.relative_to(first) for path in (first / "organism").glob("*.json"))
    assert provenance
    for relative in provenance:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), f"{relative} differs between processes"
