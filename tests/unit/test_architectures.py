"""Every supported decoder-only family, on tiny random-init configs built here (no downloads).

For Llama, Mistral, Qwen2, Qwen3, Gemma-2, Gemma-3 (text), Phi-3 and OLMo-2: the capture equals the model's own
`output_hidden_states` (the last block before the final norm) on left-padded batches; ablation by hooks equals
weight orthogonalization, with post-norms found where the block has them and only there; batched greedy
generation equals batch-1 generation. Unsupported models fail before any forward pass, naming the model and
what was not found.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rankaudit import abliteration, sublayers  # noqa: E402
from rankaudit import interventions as iv  # noqa: E402
from rankaudit.capture import capture_residual_stream, decoder_blocks  # noqa: E402
from rankaudit.models import load_model  # noqa: E402
from rankaudit.organisms.generation import generate_greedy  # noqa: E402

VOCAB = 128
PAD, BOS, EOS = 0, 1, 2
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64, initializer_range=0.1, pad_token_id=PAD, bos_token_id=BOS,
              eos_token_id=EOS, tie_word_embeddings=False)
LENGTHS = (3, 11, 6, 9)  # prompts of different lengths: every batch is left-padded
MEAN_LAST_K, SUFFIX = 3, 2


@dataclass(frozen=True)
class Family:
    config_class: str
    model_class: str
    post_norms: tuple[str, str] | None = None  # (attention, MLP) post-norm child names, None for pre-norm-only blocks
    overrides: dict[str, Any] = field(default_factory=dict)
    layers: int = 2


GEMMA = dict(head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
             layer_types=["sliding_attention", "full_attention", "sliding_attention"])
FAMILIES = {
    "llama": Family("LlamaConfig", "LlamaForCausalLM"),
    "mistral": Family("MistralConfig", "MistralForCausalLM", overrides=dict(sliding_window=4)),
    "qwen2": Family("Qwen2Config", "Qwen2ForCausalLM", overrides=dict(tie_word_embeddings=True)),
    "qwen3": Family("Qwen3Config", "Qwen3ForCausalLM", overrides=dict(head_dim=8)),
    "gemma2": Family("Gemma2Config", "Gemma2ForCausalLM", ("post_attention_layernorm", "post_feedforward_layernorm"),
                     dict(GEMMA, tie_word_embeddings=True), layers=3),
    "gemma3": Family("Gemma3TextConfig", "Gemma3ForCausalLM", ("post_attention_layernorm", "post_feedforward_layernorm"),
                     GEMMA, layers=3),
    "phi3": Family("Phi3Config", "Phi3ForCausalLM"),
    "olmo2": Family("Olmo2Config", "Olmo2ForCausalLM", ("post_attention_layernorm", "post_feedforward_layernorm")),
}


def _build(name: str, seed: int = 0) -> Any:
    family = FAMILIES[name]
    config = getattr(transformers, family.config_class)(**{**COMMON, "num_hidden_layers": family.layers, **family.overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == family.model_class
    model.eval()
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request) -> tuple[str, Any]:
    return request.param, _build(request.param)


def _prompts(seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[BOS] + rng.integers(3, VOCAB, size=length - 1).tolist() for length in LENGTHS]


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_capture_equals_output_hidden_states_on_left_padded_batches(family):
    name, model = family
    n_blocks = model.config.num_hidden_layers
    prompts = _prompts()
    captured = capture_residual_stream(model, prompts, "all", batch_size=len(prompts), mean_last_k=MEAN_LAST_K,
                                       post_instruction_len=SUFFIX, pad_token_id=PAD)
    _, blocks = decoder_blocks(model)
    last_block_output = []
    handle = blocks[-1].register_forward_hook(lambda module, args, output: last_block_output.append(
        (output[0] if isinstance(output, tuple) else output).detach().clone()))
    try:
        for row, prompt in enumerate(prompts):
            with torch.no_grad():
                alone = model(torch.tensor([prompt]), output_hidden_states=True).hidden_states
                # HF's last hidden state is after the final norm; the capture's layer L is before it
                pre_norm = last_block_output.pop()
                assert torch.allclose(model.base_model.norm(pre_norm), alone[-1], rtol=0, atol=1e-6)
            assert len(alone) == n_blocks + 1
            references = [state[0] for state in alone[:-1]] + [pre_norm[0]]
            for layer, reference in enumerate(references):
                reference = reference.double().numpy()  # (seq, d) of the prompt run alone, without padding
                expected = {"last": reference[-1], "mean_last_k": reference[-MEAN_LAST_K:].mean(axis=0),
                            "post_instruction": reference[-SUFFIX:]}
                for kind, values in expected.items():
                    got = captured[layer][kind][row]
                    assert _relative(got, values) < 1e-5, f"{name} prompt {row} layer {layer} {kind}"
    finally:
        handle.remove()


def _randomize_norms(model: Any, seed: int) -> None:
    """Non-uniform norm gains, so that a missed or a spurious post-norm breaks the ablation's exactness."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if "norm" in type(module).__name__.lower() and getattr(module, "weight", None) is not None:
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)


def _all_layers(model: Any, prompts: list[list[int]]) -> dict[int, np.ndarray]:
    captured = capture_residual_stream(model, prompts, "all", batch_size=len(prompts), mean_last_k=MEAN_LAST_K,
                                       pad_token_id=PAD)
    return {layer: np.concatenate([kinds["last"], kinds["mean_last_k"]]).astype(np.float64)
            for layer, kinds in captured.items()}


def test_post_norms_and_output_projections_are_the_right_modules(family):
    name, model = family
    post_norms = FAMILIES[name].post_norms
    _, blocks = decoder_blocks(model)
    writes = sublayers.sublayer_writes(model)
    assert [(w.block, w.kind) for w in writes] == [(b, kind) for b in range(len(blocks)) for kind in ("attention", "mlp")]
    for write in writes:
        block = blocks[write.block]
        sublayer = block.self_attn if write.kind == "attention" else block.mlp
        assert write.module is sublayer
        assert write.output_linear is (sublayer.o_proj if write.kind == "attention" else sublayer.down_proj)
        expected = None if post_norms is None else getattr(block, post_norms[write.kind == "mlp"])
        assert write.post_norm is expected, f"{name} block {write.block} {write.kind}"


def _hook_counts(model: Any) -> list[tuple[int, int]]:
    return [(len(module._forward_hooks), len(module._forward_pre_hooks)) for module in model.modules()]


def test_hook_ablation_is_exact_and_equals_weight_orthogonalization(family):
    name, plain_model = family
    model = copy.deepcopy(plain_model)
    _randomize_norms(model, seed=1)
    d = model.config.hidden_size
    r = np.random.default_rng(2).standard_normal(d) * 3.0
    r_unit = r / np.linalg.norm(r)
    prompts = _prompts(seed=1)
    ids = torch.tensor([prompts[1]])
    plain = _all_layers(model, prompts)
    before = _hook_counts(model)
    with iv.direction_ablation(model, r):
        hooked = _all_layers(model, prompts)
        with torch.no_grad():
            hooked_logits = model(ids).logits.double().numpy()
    assert _hook_counts(model) == before, "hooks left behind"
    edited = copy.deepcopy(model)
    record = abliteration.orthogonalize_weights(edited, r)
    assert record["untied_output_embeddings"] == bool(model.config.tie_word_embeddings)
    weights = _all_layers(edited, prompts)
    for layer, values in hooked.items():
        assert np.abs(values @ r_unit).max() / np.abs(values).max() < 1e-5, f"{name} layer {layer} keeps r"
        assert np.abs(plain[layer] @ r_unit).max() / np.abs(plain[layer]).max() > 1e-3, "r was not there to remove"
        assert _relative(weights[layer], values) < 1e-5, f"{name} layer {layer}: weights != hooks"
    with torch.no_grad():
        logits = edited(ids).logits.double().numpy()
    assert _relative(logits, hooked_logits) < 1e-5


def _char_tokenizer() -> Any:
    """One token per printable character, filled up to the model's vocabulary so every generated id decodes."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>"]
    characters = [chr(code) for code in range(32, 127)]
    fillers = [f"<unused{i}>" for i in range(VOCAB - len(specials) - len(characters))]
    vocab = {token: index for index, token in enumerate(specials + characters + fillers)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    assert len(tokenizer) == VOCAB and tokenizer("ab c")["input_ids"] == [vocab["a"], vocab["b"], vocab[" "], vocab["c"]]
    return tokenizer


def test_batched_greedy_generation_equals_batch_one(family):
    name, model = family
    tokenizer = _char_tokenizer()
    prompts = ["Hi", "How do I bake bread?", "Sea poem.", "Explain how a bicycle stays up"]
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=6, batch_size=len(prompts))
    alone = generate_greedy(model, tokenizer, prompts, max_new_tokens=6, batch_size=1)
    assert batched == alone, name
    assert sum(len(text) for text in alone) > 0


# --- unsupported models: refused before any forward pass, naming the model and what is missing ---------------


def _bert(kind: str) -> Any:
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    return getattr(transformers, kind)(config).eval()


def _count_forwards(model: Any) -> list[int]:
    calls = [0]
    model.get_input_embeddings().register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_encoder_only_model_is_refused_before_any_forward():
    model = _bert("BertForMaskedLM")
    calls = _count_forwards(model)
    with pytest.raises(ValueError, match=r"BertForMaskedLM.*no decoder blocks"):
        capture_residual_stream(model, _prompts(), "all")
    with pytest.raises(ValueError, match=r"BertForMaskedLM.*no decoder blocks"):
        with iv.direction_ablation(model, np.ones(32)):
            pass
    assert calls[0] == 0


def test_loading_an_unsupported_model_names_its_source(tmp_path):
    _bert("BertLMHeadModel").save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match=r"no decoder blocks") as error:
        load_model(str(tmp_path / "bert"))
    assert str(tmp_path / "bert") in str(error.value)


def test_block_list_not_found_is_named():
    model = _build("llama")
    model.model.layers = torch.nn.Sequential(*model.model.layers)
    with pytest.raises(ValueError, match=r"LlamaForCausalLM: no decoder blocks: no list of 2 blocks .*\(Sequential\)"):
        decoder_blocks(model)


def test_missing_attention_or_output_projection_fails_before_any_edit():
    model = _build("llama")
    model.model.layers[1].mixer = model.model.layers[1].self_attn
    del model.model.layers[1].self_attn
    phi = _build("phi3")
    phi.model.layers[0].mlp.out = phi.model.layers[0].mlp.down_proj
    del phi.model.layers[0].mlp.down_proj
    for network, message in ((model, r"LlamaForCausalLM block 1: no attention module"),
                             (phi, r"Phi3ForCausalLM block 0: no MLP output projection")):
        embedding = network.get_input_embeddings().weight.clone()
        calls = _count_forwards(network)
        before = _hook_counts(network)
        with pytest.raises(ValueError, match=message):
            abliteration.orthogonalize_weights(network, np.ones(32))
        with pytest.raises(ValueError, match=message):
            with iv.direction_ablation(network, np.ones(32)):
                pass
        assert calls[0] == 0 and torch.equal(network.get_input_embeddings().weight, embedding)
        assert _hook_counts(network) == before


def test_post_norm_that_is_not_an_rms_gain_is_refused():
    model = _build("olmo2")
    model.model.layers[0].post_attention_layernorm = torch.nn.LayerNorm(32)
    with pytest.raises(ValueError, match=r"block 0 attention post-norm post_attention_layernorm: LayerNorm is not an"):
        sublayers.sublayer_writes(model)


def test_position_embeddings_block_weight_orthogonalization():
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    assert len(decoder_blocks(model)[1]) == 2
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel: the input of block 0 is not a multiple of the token embedding"):
        sublayers.check_embedding_feeds_blocks(model)
    sublayers.check_embedding_feeds_blocks(_build("gemma2"))  # the sqrt(d) scale is a multiple


def test_post_norms_are_found_in_a_model_offloaded_by_accelerate(tmp_path):
    """Block 1 on 'disk' (parameters on the meta device, run through accelerate's hooks) gives the same ablation."""
    pytest.importorskip("accelerate")
    model = _build("olmo2")
    _randomize_norms(model, seed=3)
    model.save_pretrained(tmp_path / "olmo2")
    placement = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
                 "model.rotary_emb": "cpu", "lm_head": "cpu"}
    offloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "olmo2", device_map=placement, offload_folder=str(tmp_path / "offload")).eval()
    assert offloaded.model.layers[1].post_attention_layernorm.weight.device.type == "meta"
    writes = sublayers.sublayer_writes(offloaded)
    _, blocks = decoder_blocks(offloaded)
    expected = [norm for block in blocks for norm in (block.post_attention_layernorm, block.post_feedforward_layernorm)]
    assert [write.post_norm for write in writes] == expected
    r = np.random.default_rng(4).standard_normal(model.config.hidden_size)
    with iv.direction_ablation(offloaded, r):
        hooked_offloaded = _all_layers(offloaded, _prompts())
    with iv.direction_ablation(model, r):
        hooked = _all_layers(model, _prompts())
    for layer, values in hooked.items():
        assert _relative(hooked_offloaded[layer], values) < 1e-6, f"layer {layer}"
