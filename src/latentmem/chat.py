"""Chat templating for any tokenizer: its own template when it has one, ChatML otherwise."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from latentmem.errors import LatentMemError

if TYPE_CHECKING:  # a type only: importing transformers takes seconds, and `latentmem --help` imports this
    from transformers import PreTrainedTokenizerBase

# ChatML, the format of Qwen and SmolLM. Tiny test tokenizers and models without a template get it.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

Message = dict[str, str]

# ChatML's role delimiters: control tokens wherever a tokenizer has them, even where it does not mark them
# special (tiny-qwen2 lists only <|im_end|>).
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
# Put after a control token's first character, it makes the string tokenise as plain text, and shows as
# the same text to a reader.
ZERO_WIDTH_SPACE = "\u200b"


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


def control_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The strings that `tokenizer` turns into control tokens: its special tokens and ChatML's delimiters."""
    found = {*CHATML_TOKENS, *tokenizer.all_special_tokens}
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found |= {t.content for t in added.values() if getattr(t, "special", False)}
    return sorted((t for t in found if len(t) > 1), key=len, reverse=True)  # longest first: one match each


def neutralize(text: str, tokens: Iterable[str]) -> str:
    """`text` with every occurrence of `tokens` broken by a zero-width space after its first character, so
    that text from a user, a retrieved memory or a stored turn cannot open or close a role (prompt injection
    by `<|im_end|><|im_start|>system`) or end the sequence."""
    pattern = "|".join(re.escape(t) for t in tokens)
    if not pattern:
        return text
    return re.sub(pattern, lambda m: m[0][0] + ZERO_WIDTH_SPACE + m[0][1:], text)


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Sequence[Message],
    *,
    system: str | None = None,
    add_generation_prompt: bool = True,
    allow: Iterable[str] = (),
) -> str:
    """The prompt text the model sees: the chat template applied to `prompt`. Control tokens inside the
    messages' contents are neutralised (`neutralize`): only the template draws role boundaries. `allow`:
    control tokens the caller placed in the contents on purpose (e.g. xRAG's `<|memory_pad|>`), kept; the
    caller neutralises any text of others it puts beside them."""
    ensure_chat_template(tokenizer)
    kept = set(allow)
    tokens = [t for t in control_tokens(tokenizer) if t not in kept]
    messages = [{**m, "content": neutralize(m["content"], tokens)} for m in as_messages(prompt, system)]
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def generation_header(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """The token ids the chat template appends to open the assistant's turn (ChatML:
    `<|im_start|>assistant\n`), as they tokenise at the end of a rendered prompt: the difference between
    a prompt rendered with and without the generation prompt."""

    def ids(header: bool) -> list[int]:
        text = render_chat(tokenizer, "x", add_generation_prompt=header)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    with_header, without = ids(True), ids(False)
    if len(with_header) <= len(without) or with_header[: len(without)] != without:
        raise LatentMemError(
            "prompt_latents_at: this tokenizer's chat template adds no separate assistant header to the "
            "prompt; use prompt_latents_at: end"
        )
    return tuple(with_header[len(without) :])
