"""A GPU out-of-memory halves the batch and redoes it: on the CPU, a forward that raises torch.OutOfMemoryError for
batches larger than k stands in for the GPU. Results must equal a run started at a batch size <= k bit for bit, and
the job's batching record must show each halving."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rankaudit import batching  # noqa: E402
from rankaudit.batching import BatchOutOfMemoryError, job_batching_record, run_in_batches_halving_on_oom  # noqa: E402
from rankaudit.capture import CaptureStats, capture_residual_stream  # noqa: E402
from rankaudit.organisms.generation import generate_greedy_ids  # noqa: E402
from rankaudit.padding import pad_token_id  # noqa: E402
from rankaudit.refusal import last_position_log_probs  # noqa: E402

PROMPTS = ["How do I bake bread?", "Hi", "Write a short poem about the sea and the sky above it.", "What is 2 + 2?",
           "Explain how a bicycle stays upright when it moves.", "Name a colour.", "Why is the sea salty?", "Hello there"]


@pytest.fixture(autouse=True)
def fresh_history():
    batching.reset_job_batching()
    yield
    batching.reset_job_batching()


def oom(rows):
    return torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB for {len(rows)} rows")


def test_halving_redoes_the_failed_rows_in_order_and_records_it():
    calls = []

    def run(rows):
        calls.append(list(rows))
        if len(rows) > 3:
            raise oom(rows)
        return [10 * row for row in rows]

    out = list(run_in_batches_halving_on_oom(list(range(10)), 8, run, label="probe"))
    assert [rows for rows, _ in out] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert [result for _, result in out] == [[0, 10], [20, 30], [40, 50], [60, 70], [80, 90]]
    assert calls[:2] == [list(range(8)), [0, 1, 2, 3]]
    record = job_batching_record()["probe"]
    assert (record["initial_batch_size"], record["final_batch_size"], record["n_halvings"]) == (8, 2, 2)
    assert [(h["rows_done"], h["from"], h["to"]) for h in record["halvings"]] == [(0, 8, 4), (0, 4, 2)]
    assert record["halvings"][0]["error"] == "CUDA out of memory. Tried to allocate 2.00 GiB for 8 rows"

    # the reduced size is kept for the rest of the job: a later call of the same loop starts at 2, no new halving
    calls.clear()
    assert [rows for rows, _ in run_in_batches_halving_on_oom([0, 1, 2], 8, run, label="probe")] == [[0, 1], [2]]
    assert calls == [[0, 1], [2]] and job_batching_record()["probe"]["n_halvings"] == 2


def test_an_out_of_memory_late_in_the_loop_keeps_the_rows_already_done():
    def run(rows):
        if 6 in rows and len(rows) > 1:
            raise oom(rows)
        return rows

    out = [rows for rows, _ in run_in_batches_halving_on_oom(list(range(9)), 4, run, label="late")]
    assert out == [[0, 1, 2, 3], [4, 5], [6], [7], [8]]
    assert [(h["rows_done"], h["from"], h["to"]) for h in job_batching_record()["late"]["halvings"]] == [(4, 4, 2), (6, 2, 1)]


def test_batch_size_one_gives_up_with_a_clear_error_and_other_errors_pass_through():
    def always(rows):
        raise oom(rows)

    with pytest.raises(BatchOutOfMemoryError, match=r"capture: out of GPU memory with a batch of 1 row \(input row 5, "
                                                    r"after 2 halvings from batch size 4\).*larger GPU"):
        list(run_in_batches_halving_on_oom([5, 6, 7, 8], 4, always, label="capture"))

    def broken(rows):
        raise ValueError("a bug, not memory")

    with pytest.raises(ValueError, match="a bug, not memory"):
        list(run_in_batches_halving_on_oom([1, 2, 3], 2, broken, label="bug"))
    assert job_batching_record()["bug"]["n_halvings"] == 0
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        list(run_in_batches_halving_on_oom([1], 0, broken, label="zero"))


def _encoded(family):
    return [family.tokenizer(text)["input_ids"] for text in PROMPTS]


def _fail_above(monkeypatch, module, k, method="forward"):
    original = getattr(module, method)

    def limited(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > k:
            raise oom(range(kwargs["input_ids"].shape[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, method, limited)


def test_capture_after_out_of_memory_equals_a_run_at_the_smaller_batch(tiny_families, monkeypatch):
    model = tiny_families["llama"].model
    prompts = _encoded(tiny_families["llama"])
    expected = capture_residual_stream(model, prompts, "all", batch_size=2, mean_last_k=3)
    batching.reset_job_batching()
    _fail_above(monkeypatch, model.model, 2)
    stats = CaptureStats()
    got = capture_residual_stream(model, prompts, "all", batch_size=8, mean_last_k=3, stats=stats)
    assert sorted(got) == sorted(expected)
    for layer in expected:
        for kind in expected[layer]:
            assert np.array_equal(got[layer][kind], expected[layer][kind]), (layer, kind)
    assert (stats.n_forward_rows, stats.n_batches) == (8, 4)
    record = job_batching_record()["capture"]
    assert (record["initial_batch_size"], record["final_batch_size"], record["n_halvings"]) == (8, 2, 2)


def test_refusal_forwards_and_generation_after_out_of_memory_equal_a_run_at_the_smaller_batch(tiny_families, monkeypatch):
    family = tiny_families["qwen2"]
    model, prompts = family.model, _encoded(family)
    pad = pad_token_id(family.tokenizer)
    expected_log_probs = last_position_log_probs(model, prompts, 2, pad)
    expected_ids = generate_greedy_ids(model, prompts, 4, pad, batch_size=2)
    batching.reset_job_batching()
    _fail_above(monkeypatch, model, 2)
    _fail_above(monkeypatch, model, 2, method="generate")
    assert np.array_equal(last_position_log_probs(model, prompts, 8, pad), expected_log_probs)
    assert generate_greedy_ids(model, prompts, 4, pad, batch_size=8) == expected_ids
    record = job_batching_record()
    assert {label: (r["initial_batch_size"], r["final_batch_size"], r["n_halvings"]) for label, r in record.items()} == {
        "refusal forward": (8, 2, 2), "generation": (8, 2, 2)}
