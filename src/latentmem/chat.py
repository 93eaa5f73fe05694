"""Chat templating for any tokenizer: its own template when it has one, ChatML otherwise."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

# ChatML, the format of Qwen and SmolLM. Tiny test tokenizers and models without a template get it.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

Message = dict[str, str]


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give `tokenizer` the ChatML template if it has none (in place)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE


def as_messages(prompt: str | Sequence[Message], system: str | None = None) -> list[Message]:
    """A user string (or an existing message list) as a message list, with an optional system turn."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None:
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Sequence[Message],
    *,
    system: str | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text the model sees: the chat template applied to `prompt`."""
    ensure_chat_template(tokenizer)
    return tokenizer.apply_chat_template(
        as_messages(prompt, system), tokenize=False, add_generation_prompt=add_generation_prompt
    )
