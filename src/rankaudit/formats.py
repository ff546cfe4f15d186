"""Rendering prompts in the raw and chat formats, tokenizing them, and fixing their read positions.

The formats (METHODS §1):

- `raw`: the instruction tokenized with the tokenizer's normal special tokens, which for BOS families means
  exactly one BOS in front and nothing else.
- `chat`: the *aligned* tokenizer's chat template applied to one user turn with the generation prompt, rendered
  to a string and tokenized with `add_special_tokens=False` (the template already wrote the BOS; encoding it
  again gave the paper's double BOS). The base model is fed these same ids.

The BOS check (both formats). The defect it refuses is a duplicated *leading* BOS: the BOS id at positions 0 and 1,
i.e. a template that wrote one and a tokenizer that added another. For BOS families (the tokenizer's normal
encoding puts the BOS in front: Llama, Gemma) the BOS must also sit at position 0. A BOS id that the template
itself uses inside the prompt is not a defect: SmolLM2 declares ChatML's `<|im_start|>` as its BOS, and its
template opens every turn with it (three in a prompt with the default system turn). So beyond the leading
positions the check only asks that a prompt hold as many BOS ids as its format writes by itself (counted on a
sentinel instruction for chat; one or none for raw): an extra one means the instruction text contained the BOS
string.

`system_prompt` chooses what happens to a system turn the template inserts on its own:

- `"default"`: keep whatever the template renders for a single user message (Llama-3.1's date-header system
  turn, Qwen-2.5's default system turn; Gemma-2 inserts none).
- `"none"`: remove that system turn. Templates cannot be told to omit it (Llama-3.1 always writes the date
  header; Qwen-2.5 writes an empty system turn when given an empty system message), so "none" is defined
  structurally: render the prompt with a sentinel system message, cut from just after the BOS text up to the
  start of the turn that follows the system turn (the first added token after the sentinel closes the system
  turn, the next one opens the user turn), and keep the BOS. Per family this gives: Llama-3.1
  `<|begin_of_text|><|start_header_id|>user...` (date header gone); Qwen-2.5 `<|im_start|>user...` (default system
  turn gone); Gemma-2 (the template refuses system messages and inserts none) the same string as "default".
  A BOS kept this way is a sequence prefix: a BOS the template repeats as a turn opener (SmolLM2's ChatML, whose
  BOS is `<|im_start|>`) belongs to the system turn and goes with it.
  Templates that fold a system message into the user turn (Gemma-3 style) also insert no default, so "none"
  equals "default" there too. The rule applied and the exact text removed are recorded in the metadata.

Read positions are indices into each prompt's own (unpadded) token ids: `last` (the last prompt token),
`mean_last_k` (the last k tokens, or all of them for a prompt shorter than k) and, for chat, `post_instruction`
(the template suffix after the instruction text, e.g. Llama-3.1
`<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n`), whose ids are found by rendering a sentinel
instruction and checked to end every prompt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2.exceptions import TemplateError

FORMATS = ("raw", "chat")
SYSTEM_PROMPTS = ("default", "none")
INSTRUCTION_SENTINEL = "RankauditInstructionSentinel"
SYSTEM_SENTINEL = "RankauditSystemSentinel"


@dataclass(frozen=True)
class PromptRecord:
    """One prompt as fed to the models: the string, its ids, and where activations are read."""

    index: int
    instruction: str
    rendered: str
    token_ids: tuple[int, ...]
    read_positions: dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class EncodedPrompts:
    """All prompts of one (format, prompt list), with how they were rendered."""

    format: str
    system_prompt: str
    system_rule: str
    removed_system_text: str
    uses_bos: bool
    bos_token: str | None
    post_instruction_ids: tuple[int, ...]
    post_instruction_text: str
    mean_last_k: int
    template_sha256: str | None
    records: tuple[PromptRecord, ...] = field(repr=False)

    @property
    def post_instruction_len(self) -> int:
        return len(self.post_instruction_ids)

    @property
    def token_ids(self) -> list[tuple[int, ...]]:
        return [record.token_ids for record in self.records]

    def metadata(self) -> dict[str, Any]:
        """What an activation file must record about its prompts' rendering (JSON-serialisable)."""
        return {
            "format": self.format,
            "system_prompt": self.system_prompt,
            "system_rule": self.system_rule,
            "removed_system_text": self.removed_system_text,
            "uses_bos": self.uses_bos,
            "bos_token": self.bos_token,
            "post_instruction_ids": list(self.post_instruction_ids),
            "post_instruction_text": self.post_instruction_text,
            "mean_last_k": self.mean_last_k,
            "chat_template_sha256": self.template_sha256,
        }


def family_uses_bos(tokenizer: Any) -> bool:
    """True when the tokenizer has a BOS token and its normal encoding puts it in front."""
    if tokenizer.bos_token is None or tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _describe(index: int, instruction: str) -> str:
    return f"prompt {index} ({instruction[:60]!r})"


def _added_token_strings(tokenizer: Any) -> list[str]:
    return [token.content for token in tokenizer.added_tokens_decoder.values() if token.content]


def _next_added_token(text: str, start: int, added: Sequence[str]) -> tuple[int, int] | None:
    """(position, length) of the earliest added-token string at or after `start`, or None."""
    best: tuple[int, int] | None = None
    for token in added:
        position = text.find(token, start)
        if position >= 0 and (best is None or position < best[0] or (position == best[0] and len(token) > best[1])):
            best = (position, len(token))
    return best


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class ChatRenderer:
    """Renders one user turn with the template, applying the `system_prompt` choice (see the module doc)."""

    def __init__(self, tokenizer: Any, system_prompt: str = "default") -> None:
        if system_prompt not in SYSTEM_PROMPTS:
            raise ValueError(f"system_prompt {system_prompt!r} is not one of {SYSTEM_PROMPTS}")
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template")
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self._added = _added_token_strings(tokenizer)
        bos = tokenizer.bos_token
        default = _render(tokenizer, [{"role": "user", "content": INSTRUCTION_SENTINEL}])
        # a BOS that opens the rendering and occurs nowhere else is a sequence prefix, kept when the system turn is
        # cut; one the template repeats (ChatML's <|im_start|> declared as BOS) opens the system turn itself
        self._prefix = bos if bos and default.startswith(bos) and default.count(bos) == 1 else ""
        self.strip_system = False
        self.removed_system_text = ""
        if system_prompt == "default":
            self.rule = "template default (whatever the template inserts for a single user message)"
            return
        stripped = self._strip(INSTRUCTION_SENTINEL)
        if stripped is None or stripped == default:
            self.rule = "none: the template inserts no default system turn, so this equals the default rendering"
            return
        if not default.endswith(stripped[len(self._prefix):]):
            raise ValueError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r}: cannot locate the default system turn "
                "(the rendering after the system turn differs between a sentinel system message and none); "
                "use system_prompt: default"
            )
        self.strip_system = True
        self.removed_system_text = default[len(self._prefix):len(default) - len(stripped) + len(self._prefix)]
        self.rule = "none: the template's system turn is cut out of the rendering, any leading BOS kept"

    def _strip(self, instruction: str) -> str | None:
        """The rendering without its system turn, or None when the template has no separate system turn."""
        try:
            with_system = _render(self.tokenizer, [{"role": "system", "content": SYSTEM_SENTINEL},
                                                   {"role": "user", "content": instruction}])
        except TemplateError:  # the template refuses system messages (Gemma-2): it cannot insert a default one
            return None
        system_at = with_system.find(SYSTEM_SENTINEL)
        if system_at < 0:
            return None
        closer = _next_added_token(with_system, system_at + len(SYSTEM_SENTINEL), self._added)
        if closer is None:
            return None
        opener = _next_added_token(with_system, closer[0] + closer[1], self._added)
        if opener is None or instruction.strip() not in with_system[opener[0]:]:
            return None
        if instruction.strip() in with_system[system_at:opener[0]]:  # system text folded into the user turn
            return None
        return self._prefix + with_system[opener[0]:]

    def render(self, instruction: str) -> str:
        if not self.strip_system:
            return _render(self.tokenizer, [{"role": "user", "content": instruction}])
        stripped = self._strip(instruction)
        if stripped is None:
            raise ValueError(f"could not strip the system turn for instruction {instruction[:60]!r}")
        return stripped


def _check_bos(ids: Sequence[int], bos_id: int | None, uses_bos: bool, format_count: int, where: str) -> None:
    """No duplicated leading BOS; BOS at position 0 for BOS families; no more BOS ids than the format writes."""
    if bos_id is None:
        return
    count = sum(1 for token in ids if token == bos_id)
    if len(ids) > 1 and ids[0] == bos_id and ids[1] == bos_id:
        raise ValueError(f"{where}: duplicated leading BOS (id {bos_id} at positions 0 and 1, {count} BOS tokens in all): "
                         "a BOS written by the template (or the instruction text) and added again by the tokenizer")
    if uses_bos and (not ids or ids[0] != bos_id):
        raise ValueError(f"{where}: no BOS (id {bos_id}) at position 0, which this tokenizer's own encoding puts there")
    if count != format_count:
        raise ValueError(f"{where}: {count} BOS tokens (id {bos_id}), expected {format_count} (what the format writes "
                         "for any instruction); the instruction text contains the BOS string")


def _read_positions(length: int, mean_last_k: int, post_instruction_len: int) -> dict[str, tuple[int, ...]]:
    positions = {
        "last": (length - 1,),
        "mean_last_k": tuple(range(max(0, length - mean_last_k), length)),
    }
    if post_instruction_len > 0:
        positions["post_instruction"] = tuple(range(length - post_instruction_len, length))
    return positions


def encode_prompts(
    tokenizer: Any,
    instructions: Sequence[str],
    fmt: str,
    *,
    system_prompt: str = "default",
    mean_last_k: int = 1,
) -> EncodedPrompts:
    """Render and tokenize `instructions` in format `fmt` ("raw" or "chat").

    For "chat", `tokenizer` must be the aligned model's (its template defines the format for the whole family).
    Errors name the prompt at fault.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {FORMATS}")
    if mean_last_k < 1:
        raise ValueError(f"mean_last_k must be >= 1, got {mean_last_k}")
    for index, instruction in enumerate(instructions):
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"{_describe(index, str(instruction))}: empty or not a string")
    uses_bos = family_uses_bos(tokenizer)
    bos_id = tokenizer.bos_token_id
    template = getattr(tokenizer, "chat_template", None)
    template_sha = hashlib.sha256(template.encode("utf-8")).hexdigest() if isinstance(template, str) else None
    if fmt == "raw":
        rendered = list(instructions)
        ids = [list(row) for row in tokenizer(rendered, add_special_tokens=True)["input_ids"]]
        plain = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        for index, (row, bare) in enumerate(zip(ids, plain)):
            expected = ([bos_id] if uses_bos else []) + list(bare)
            if row != expected:
                raise ValueError(f"{_describe(index, instructions[index])} in format raw: the tokenizer adds "
                                 f"special tokens other than one leading BOS ({row[:3]}...{row[-3:]})")
        suffix_ids: tuple[int, ...] = ()
        suffix_text = ""
        format_bos_count = 1 if uses_bos else 0
        rule, removed, recorded_system = "raw format has no system turn", "", "none"
    else:
        renderer = ChatRenderer(tokenizer, system_prompt)
        sentinel_rendered = renderer.render(INSTRUCTION_SENTINEL)
        suffix_text = sentinel_rendered[sentinel_rendered.rindex(INSTRUCTION_SENTINEL) + len(INSTRUCTION_SENTINEL):]
        suffix_ids = tuple(tokenizer(suffix_text, add_special_tokens=False)["input_ids"]) if suffix_text else ()
        format_bos_count = tokenizer(sentinel_rendered, add_special_tokens=False)["input_ids"].count(bos_id)
        rendered = [renderer.render(instruction) for instruction in instructions]
        ids = [list(row) for row in tokenizer(rendered, add_special_tokens=False)["input_ids"]]
        for index, row in enumerate(ids):
            if suffix_ids and tuple(row[-len(suffix_ids):]) != suffix_ids:
                raise ValueError(f"{_describe(index, instructions[index])} in format chat: its tokens do not end "
                                 f"with the template suffix {suffix_text!r} (ids {list(suffix_ids)})")
        rule, removed, recorded_system = renderer.rule, renderer.removed_system_text, system_prompt
    records = []
    for index, (instruction, text, row) in enumerate(zip(instructions, rendered, ids)):
        _check_bos(row, bos_id, uses_bos, format_bos_count, f"{_describe(index, instruction)} in format {fmt}")
        if len(row) <= len(suffix_ids):
            raise ValueError(f"{_describe(index, instruction)} in format {fmt}: no tokens before the template suffix")
        records.append(PromptRecord(index, instruction, text, tuple(row),
                                    _read_positions(len(row), mean_last_k, len(suffix_ids))))
    return EncodedPrompts(
        format=fmt,
        system_prompt=recorded_system,
        system_rule=rule,
        removed_system_text=removed,
        uses_bos=uses_bos,
        bos_token=tokenizer.bos_token if uses_bos else None,
        post_instruction_ids=suffix_ids,
        post_instruction_text=suffix_text,
        mean_last_k=mean_last_k,
        template_sha256=template_sha,
        records=tuple(records),
    )


def special_tokens_in(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    """The added (template) tokens that occur in `token_ids`, in first-seen order: input to the untrained check."""
    added = {token_id: token.content for token_id, token in tokenizer.added_tokens_decoder.items()}
    seen: dict[str, None] = {}
    for token_id in token_ids:
        if token_id in added:
            seen.setdefault(added[token_id], None)
    return list(seen)
