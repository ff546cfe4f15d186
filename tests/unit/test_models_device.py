"""Where weights are placed: straight onto the device, or spread by an accelerate device map.

A CUDA device on a machine without one is refused before any weights are read, naming the config keys. A model
spread over several devices (the 70B path) must give the same activations, hook ablations and log-probabilities
as the model in one piece: on a CPU machine the spread is emulated with accelerate's disk offload, which installs
the same dispatch hooks as a multi-GPU map and leaves offloaded weights on the meta device, so any code that
moves inputs to `next(model.parameters()).device` instead of the input embedding's execution device fails.
"""

import copy

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from rankaudit.capture import capture_residual_stream, input_device
from rankaudit.interventions import projection_ablation
from rankaudit.models import load_model, load_model_from_spec
from rankaudit.refusal import last_position_log_probs

PROMPTS = [[5, 17, 33, 2, 9], [41, 7, 8], [3, 3, 60, 61, 62, 63, 64], [12, 13, 14, 15]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_names_the_setting(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"device 'cuda' requested but torch sees no CUDA device; set runtime.device"):
        load_model(str(tmp_path / "no-such-model"), device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_device_map_naming_a_gpu_is_refused_without_cuda(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"device 'cuda:1' requested .* device_map\) to cpu"):
        load_model(str(tmp_path / "no-such-model"), device_map={"model.embed_tokens": "cpu", "model.layers": 1})


def test_an_unknown_placement_strategy_is_refused(tiny_families) -> None:
    with pytest.raises(ValueError, match=r"device_map 'everywhere' is neither"):
        load_model(str(tiny_families["llama"].path), device_map="everywhere")


def test_weights_load_straight_onto_the_device_from_safetensors(tiny_families, monkeypatch) -> None:
    calls = []
    original = AutoModelForCausalLM.from_pretrained

    def spy(source, **kwargs):
        calls.append(copy.deepcopy(kwargs))
        return original(source, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    load_model(str(tiny_families["llama"].path), device="cpu")
    spec = {"location": str(tiny_families["qwen2"].path), "dtype": "bfloat16", "device": "cpu", "device_map": "auto",
            "max_memory": {"cpu": "2GiB"}}
    model = load_model_from_spec(spec)
    assert calls[0]["device_map"] == {"": "cpu"} and calls[0]["use_safetensors"] is True
    assert calls[1]["device_map"] == "auto" and calls[1]["max_memory"] == {"cpu": "2GiB"}
    assert calls[1]["dtype"] == torch.bfloat16 and model.dtype == torch.bfloat16


def _model_bytes(model) -> int:
    return sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())


@pytest.fixture(params=["explicit map", "auto with max_memory"])
def spread_model(request, tiny_families, tmp_path):
    """(model in one piece, the same model split between the CPU and disk offload) for the tiny Llama."""
    path = str(tiny_families["llama"].path)
    whole = load_model(path)
    if request.param == "explicit map":
        placement = {"device_map": {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk",
                                    "model.layers.2": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
                                    "lm_head": "disk"}}
    else:
        placement = {"device_map": "auto", "max_memory": {"cpu": _model_bytes(whole) // 2}}
    spread = load_model(path, offload_folder=str(tmp_path / "offload"), **placement)
    assert {"cpu", "disk"} <= {str(where) for where in spread.hf_device_map.values()}, spread.hf_device_map
    return whole, spread


def test_a_spread_model_captures_ablates_and_scores_exactly_like_the_whole_one(spread_model) -> None:
    whole, spread = spread_model
    assert input_device(spread) == torch.device("cpu")
    d = whole.config.hidden_size
    basis = np.linalg.qr(np.random.default_rng(0).normal(size=(d, 2)))[0]
    for ablation in ({}, {2: basis}):
        with projection_ablation(whole, ablation):
            expected = capture_residual_stream(whole, PROMPTS, "all", batch_size=3, mean_last_k=2)
        with projection_ablation(spread, ablation):
            got = capture_residual_stream(spread, PROMPTS, "all", batch_size=3, mean_last_k=2)
        assert expected.keys() == got.keys()
        for layer in expected:
            for kind in expected[layer]:
                np.testing.assert_array_equal(got[layer][kind], expected[layer][kind], err_msg=f"layer {layer} {kind}")
    assert np.max(np.abs(got[2]["last"] @ basis)) < 1e-5  # the ablation acted on the spread model
    np.testing.assert_array_equal(last_position_log_probs(spread, PROMPTS, 3, 0),
                                  last_position_log_probs(whole, PROMPTS, 3, 0))
