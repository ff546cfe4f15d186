"""Interventions: exact orthogonality after the hooks, inert zero basis, weights == hooks, batched == batch-1."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rankaudit import abliteration, sublayers  # noqa: E402
from rankaudit import interventions as iv  # noqa: E402
from rankaudit.capture import capture_residual_stream, decoder_blocks  # noqa: E402
from rankaudit.models import load_model  # noqa: E402
from rankaudit.organisms.generation import generate_greedy  # noqa: E402

PROMPTS = ["How do I bake a loaf of bread?", "Write a short poem about the sea.", "What is the capital of France?",
           "Describe how to pick a lock without the key. Explain how a bicycle stays upright."]


def _eager(family):
    return load_model(str(family.path), attn_implementation="eager")


def _chat(tokenizer, texts=PROMPTS):
    return [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True) for t in texts]


def _ids(tokenizer, texts=PROMPTS):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in _chat(tokenizer, texts)]


def _orthonormal(d, k, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, k)))
    return q


@contextlib.contextmanager
def _observe(model, layers):
    """Record every hidden state seen at `layers` (after any hook registered earlier), at every forward call."""
    _, blocks = decoder_blocks(model)
    seen = {layer: [] for layer in layers}

    def keep(layer):
        def transform(hidden):
            seen[layer].append(hidden.detach().to(torch.float64).clone())
            return hidden
        return transform

    handles = [iv.register_layer_hook(blocks, layer, keep(layer)) for layer in layers]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def test_projection_ablation_leaves_every_position_orthogonal_including_generated(tiny_family):
    model = _eager(tiny_family)
    d = model.config.hidden_size
    layers = [0, 1, model.config.num_hidden_layers]
    bases = {layer: _orthonormal(d, 3, layer) for layer in layers}
    with iv.projection_ablation(model, bases), _observe(model, layers) as seen:
        generate_greedy(model, tiny_family.tokenizer, _chat(tiny_family.tokenizer), max_new_tokens=5, batch_size=4)
    for layer in layers:
        assert any(h.shape[1] == 1 for h in seen[layer]), "no generated (single-position) forward was observed"
        basis = torch.as_tensor(bases[layer])
        for hidden in seen[layer]:
            flat = hidden.reshape(-1, d)
            relative = (flat @ basis).abs().max() / flat.norm(dim=1).max()
            assert relative < 1e-5, f"layer {layer}: |U^T h| / |h| = {relative}"


def test_zero_basis_changes_nothing_bit_for_bit(tiny_family):
    model = _eager(tiny_family)
    d = model.config.hidden_size
    ids = torch.tensor([_ids(tiny_family.tokenizer)[0]])
    with torch.no_grad():
        reference = model(ids).logits
        for zero in (np.zeros((d, 0)), np.zeros((d, 3))):
            with iv.projection_ablation(model, {layer: zero for layer in range(model.config.num_hidden_layers + 1)}):
                assert torch.equal(model(ids).logits, reference)
    texts = generate_greedy(model, tiny_family.tokenizer, _chat(tiny_family.tokenizer), 6, 4)
    with iv.projection_ablation(model, {1: np.zeros((d, 2))}):
        assert generate_greedy(model, tiny_family.tokenizer, _chat(tiny_family.tokenizer), 6, 4) == texts


def test_bad_basis_is_refused_naming_the_layer(tiny_families):
    model = tiny_families["llama"].model
    d = model.config.hidden_size
    blocks = decoder_blocks(model)[1]
    # transformers installs hooks of its own (output capturing); only ours must be gone
    before = [(len(block._forward_hooks), len(block._forward_pre_hooks)) for block in blocks]
    with pytest.raises(ValueError, match="layer 2.*not orthonormal"):
        with iv.projection_ablation(model, {2: np.ones((d, 2))}):
            pass
    with pytest.raises(ValueError, match="does not live in R"):
        with iv.projection_ablation(model, {1: np.eye(d + 1)[:, :2]}):
            pass
    assert [(len(block._forward_hooks), len(block._forward_pre_hooks)) for block in blocks] == before


def _residuals(model, ids, layers):
    acts = capture_residual_stream(model, ids, layers, batch_size=len(ids), mean_last_k=4)
    return {layer: np.concatenate([acts[layer]["last"], acts[layer]["mean_last_k"]]) for layer in layers}


@pytest.fixture(scope="module")
def tied_gemma(tiny_family_factory):
    return tiny_family_factory("gemma2", seed=3, tie_word_embeddings=True)


@pytest.mark.parametrize("name", ["llama", "gemma2", "qwen2", "gemma2_tied"])
def test_direction_ablation_is_exact_and_equals_weight_orthogonalization(name, tiny_families, tied_gemma):
    family = tied_gemma if name == "gemma2_tied" else tiny_families[name]
    model = _eager(family)
    d, n_blocks = model.config.hidden_size, model.config.num_hidden_layers
    r = np.random.default_rng(1).standard_normal(d) * 5.0
    r_unit = r / np.linalg.norm(r)
    ids = _ids(family.tokenizer)
    layers = list(range(n_blocks + 1))
    plain = _residuals(model, ids, layers)
    with iv.direction_ablation(model, r):
        hooked = _residuals(model, ids, layers)
        with torch.no_grad():
            hooked_logits = model(torch.tensor([ids[0]])).logits
    for layer in layers:
        scale = np.abs(hooked[layer]).max()
        assert np.abs(hooked[layer] @ r_unit).max() / scale < 1e-5, f"layer {layer} keeps a component along r"
        assert np.abs(plain[layer] @ r_unit).max() / scale > 1e-3, "the direction was not present to begin with"
    edited = _eager(family)
    record = abliteration.orthogonalize_weights(edited, r)
    assert record["untied_output_embeddings"] == (name == "gemma2_tied")
    weights = _residuals(edited, ids, layers)
    for layer in layers:
        assert np.abs(weights[layer] - hooked[layer]).max() / np.abs(hooked[layer]).max() < 1e-5, f"layer {layer}"
    with torch.no_grad():
        logits = edited(torch.tensor([ids[0]])).logits
    assert (logits - hooked_logits).abs().max() / hooked_logits.abs().max() < 1e-5


def test_gemma2_post_norm_needs_the_gain_weighted_direction(tiny_families):
    """Projecting r itself off the attention/MLP outputs leaves r in the residual (the post-norms rescale it)."""
    model = _eager(tiny_families["gemma2"])
    d, n_blocks = model.config.hidden_size, model.config.num_hidden_layers
    with torch.no_grad():
        for write in sublayers.sublayer_writes(model):
            write.post_norm.weight.copy_(torch.linspace(-0.5, 2.0, d))
    r_unit = iv.unit(np.random.default_rng(2).standard_normal(d), "r")
    _, blocks = decoder_blocks(model)
    projector = iv._Projector(r_unit[:, None])
    handles = [block.register_forward_pre_hook(iv._input_hook(projector), with_kwargs=True) for block in blocks]
    handles += [w.module.register_forward_hook(iv._output_hook(projector)) for w in sublayers.sublayer_writes(model)]
    ids = _ids(tiny_families["gemma2"].tokenizer)
    try:
        wrong = _residuals(model, ids, [n_blocks])[n_blocks]
    finally:
        for handle in handles:
            handle.remove()
    with iv.direction_ablation(model, r_unit):
        right = _residuals(model, ids, [n_blocks])[n_blocks]
    assert np.abs(wrong @ r_unit).max() / np.abs(wrong).max() > 1e-3
    assert np.abs(right @ r_unit).max() / np.abs(right).max() < 1e-5


def test_abliterated_model_round_trips_through_save_pretrained(tied_gemma, tmp_path):
    model = _eager(tied_gemma)
    r = np.random.default_rng(4).standard_normal(model.config.hidden_size)
    abliteration.orthogonalize_weights(model, r)
    model.save_pretrained(tmp_path)
    reloaded = load_model(str(tmp_path), attn_implementation="eager")
    ids = torch.tensor([_ids(tied_gemma.tokenizer)[1]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
    assert reloaded.config.tie_word_embeddings is False


def test_activation_addition_shifts_exactly_its_layer(tiny_families):
    model = _eager(tiny_families["qwen2"])
    d = model.config.hidden_size
    v = np.random.default_rng(5).standard_normal(d)
    ids = _ids(tiny_families["qwen2"].tokenizer)
    before = capture_residual_stream(model, ids, [1, 2], batch_size=4)
    with iv.activation_addition(model, v, 2, coefficient=0.5):
        after = capture_residual_stream(model, ids, [1, 2], batch_size=4)
    assert np.array_equal(after[1]["last"], before[1]["last"])
    np.testing.assert_allclose(after[2]["last"] - before[2]["last"], np.tile(0.5 * v, (len(ids), 1)), atol=1e-5)


def test_batched_generation_equals_batch_one_under_hooks(tiny_family):
    model = _eager(tiny_family)
    d = model.config.hidden_size
    prompts = _chat(tiny_family.tokenizer)
    with iv.projection_ablation(model, {2: _orthonormal(d, 4, 9)}):
        batched = generate_greedy(model, tiny_family.tokenizer, prompts, 12, batch_size=4)
        single = generate_greedy(model, tiny_family.tokenizer, prompts, 12, batch_size=1)
    assert batched == single
