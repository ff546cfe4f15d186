"""Every job that loads a model asks for what that model needs (rankaudit.resources.job_resources)."""

import pytest

from rankaudit.resources import checkpoint_resources, checkpoint_weights_mb, job_resources

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


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_a_retry_asks_for_attempt_times_the_memory_and_time_never_more_gpus(attempt) -> None:
    """SLURM's OUT_OF_MEMORY and TIMEOUT are retried (profiles/slurm `retries`) with more of both."""
    first = job_resources(GEMMA2_9B, CUDA_BF16, mem_mb=16000, minutes=60)
    stated = {**GEMMA2_9B, "resources": {"mem_mb": 64000, "runtime": 240, "gpus": 4}}
    assert job_resources(GEMMA2_9B, CUDA_BF16, mem_mb=16000, minutes=60, attempt=attempt) == {
        "mem_mb": 24480 * attempt, "runtime": 97 * attempt, "gpu": first["gpu"]}
    assert job_resources(stated, CUDA_BF16, mem_mb=16000, minutes=60, attempt=attempt) == {
        "mem_mb": 64000 * attempt, "runtime": 240 * attempt, "gpu": 4}


def _checkpoint(directory, sizes_mb) -> str:
    """A checkpoint folder whose safetensors files have these sizes (sparse: nothing is written)."""
    directory.mkdir(parents=True)
    for index, size in enumerate(sizes_mb):
        with open(directory / f"model-{index:05d}.safetensors", "wb") as handle:
            handle.truncate(int(size * 1e6))
    (directory / "config.json").write_text("{}")
    return str(directory)


def test_checkpoint_jobs_are_sized_from_the_largest_checkpoint_on_disk(tmp_path) -> None:
    # an 8B checkpoint in float32 (two shards, 32 GB) and a tiny organism; the job loads them one at a time
    large = _checkpoint(tmp_path / "large", [20000, 12000])
    tiny = _checkpoint(tmp_path / "tiny", [3])
    assert checkpoint_weights_mb(large) == 32000 and checkpoint_weights_mb(tmp_path / "missing") == 0
    assert checkpoint_resources([tiny, large], mem_mb=8000, minutes=30) == {"mem_mb": 34000, "runtime": 94}
    assert checkpoint_resources([large], mem_mb=8000, minutes=30, weight_copies=2, attempt=2) == {
        "mem_mb": 2 * 66000, "runtime": 2 * 94}
    # a tiny checkpoint (3 MB: a minute rounded up) or one not written yet (dry run, DAG building) gets the floor
    assert checkpoint_resources([tiny], mem_mb=3000, minutes=15, attempt=3) == {"mem_mb": 9000, "runtime": 3 * 16}
    assert checkpoint_resources([tmp_path / "missing"], mem_mb=8000, minutes=60) == {"mem_mb": 8000, "runtime": 60}
