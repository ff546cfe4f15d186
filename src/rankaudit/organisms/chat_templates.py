"""The chat formats of the three studied families, written as Jinja templates of our own.

For one user turn (with or without a system message) each template renders the same string as the real
model's tokenizer: Llama-3.1-Instruct, Gemma-2-it and Qwen-2.5-Instruct. One extra template variable,
`default_system` (default true), lets the capture stage drop what a template inserts on its own (the Llama-3.1
date header, the Qwen-2.5 default system turn); `render_chat` is the one place that sets it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

SYSTEM_PROMPT_CHOICES = ("default", "none")

LLAMA_TEMPLATE = r"""{{- bos_token }}
{%- set use_default = default_system if default_system is defined else true %}
{%- set today = date_string if date_string is defined else '26 Jul 2024' %}
{%- if messages and messages[0]['role'] == 'system' %}
    {%- set system_text = messages[0]['content'] | trim %}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- set system_text = '' %}
    {%- set turns = messages %}
{%- endif %}
{%- if use_default or system_text %}
    {{- '<|start_header_id|>system<|end_header_id|>\n\n' }}
    {%- if use_default %}
        {{- 'Cutting Knowledge Date: December 2023\nToday Date: ' + today + '\n\n' }}
    {%- endif %}
    {{- system_text + '<|eot_id|>' }}
{%- endif %}
{%- for turn in turns %}
    {{- '<|start_header_id|>' + turn['role'] + '<|end_header_id|>\n\n' + turn['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

GEMMA2_TEMPLATE = r"""{#- default_system: accepted and ignored, this format inserts no system text of its own #}
{{- bos_token }}
{%- for turn in messages %}
    {%- if turn['role'] == 'system' %}
        {{- raise_exception('the Gemma-2 chat format has no system role') }}
    {%- endif %}
    {%- set speaker = 'model' if turn['role'] == 'assistant' else turn['role'] %}
    {{- '<start_of_turn>' + speaker + '\n' + turn['content'] | trim + '<end_of_turn>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<start_of_turn>model\n' }}
{%- endif %}
"""

QWEN2_TEMPLATE = r"""{%- set use_default = default_system if default_system is defined else true %}
{%- if messages and messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- if use_default %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
    {%- set turns = messages %}
{%- endif %}
{%- for turn in turns %}
    {{- '<|im_start|>' + turn['role'] + '\n' + turn['content'] + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""


@dataclass(frozen=True)
class FamilyFormat:
    """Special tokens and chat format of one family, as its real instruction-tuned tokenizer has them."""

    family: str
    template: str
    bos_token: str | None
    eos_token: str
    pad_token: str | None
    end_of_text: str
    end_of_turn: str
    special_tokens: tuple[str, ...]
    has_default_system: bool

    @property
    def adds_bos(self) -> bool:
        """Whether tokenizing raw text prepends a BOS token (Llama and Gemma do, Qwen does not)."""
        return self.bos_token is not None

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        """Tokens that end a generation: end of text and end of turn."""
        return tuple(dict.fromkeys((self.end_of_text, self.end_of_turn, self.eos_token)))


FAMILY_FORMATS: dict[str, FamilyFormat] = {
    "llama": FamilyFormat(
        family="llama",
        template=LLAMA_TEMPLATE,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token=None,
        end_of_text="<|end_of_text|>",
        end_of_turn="<|eot_id|>",
        special_tokens=(
            "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|finetune_right_pad_id|>", "<|eom_id|>", "<|python_tag|>",
        ),
        has_default_system=True,
    ),
    "gemma2": FamilyFormat(
        family="gemma2",
        template=GEMMA2_TEMPLATE,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        end_of_text="<eos>",
        end_of_turn="<end_of_turn>",
        special_tokens=("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"),
        has_default_system=False,
    ),
    "qwen2": FamilyFormat(
        family="qwen2",
        template=QWEN2_TEMPLATE,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        end_of_text="<|endoftext|>",
        end_of_turn="<|im_end|>",
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        has_default_system=True,
    ),
}


def family_format(family: str) -> FamilyFormat:
    """The chat format of an organism family, naming the known ones when it is not one of them."""
    try:
        return FAMILY_FORMATS[family]
    except KeyError:
        raise ValueError(f"unknown organism family {family!r} (known: {sorted(FAMILY_FORMATS)})") from None


def render_chat(tokenizer: Any, instruction: str, system_prompt: str = "default") -> str:
    """Render one user turn plus the generation prompt with the tokenizer's own chat template.

    `system_prompt` is `default` (keep whatever the template inserts by itself) or `none` (set the template
    variable `default_system=False`, which the organisms' templates honour). A real tokenizer whose template
    ignores that variable renders its own default; a warning says so rather than silently pretending.
    The result is a string: tokenize it with `add_special_tokens=False` (its BOS is already in it).
    """
    if system_prompt not in SYSTEM_PROMPT_CHOICES:
        raise ValueError(f"capture.system_prompt: {system_prompt!r} is not one of {SYSTEM_PROMPT_CHOICES}")
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        raise ValueError(f"tokenizer {name!r} has no chat template; the chat format cannot be rendered")
    extra: dict[str, Any] = {}
    if system_prompt == "none":
        extra["default_system"] = False
        if isinstance(template, str) and "default_system" not in template:
            warnings.warn(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r}: its chat template has no `default_system` "
                "variable, so system_prompt='none' renders the template's own default", stacklevel=2,
            )
    messages = [{"role": "user", "content": instruction}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)
