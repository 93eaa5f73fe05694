"""Incremental decoding over any Hugging Face causal LM, keeping its KV cache, with ragged positions.

Every generator in latentmem (MemGen's latent insertion, recall memory's injected vectors) runs on
`KVDecoder`. Its one rule: a batch stays rectangular. When some rows need extra positions (K latents, an
injected memory) and others do not, every row gets the same number of new slots and the rows that do not
need them mark the slots invalid: attention-mask 0 there (nothing attends to them, ever) and the row's
position ids do not advance. Nothing already cached is recomputed.

Position ids are the count of valid positions before a slot, per row, so left padding, inserted latents
and invalid slots all get the positions a straight unpadded sequence would have.

This module is also the one home of the batch-layout rules every other module uses: `IGNORE` (the label
no loss scores), `pad_rows` (ragged rows as one tensor, right- or left-padded), `left_padded` (token rows
as a left-padded batch and its mask: the layout generation continues from) and `positions_from_valid`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

IGNORE = -100  # the label of a position no loss scores (the ignore_index of torch's cross-entropy)


def pad_rows(
    rows: Sequence[Sequence[int | float]],
    fill: int | float,
    dtype: torch.dtype = torch.long,
    *,
    left: bool = False,
) -> torch.Tensor:
    """Ragged rows as one (len(rows), max length) tensor, padded with `fill` on the right (or the left)."""
    width = max((len(r) for r in rows), default=0)
    pad = [[fill] * (width - len(r)) for r in rows]
    out = [p + list(r) if left else list(r) + p for r, p in zip(rows, pad, strict=True)]
    return torch.tensor(out, dtype=dtype).reshape(len(rows), width)


def left_padded(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as a left-padded batch: (input_ids (B, T), attention_mask (B, T)), both long. Every row's
    last token sits in the last column, where generation continues."""
    return pad_rows(seqs, pad_id, left=True), pad_rows([[1] * len(s) for s in seqs], 0, left=True)


@dataclass
class DecodeOut:
    logits: torch.Tensor | None  # (B, t_keep, V) float32: the last `logits_to_keep` slots, or None
    hidden: torch.Tensor  # (B, t, D) last-layer hidden states (after the final norm) of every new slot


def positions_from_valid(valid: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """Position ids for slots `valid` (B, t) bool, continuing from `start` (B,) valid positions so far.

    A valid slot gets the number of valid slots before it; an invalid one the position its row's next
    valid slot will take (it is masked out, so any value would do; this one keeps ids in range).
    """
    rel = (valid.long().cumsum(-1) - 1).clamp(min=0)
    return rel if start is None else rel + start[:, None]


class KVDecoder:
    """A causal LM plus its KV cache, fed chunk by chunk.

    `extend(inputs_embeds (B, t, D), valid (B, t))` appends t slots to every row and returns the new slots'
    hidden states and the last slots' logits. `crop(length)` forgets everything after `length` slots
    (the weaver uses it to drop its query slots after each insertion).
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.cache: DynamicCache | None = None
        self.attention_mask: torch.Tensor | None = None  # (B, L) long, 1 = valid slot

    @property
    def length(self) -> int:
        return 0 if self.attention_mask is None else self.attention_mask.shape[1]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> input embeddings (B, T, D)."""
        return self.model.get_input_embeddings()(input_ids)

    def prefill(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int = 1
    ) -> DecodeOut:
        """Start a fresh cache with a (left-padded) prompt: `inputs_embeds` (B, T, D), `attention_mask` (B, T)."""
        self.cache, self.attention_mask = None, None
        return self.extend(inputs_embeds, attention_mask.bool(), logits_to_keep=logits_to_keep)

    def extend(
        self, inputs_embeds: torch.Tensor, valid: torch.Tensor | None = None, logits_to_keep: int = 1
    ) -> DecodeOut:
        """Append `inputs_embeds` (B, t, D); `valid` (B, t) bool marks the slots a row really has.

        `logits_to_keep`: logits for the last n slots (0 = none: the caller only needs hidden states).
        """
        B, t, _ = inputs_embeds.shape
        if valid is None:
            valid = torch.ones(B, t, dtype=torch.bool, device=inputs_embeds.device)
        start = None if self.attention_mask is None else self.attention_mask.sum(-1)
        position_ids = positions_from_valid(valid, start)
        new_mask = valid.long()
        mask = new_mask if self.attention_mask is None else torch.cat([self.attention_mask, new_mask], dim=1)
        if self.cache is None:
            self.cache = DynamicCache(config=self.model.config)
        out = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=self.cache,
            use_cache=True,
            output_hidden_states=True,
            logits_to_keep=max(logits_to_keep, 1),
        )
        self.attention_mask = mask
        logits = out.logits[:, -logits_to_keep:].float() if logits_to_keep > 0 else None
        return DecodeOut(logits=logits, hidden=out.hidden_states[-1])

    def crop(self, length: int) -> None:
        """Forget every slot after the first `length` (cache and mask)."""
        if self.cache is None or length >= self.length:
            return
        self.cache.crop(length - self.length)  # transformers 5: a negative count of slots to drop
        self.attention_mask = self.attention_mask[:, :length]
