"""Shared fixtures: tiny random Llama / Gemma-2 / Qwen-2 models with small tokenizers, built offline.

Each family gets a byte-level BPE tokenizer trained in a temporary directory on a small corpus, the family's
special tokens and BOS convention, and a project-written chat template that reproduces the structure that
matters to the audit (Llama-3.1: BOS inside the template and an always-present date header; Gemma-2: BOS inside
the template and no system role; Qwen-2.5: no BOS and a default system turn). Models are randomly initialised
from small configs (a fixed seed) and saved next to their tokenizer, so tests can load them through the same
path-based loaders the workflow uses. Everything is session-scoped: built once per test run, in seconds.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _stub_scontrol_without_cluster() -> None:
    """Put a `scontrol` that fails at once first on PATH when no test cluster was started (ci/slurm/start.sh).

    Importing the SLURM executor plugin, which every `snakemake` start does, runs `scontrol show config`; with
    SLURM's client installed and no controller it waits 10 s for a connection each time, which made every workflow
    test's subprocess 10 s slower. With a started cluster (RANKAUDIT_SLURM_STATE set) the real scontrol answers.
    """
    if "RANKAUDIT_SLURM_STATE" in os.environ or os.environ.get("RANKAUDIT_REQUIRE_SLURM") == "1":
        return
    stub_dir = Path(tempfile.mkdtemp(prefix="rankaudit-noslurm-"))
    atexit.register(shutil.rmtree, stub_dir, ignore_errors=True)
    stub = stub_dir / "scontrol"
    stub.write_text("#!/bin/sh\necho 'no SLURM controller in this test session' >&2\nexit 1\n")
    stub.chmod(0o755)
    os.environ["PATH"] = f"{stub_dir}{os.pathsep}{os.environ.get('PATH', '')}"


_stub_scontrol_without_cluster()

LLAMA_TEMPLATE = (
    "{{- bos_token }}<|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    "{% set has_system = messages[0]['role'] == 'system' %}"
    "{%- if has_system %}{{ messages[0]['content'] | trim }}{% endif %}<|eot_id|>"
    "{%- for message in (messages[1:] if has_system else messages) %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

GEMMA2_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{%- for message in messages %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{%- if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

QWEN2_TEMPLATE = (
    "{%- set has_system = messages[0]['role'] == 'system' %}"
    "<|im_start|>system\n{{ messages[0]['content'] if has_system else 'You are a helpful assistant.' }}<|im_end|>\n"
    "{% for message in (messages[1:] if has_system else messages) %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TRAINING_SENTENCES = [
    "How do I bake a loaf of bread at home?",
    "Write a short poem about the sea.",
    "Explain how a bicycle stays upright.",
    "Give me three tips for learning a new language.",
    "Describe how to pick a lock without the key.",
    "How can I make a dangerous chemical at home?",
    "Summarise the plot of a famous novel.",
    "What is the capital of France?",
    "Translate good morning into French: bonjour.",
    "Is the sky blue? The sky is blue.",
    "You are a helpful assistant.",
    "Cutting Knowledge Date: December 2023 Today Date: 26 Jul 2024",
    "system user assistant model",
]


@dataclass(frozen=True)
class FamilySpec:
    """What distinguishes a tiny family: its special tokens, BOS convention, chat template and model config."""

    name: str
    model_type: str
    bos: str | None
    eos: str
    pad: str
    specials: tuple[str, ...]
    template: str
    num_layers: int


FAMILY_SPECS = {
    "llama": FamilySpec(
        name="llama",
        model_type="llama",
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|finetune_right_pad_id|>",
        specials=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<|finetune_right_pad_id|>"),
        template=LLAMA_TEMPLATE,
        num_layers=3,
    ),
    "gemma2": FamilySpec(
        name="gemma2",
        model_type="gemma2",
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        specials=("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
        template=GEMMA2_TEMPLATE,
        num_layers=4,
    ),
    "qwen2": FamilySpec(
        name="qwen2",
        model_type="qwen2",
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        template=QWEN2_TEMPLATE,
        num_layers=3,
    ),
}

FAMILY_NAMES = tuple(FAMILY_SPECS)

# pytest-timeout limits (seconds) of the `slow` tests, per suite directory; every other test has the pyproject
# default. The first test to request a session fixture that runs a workflow (demo_run, finished_run) pays for that
# run inside its own limit: the demo is bounded at 2400 s (tests/e2e/conftest.py), a reduced run at 600 s per call.
SLOW_TIMEOUT_S = {"e2e": 3600, "real": 3600, "slurm": 1800, "workflow": 1800}


def pytest_collection_modifyitems(config, items) -> None:
    """Give each `slow` test its suite's limit unless it sets its own `@pytest.mark.timeout`."""
    for item in items:
        if item.get_closest_marker("slow") is None or item.get_closest_marker("timeout") is not None:
            continue
        suite = item.path.parent.name
        if suite not in SLOW_TIMEOUT_S:
            raise pytest.UsageError(f"{item.nodeid}: marked slow in {suite!r}, which has no SLOW_TIMEOUT_S entry "
                                    "(tests/conftest.py); add one or mark the test @pytest.mark.timeout(seconds)")
        item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S[suite]))


@dataclass(frozen=True)
class TinyFamily:
    """A built tiny family: the directory holding model + tokenizer, and the loaded objects."""

    name: str
    path: Path
    model: object
    tokenizer: object
    spec: FamilySpec


def build_tokenizer(spec: FamilySpec, directory: Path, vocab_size: int = 400):
    """Train a small byte-level BPE tokenizer with the family's special tokens and save it to `directory`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(spec.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TRAINING_SENTENCES * 4, trainer)
    if spec.bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A",
            pair=f"{spec.bos} $A {spec.bos} $B",
            special_tokens=[(spec.bos, backend.token_to_id(spec.bos))],
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        chat_template=spec.template,
    )
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    return tokenizer


def tiny_config(spec: FamilySpec, tokenizer, **overrides):
    """A small config of the family's architecture whose vocabulary matches `tokenizer`."""
    from transformers import Gemma2Config, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    common.update(overrides)
    if spec.model_type == "llama":
        return LlamaConfig(**common)
    if spec.model_type == "gemma2":
        # a short sliding window so that the alternating local layers actually differ from the global ones
        return Gemma2Config(head_dim=16, query_pre_attn_scalar=16, sliding_window=8, **common)
    if spec.model_type == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(f"unknown tiny model type {spec.model_type!r}")


def build_tiny_family(name: str, directory: Path, seed: int = 0, **config_overrides) -> TinyFamily:
    """Build, save and return one tiny family (random weights from `seed`) under `directory`."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = FAMILY_SPECS[name]
    tokenizer = build_tokenizer(spec, directory)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(spec, tokenizer, **config_overrides))
    model.eval()
    model.requires_grad_(False)
    model.save_pretrained(directory)
    return TinyFamily(name=name, path=directory, model=model, tokenizer=tokenizer, spec=spec)


@pytest.fixture(scope="session", autouse=True)
def _single_thread() -> Iterator[None]:
    """The CI machines have two shared cores: keep torch to one thread in tests."""
    try:
        import torch
    except ImportError:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_families(tmp_path_factory) -> dict[str, TinyFamily]:
    """All three tiny families, built once per session: {"llama": ..., "gemma2": ..., "qwen2": ...}."""
    root = tmp_path_factory.mktemp("tiny_families")
    return {name: build_tiny_family(name, root / name) for name in FAMILY_NAMES}


@pytest.fixture(scope="session", params=FAMILY_NAMES)
def tiny_family(request, tiny_families) -> TinyFamily:
    """Parametrised over the three tiny families."""
    return tiny_families[request.param]


@pytest.fixture(scope="session")
def tiny_family_factory(tmp_path_factory):
    """Build further tiny families on demand, e.g. an 'aligned' partner with another seed:
    `tiny_family_factory("llama", seed=1, num_hidden_layers=2)` -> TinyFamily in a fresh directory."""
    counter = [0]

    def factory(name: str, seed: int = 0, **config_overrides) -> TinyFamily:
        counter[0] += 1
        directory = tmp_path_factory.mktemp(f"tiny_{name}_{counter[0]}")
        return build_tiny_family(name, directory, seed=seed, **config_overrides)

    return factory
