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

Special-token text in an instruction (METHODS §1, "Special-token text in prompts"): a tokenizer parses the string
of any of its special tokens (`<|eot_id|>`, `<|im_end|>`, `<end_of_turn>`, its BOS ...) as that token wherever it
occurs, so an instruction holding one would silently change the chat structure. `special_token_text` chooses:

- `"error"` (default): such a prompt is refused, naming it and the marker.
- `"escape"`: the user text is tokenized as ordinary text (the tokenizer's own `split_special_tokens`) while the
  template around it keeps its special tokens. A tokenizer splits a text at every special-token match and encodes
  the pieces between matches independently, so the exact escaped encoding is: the rendering up to the template's
  last special token before the user text, encoded normally; from there to the template's first special token
  after it (user text included), encoded with `split_special_tokens=True`; the rest encoded normally. That the
  three-piece normal encoding equals the normal encoding of the whole string is checked for every escaped prompt
  (so the split points are the tokenizer's own), and the escaped ids are checked to hold no special id from the
  user text. Prompts without special-token text keep exactly the ids they had; the count of escaped prompts is
  recorded in the metadata.

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
SPECIAL_TOKEN_TEXT = ("error", "escape")
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
    special_token_text: str = "error"
    escaped: tuple[int, ...] = ()

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
            "special_token_text": self.special_token_text,
            "n_escaped": len(self.escaped),
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


def special_token_strings(tokenizer: Any) -> list[str]:
    """Every string the tokenizer reads as a special token wherever it occurs (longest first)."""
    strings = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special and token.content}
    strings.update(token for token in tokenizer.all_special_tokens if token)
    return sorted(strings, key=lambda token: (-len(token), token))


def special_text_spans(text: str, specials: Sequence[str]) -> list[tuple[int, int]]:
    """(start, end) of each special-token string in `text`, leftmost-longest and non-overlapping, as a tokenizer matches."""
    spans: list[tuple[int, int]] = []
    start = 0
    while (found := _next_added_token(text, start, specials)) is not None:
        spans.append((found[0], found[0] + found[1]))
        start = found[0] + found[1]
    return spans


def special_text_in(text: str, specials: Sequence[str]) -> list[str]:
    """The special-token strings `text` holds, in first-seen order."""
    return list(dict.fromkeys(text[start:end] for start, end in special_text_spans(text, specials)))


def plain_text_ids(tokenizer: Any, text: str) -> list[int]:
    """`text` tokenized as ordinary text: special-token strings in it are split like any other characters."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


@dataclass(frozen=True)
class TemplateFrame:
    """What a format writes around the user text: rendering = prefix + user text (as the template writes it) + suffix."""

    prefix: str
    suffix: str

    def user_text(self, rendered: str, where: str) -> str:
        if not (rendered.startswith(self.prefix) and rendered.endswith(self.suffix)
                and len(rendered) >= len(self.prefix) + len(self.suffix)):
            raise ValueError(f"{where}: the rendering does not start and end with what the template writes around a "
                             "sentinel instruction, so the user text cannot be located in it")
        return rendered[len(self.prefix):len(rendered) - len(self.suffix)]


def template_frame(rendered_sentinel: str) -> TemplateFrame:
    """The frame of a format, from its rendering of INSTRUCTION_SENTINEL (raw: the sentinel itself, empty frame)."""
    at = rendered_sentinel.rindex(INSTRUCTION_SENTINEL)
    return TemplateFrame(rendered_sentinel[:at], rendered_sentinel[at + len(INSTRUCTION_SENTINEL):])


def _escaped_ids(tokenizer: Any, frame: TemplateFrame, rendered: str, normal: Sequence[int], specials: Sequence[str],
                 special_ids: set[int], leading: Sequence[int], where: str) -> list[int]:
    """The ids of `rendered` with its user text tokenized as ordinary text (see the module doc, `special_token_text`)."""
    body = frame.user_text(rendered, where)
    head_spans, tail_spans = special_text_spans(frame.prefix, specials), special_text_spans(frame.suffix, specials)
    cut_head = head_spans[-1][1] if head_spans else 0
    cut_tail = tail_spans[0][0] if tail_spans else len(frame.suffix)
    fixed_head, fixed_tail = frame.prefix[:cut_head], frame.suffix[cut_tail:]
    middle = frame.prefix[cut_head:] + body + frame.suffix[:cut_tail]

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    if list(leading) + encode(fixed_head) + encode(middle) + encode(fixed_tail) != list(normal):
        raise ValueError(f"{where}: special_token_text escape cannot be exact for this tokenizer and template (it does not "
                         "split the rendering at the template's special tokens around the user text); remove the "
                         "special-token text from the dataset instead")
    plain = plain_text_ids(tokenizer, middle)
    if special_ids & set(plain):
        raise ValueError(f"{where}: the user text still encodes to special ids {sorted(special_ids & set(plain))} "
                         "with split_special_tokens; remove the special-token text from the dataset")
    return list(leading) + encode(fixed_head) + plain + encode(fixed_tail)


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
    special_token_text: str = "error",
) -> EncodedPrompts:
    """Render and tokenize `instructions` in format `fmt` ("raw" or "chat").

    For "chat", `tokenizer` must be the aligned model's (its template defines the format for the whole family).
    `special_token_text` ("error" or "escape") says what happens to an instruction holding special-token text
    (module doc). Errors name the prompt at fault.
    """
    if special_token_text not in SPECIAL_TOKEN_TEXT:
        raise ValueError(f"special_token_text {special_token_text!r} is not one of {SPECIAL_TOKEN_TEXT}")
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {FORMATS}")
    if mean_last_k < 1:
        raise ValueError(f"mean_last_k must be >= 1, got {mean_last_k}")
    for index, instruction in enumerate(instructions):
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"{_describe(index, str(instruction))}: empty or not a string")
    specials = special_token_strings(tokenizer)
    flagged = [index for index, instruction in enumerate(instructions) if special_text_spans(instruction, specials)]
    if flagged and special_token_text == "error":
        index = flagged[0]
        raise ValueError(f"{_describe(index, instructions[index])} in format {fmt}: holds special-token text "
                         f"{special_text_in(instructions[index], specials)}, which the tokenizer would read as special "
                         f"tokens ({len(flagged)} such prompt(s)); remove it or set capture.special_token_text: escape")
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
        frame, leading = TemplateFrame("", ""), [bos_id] if uses_bos else []
    else:
        renderer = ChatRenderer(tokenizer, system_prompt)
        sentinel_rendered = renderer.render(INSTRUCTION_SENTINEL)
        suffix_text = sentinel_rendered[sentinel_rendered.rindex(INSTRUCTION_SENTINEL) + len(INSTRUCTION_SENTINEL):]
        suffix_ids = tuple(tokenizer(suffix_text, add_special_tokens=False)["input_ids"]) if suffix_text else ()
        format_bos_count = tokenizer(sentinel_rendered, add_special_tokens=False)["input_ids"].count(bos_id)
        rendered = [renderer.render(instruction) for instruction in instructions]
        ids = [list(row) for row in tokenizer(rendered, add_special_tokens=False)["input_ids"]]
        rule, removed, recorded_system = renderer.rule, renderer.removed_system_text, system_prompt
        frame, leading = template_frame(sentinel_rendered), []
    special_ids = {token_id for token in specials if (token_id := tokenizer.convert_tokens_to_ids(token)) is not None}
    for index in flagged:
        where = f"{_describe(index, instructions[index])} in format {fmt}"
        ids[index] = _escaped_ids(tokenizer, frame, rendered[index], ids[index], specials, special_ids, leading, where)
    for index, row in enumerate(ids):
        if suffix_ids and tuple(row[-len(suffix_ids):]) != suffix_ids:
            raise ValueError(f"{_describe(index, instructions[index])} in format chat: its tokens do not end "
                             f"with the template suffix {suffix_text!r} (ids {list(suffix_ids)})")
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
        special_token_text=special_token_text,
        escaped=tuple(flagged) if special_token_text == "escape" else (),
    )


def special_tokens_in(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    """The added (template) tokens that occur in `token_ids`, in first-seen order: input to the untrained check."""
    added = {token_id: token.content for token_id, token in tokenizer.added_tokens_decoder.items()}
    seen: dict[str, None] = {}
    for token_id in token_ids:
        if token_id in added:
            seen.setdefault(added[token_id], None)
    return list(seen)
