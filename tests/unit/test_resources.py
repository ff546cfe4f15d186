"""Every job that loads a model asks for what that model needs (rankaudit.resources.job_resources)."""

import pytest

from rankaudit.resources import job_resources

CUDA_BF16 = {"device": "cuda", "dtype": "bfloat16"}
GEMMA2_9B = {"source": "google/gemma-2-9b-it", "n_layers": 42, "n_params_b": 9.24}


def test_the_estimate_covers_the_weights_above_the_rule_floor() -> None:
    # Gemma-2-9B in bfloat16: 18480 MB of weights, more than the 16 GB the causal rules used to ask for
    assert job_resources(GEMMA2_9B, CUDA_BF16, mem_mb=16000, minutes=60) == {"mem_mb": 24480, "runtime": 97, "gpu": 1}
    # a job holding two copies (save + reload), retried: everything scales with the attempt
    assert job_resources(GEMMA2_9B, CUDA_BF16, mem_mb=40000, minutes=30, attempt=2, weight_copies=2) == {
        "mem_mb": 2 * 42960, "runtime": 2 * 67, "gpu": 1}
    # float32 doubles the weights; an entry without n_params_b gets the rule's floor
    assert job_resources({**GEMMA2_9B, "dtype": "float32"}, CUDA_BF16, mem_mb=8000, minutes=60)["mem_mb"] == 42960
    assert job_resources({"source": "org/tiny"}, CUDA_BF16, mem_mb=8000, minutes=60) == {"mem_mb": 8000, "runtime": 60, "gpu": 1}


@pytest.mark.parametrize("floor", [8000, 16000, 40000])
def test_stated_resources_replace_the_estimate_in_every_rule(floor) -> None:
    entry = {**GEMMA2_9B, "resources": {"mem_mb": 300000, "runtime": 240, "gpus": 4}}
    assert job_resources(entry, CUDA_BF16, mem_mb=floor, minutes=60) == {"mem_mb": 300000, "runtime": 240, "gpu": 4}
    # never below a rule's floor
    small = {"source": "org/tiny", "resources": {"mem_mb": 1000, "runtime": 5}}
    assert job_resources(small, CUDA_BF16, mem_mb=floor, minutes=60) == {"mem_mb": floor, "runtime": 60, "gpu": 1}


def test_a_cpu_model_requests_no_gpu_whatever_its_size() -> None:
    entry = {**GEMMA2_9B, "resources": {"gpus": 2}}
    assert job_resources(entry, {"device": "cpu", "dtype": "float32"}, mem_mb=8000, minutes=60)["gpu"] == 0
    assert job_resources({**entry, "device": "cuda:1"}, {"device": "cpu", "dtype": "float32"}, mem_mb=8000, minutes=60)["gpu"] == 2
