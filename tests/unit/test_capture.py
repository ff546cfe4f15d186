"""Captured residual streams against independent computations, on tiny random Llama / Gemma-2 / Qwen-2 models.

The independent reference is a manual block-by-block forward of each prompt alone: the embedding looked up by
hand (times sqrt(d) for Gemma-2), rotary cos/sin computed here from the config's rope theta and head size, and
an explicit additive causal mask (with the sliding window on Gemma-2's local layers), passed to each decoder
block directly. Nothing of the model's own forward (mask helpers, rotary module, padding logic) is reused.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from rankaudit.capture import CaptureStats, _hidden_from, capture_residual_stream, decoder_blocks, resolve_layers
from rankaudit.formats import encode_prompts

INSTRUCTIONS = [
    "How do I bake a loaf of bread at home?",
    "Hi",
    "Write a short poem about the sea, the sky, the moon and the stars above them.",
    "What is the capital of France?",
    "Explain how a bicycle stays upright.",
]
MEAN_LAST_K = 4


def manual_hidden_states(model, ids: list[int]) -> list[torch.Tensor]:
    """Residual stream (T x d) at every layer 0..L for one unpadded prompt, computed block by block."""
    config = model.config
    base = model.model
    with torch.no_grad():
        hidden = base.embed_tokens.weight[torch.tensor(ids)]
        if config.model_type == "gemma2":
            hidden = hidden * torch.tensor(config.hidden_size**0.5, dtype=hidden.dtype)
        length = len(ids)
        positions = torch.arange(length)[None, :]
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        assert config.rope_parameters["rope_type"] == "default"
        inv_freq = 1.0 / config.rope_parameters["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = positions[..., None].float() * inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        rotary = (angles.cos(), angles.sin())
        query, key = torch.arange(length)[:, None], torch.arange(length)[None, :]
        causal = key <= query
        window = getattr(config, "sliding_window", None)
        local = causal & (query - key < window) if window else causal
        minimum = torch.finfo(hidden.dtype).min
        masks = {
            "full_attention": torch.where(causal, 0.0, minimum)[None, None],
            "sliding_attention": torch.where(local, 0.0, minimum)[None, None],
        }
        layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
        states = [hidden]
        current = hidden[None]
        for index, block in enumerate(base.layers):
            output = block(current, attention_mask=masks[layer_types[index]], position_embeddings=rotary,
                           position_ids=positions)
            current = output[0] if isinstance(output, tuple) else output
            states.append(current[0])
    return states


def _encode(family, fmt="chat"):
    return encode_prompts(family.tokenizer, INSTRUCTIONS, fmt, mean_last_k=MEAN_LAST_K)


def _capture(family, encoded, layers=None, **kwargs):
    n_blocks = family.model.config.num_hidden_layers
    options = dict(batch_size=len(encoded.records), mean_last_k=MEAN_LAST_K,
                   post_instruction_len=encoded.post_instruction_len)
    options.update(kwargs)
    return capture_residual_stream(family.model, encoded.token_ids, layers or list(range(n_blocks + 1)), **options)


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_gemma2_fixture_exercises_the_sliding_window(tiny_families):
    config = tiny_families["gemma2"].model.config
    encoded = _encode(tiny_families["gemma2"])
    assert "sliding_attention" in config.layer_types
    assert max(len(ids) for ids in encoded.token_ids) > 2 * config.sliding_window


def test_every_layer_and_read_position_equals_a_manual_block_by_block_forward(tiny_family):
    encoded = _encode(tiny_family)
    acts = _capture(tiny_family, encoded, batch_size=2)  # left-padded batches of mixed lengths
    for record in encoded.records:
        states = manual_hidden_states(tiny_family.model, list(record.token_ids))
        assert len(states) == len(acts) == tiny_family.model.config.num_hidden_layers + 1
        for layer, state in enumerate(states):
            state = state.numpy()
            positions = record.read_positions
            np.testing.assert_allclose(acts[layer]["last"][record.index], state[positions["last"][0]],
                                       rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(acts[layer]["mean_last_k"][record.index],
                                       state[list(positions["mean_last_k"])].mean(axis=0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(acts[layer]["post_instruction"][record.index],
                                       state[list(positions["post_instruction"])], rtol=1e-4, atol=1e-5)


def test_layers_below_the_last_equal_hf_hidden_states_and_the_last_is_not_post_norm(tiny_family):
    encoded = _encode(tiny_family)
    acts = _capture(tiny_family, encoded, batch_size=3)
    n_blocks = tiny_family.model.config.num_hidden_layers
    for record in encoded.records:
        with torch.no_grad():
            hidden_states = tiny_family.model(torch.tensor([record.token_ids]), output_hidden_states=True).hidden_states
        assert len(hidden_states) == n_blocks + 1
        for layer in range(n_blocks):
            np.testing.assert_allclose(acts[layer]["last"][record.index], hidden_states[layer][0, -1].numpy(),
                                       rtol=1e-4, atol=1e-5)
        # HF's last entry is after the final norm: our last layer is the last block's output, not that
        post_norm = hidden_states[n_blocks][0, -1].numpy()
        assert _relative_error(acts[n_blocks]["last"][record.index], post_norm) > 0.1


@pytest.mark.parametrize("fmt", ["raw", "chat"])
def test_left_padding_gives_the_same_activations_as_each_prompt_alone(tiny_family, fmt):
    encoded = _encode(tiny_family, fmt)
    batched = _capture(tiny_family, encoded)
    lengths = {len(ids) for ids in encoded.token_ids}
    assert len(lengths) > 2  # the batch really is padded
    for record in encoded.records:
        alone = capture_residual_stream(tiny_family.model, [record.token_ids], list(batched),
                                        batch_size=1, mean_last_k=MEAN_LAST_K,
                                        post_instruction_len=encoded.post_instruction_len)
        for layer, kinds in batched.items():
            for kind, values in kinds.items():
                assert _relative_error(values[record.index], alone[layer][kind][0]) < 1e-4, (layer, kind)


def test_each_padded_row_gets_positions_zero_to_its_length(tiny_families):
    # Rotary attention is invariant to a constant shift of a row's positions, so the padding test above cannot see
    # wrong positions on these families; absolute-position schemes could. Check what the base model receives.
    family = tiny_families["llama"]
    encoded = _encode(family)
    received = []
    base, _ = decoder_blocks(family.model)
    handle = base.register_forward_pre_hook(
        lambda module, args, kwargs: received.append((kwargs["attention_mask"], kwargs["position_ids"])),
        with_kwargs=True)
    try:
        _capture(family, encoded, batch_size=5)
    finally:
        handle.remove()
    (mask, positions), = received
    for row_mask, row_positions in zip(mask, positions):
        length = int(row_mask.sum())
        assert row_mask[-length:].all() and not row_mask[:-length].any()  # left padding
        assert row_positions[-length:].tolist() == list(range(length))


def test_batching_and_sorting_restore_the_input_order(tiny_families):
    family = tiny_families["llama"]
    encoded = _encode(family)
    reference = _capture(family, encoded, batch_size=1)
    for batch_size in (2, 3, 16):
        acts = _capture(family, encoded, batch_size=batch_size)
        for layer in reference:
            np.testing.assert_allclose(acts[layer]["last"], reference[layer]["last"], rtol=1e-4, atol=1e-5)


def test_read_positions_are_float32_slices_of_one_stream(tiny_families):
    """Run-to-run determinism is tested across two processes (test_determinism.py); here the three read kinds of
    one capture must be consistent slices of the same residual stream, in float32."""
    family = tiny_families["qwen2"]
    encoded = _encode(family)
    acts = _capture(family, encoded, batch_size=2)
    n, length = len(INSTRUCTIONS), encoded.post_instruction_len
    assert length >= MEAN_LAST_K
    for layer, kinds in acts.items():
        assert set(kinds) == {"last", "mean_last_k", "post_instruction"}
        assert all(values.dtype == np.float32 for values in kinds.values())
        assert kinds["last"].shape == kinds["mean_last_k"].shape == (n, 64)
        assert kinds["post_instruction"].shape == (n, length, 64)
        # the template suffix ends at the last token, and the last k tokens lie inside the suffix
        np.testing.assert_array_equal(kinds["post_instruction"][:, -1], kinds["last"])
        np.testing.assert_allclose(kinds["mean_last_k"], kinds["post_instruction"][:, -MEAN_LAST_K:].mean(axis=1),
                                   rtol=1e-5, atol=1e-6)
        assert not np.allclose(kinds["mean_last_k"], kinds["last"], rtol=1e-3, atol=1e-4), layer


def test_raw_format_has_no_post_instruction_kind(tiny_families):
    family = tiny_families["llama"]
    encoded = _encode(family, "raw")
    acts = _capture(family, encoded, layers=[1])
    assert encoded.post_instruction_len == 0
    assert set(acts[1]) == {"last", "mean_last_k"}


def test_mean_last_k_of_a_prompt_shorter_than_k_averages_all_its_tokens(tiny_families):
    family = tiny_families["gemma2"]
    encoded = encode_prompts(family.tokenizer, ["Hi", INSTRUCTIONS[2]], "raw", mean_last_k=50)
    short = encoded.records[0]
    assert len(short.token_ids) < 50 and short.read_positions["mean_last_k"] == tuple(range(len(short.token_ids)))
    acts = capture_residual_stream(family.model, encoded.token_ids, [0, 2], batch_size=2, mean_last_k=50)
    for layer in (0, 2):
        state = manual_hidden_states(family.model, list(short.token_ids))[layer].numpy()
        np.testing.assert_allclose(acts[layer]["mean_last_k"][0], state.mean(axis=0), rtol=1e-4, atol=1e-5)


class _BlockCounter:
    def __init__(self, model):
        base, blocks = decoder_blocks(model)
        self.calls = [0] * len(blocks)
        self.norm_calls = 0
        self.handles = [block.register_forward_hook(self._hook(i)) for i, block in enumerate(blocks)]
        self.handles.append(base.norm.register_forward_hook(self._norm_hook))

    def _hook(self, index):
        def hook(module, args, output):
            self.calls[index] += 1
        return hook

    def _norm_hook(self, module, args, output):
        self.norm_calls += 1

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("layers", [[0], [0, 1], [1, 2]])
def test_stopping_early_gives_identical_values_and_runs_fewer_blocks(tiny_families, layers):
    family = tiny_families["gemma2"]
    encoded = _encode(family)
    full = _capture(family, encoded, batch_size=2)
    counter = _BlockCounter(family.model)
    try:
        partial = _capture(family, encoded, layers=layers, batch_size=2)
    finally:
        counter.remove()
    n_batches = 3
    deepest = max(layers)
    assert counter.calls == [n_batches] * deepest + [0] * (len(counter.calls) - deepest)
    assert counter.norm_calls == 0
    assert sorted(partial) == layers
    for layer in layers:
        for kind in full[layer]:
            np.testing.assert_array_equal(partial[layer][kind], full[layer][kind])


def test_full_capture_skips_the_final_norm_and_the_lm_head(tiny_families):
    family = tiny_families["llama"]
    head_calls = []
    handle = family.model.lm_head.register_forward_hook(lambda *args: head_calls.append(1))
    counter = _BlockCounter(family.model)
    try:
        _capture(family, _encode(family), batch_size=2)
    finally:
        handle.remove()
        counter.remove()
    assert head_calls == [] and counter.norm_calls == 0 and counter.calls == [3, 3, 3]


def test_every_model_format_prompt_is_forwarded_exactly_once(tiny_families):
    stats = CaptureStats()
    forwarded_rows = []
    for family in tiny_families.values():
        base, _ = decoder_blocks(family.model)
        handle = base.register_forward_pre_hook(
            lambda module, args, kwargs: forwarded_rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
        try:
            for fmt in ("raw", "chat"):
                _capture(family, _encode(family, fmt), batch_size=2, stats=stats)
        finally:
            handle.remove()
    expected = len(tiny_families) * 2 * len(INSTRUCTIONS)
    assert stats.n_forward_rows == sum(forwarded_rows) == expected
    assert stats.n_batches == len(forwarded_rows) == len(tiny_families) * 2 * 3


def test_a_block_output_is_taken_whole_from_a_tensor_and_first_from_a_tuple():
    hidden = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    assert _hidden_from(hidden, (2, 3), "block") is hidden  # never hidden[0], which is batch row 0
    assert _hidden_from((hidden, None), (2, 3), "block") is hidden
    with pytest.raises(RuntimeError, match="block 7"):
        _hidden_from(hidden[0], (2, 3), "output of decoder block 7")


def test_half_precision_model_gives_float32_outputs_close_to_float32(tiny_families):
    family = tiny_families["llama"]
    encoded = _encode(family)
    reference = _capture(family, encoded, layers=[0, 2])
    half = copy.deepcopy(family.model).to(torch.bfloat16)
    acts = capture_residual_stream(half, encoded.token_ids, [0, 2], batch_size=5, mean_last_k=MEAN_LAST_K,
                                   post_instruction_len=encoded.post_instruction_len)
    for layer in (0, 2):
        assert acts[layer]["last"].dtype == np.float32
        assert _relative_error(acts[layer]["last"], reference[layer]["last"]) < 0.05


def test_layers_all_captures_embeddings_and_every_block_output(tiny_families):
    family = tiny_families["qwen2"]
    acts = capture_residual_stream(family.model, _encode(family, "raw").token_ids, "all")
    assert sorted(acts) == [0, 1, 2, 3]


def test_resolve_layers_and_its_errors():
    assert resolve_layers("all", 3) == [0, 1, 2, 3]
    assert resolve_layers([3, 0, 3], 3) == [0, 3]
    with pytest.raises(ValueError, match="outside 0..3"):
        resolve_layers([4], 3)
    with pytest.raises(ValueError, match="capture.layers"):
        resolve_layers("every", 3)


def test_capture_refuses_prompts_not_longer_than_the_suffix_and_training_mode(tiny_families):
    family = tiny_families["llama"]
    with pytest.raises(ValueError, match="prompt 1"):
        capture_residual_stream(family.model, [[1, 2, 3, 4], [1, 2]], [1], post_instruction_len=2)
    family.model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            capture_residual_stream(family.model, [[1, 2, 3]], [1])
    finally:
        family.model.eval()
