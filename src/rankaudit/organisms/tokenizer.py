"""A small byte-level BPE tokenizer per family, trained on the project's own corpus.

The vocabulary is tiny (a few thousand entries) but the special tokens, BOS behaviour and chat template are
the family's real ones, so that every downstream stage (templating, BOS checks, read positions) meets the same
situation it meets with a real checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from rankaudit.organisms.chat_templates import FamilyFormat, family_format


def train_tokenizer(family: str, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it with the family's special tokens and chat template.

    Training has no random state: equal texts give an identical tokenizer, which the organisms' bit-identical
    rebuilds rely on (checked by the tests, and across processes by rebuilding the demo organisms).
    """
    fmt = family_format(family)
    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    backend.train_from_iterator(list(texts), trainer=trainer)
    _add_specials(backend, fmt)
    return _wrap(backend, fmt)


def _add_specials(backend: Tokenizer, fmt: FamilyFormat) -> None:
    """Append the special tokens after the learned vocabulary (where Llama-3 and Qwen keep theirs) and add BOS."""
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in fmt.special_tokens])
    if fmt.adds_bos:
        bos_id = backend.token_to_id(fmt.bos_token)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{fmt.bos_token} $A",
            pair=f"{fmt.bos_token} $A {fmt.bos_token} $B",
            special_tokens=[(fmt.bos_token, bos_id)],
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)


def _wrap(backend: Tokenizer, fmt: FamilyFormat) -> PreTrainedTokenizerFast:
    """The transformers wrapper that `save_pretrained` / `AutoTokenizer.from_pretrained` round-trip."""
    tokens = {"eos_token": fmt.eos_token}
    if fmt.bos_token is not None:
        tokens["bos_token"] = fmt.bos_token
    if fmt.pad_token is not None:
        tokens["pad_token"] = fmt.pad_token
    if "<unk>" in fmt.special_tokens:
        tokens["unk_token"] = "<unk>"
    wrapped = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **tokens)
    wrapped.chat_template = fmt.template
    return wrapped
