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

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from latentmem.errors import LatentMemError

IGNORE = -100  # the label of a position no loss scores (the ignore_index of torch's cross-entropy)
# `KVDecoder.compact` runs once it would shorten a cache by more than this share: a compaction copies the
# cache once, about what `DynamicCache` already does at every step (it grows by concatenation)
COMPACT_THRESHOLD = 0.25


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
    hidden: torch.Tensor | None  # (B, t, D) last-layer states (after the final norm), when asked for


def positions_from_valid(valid: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """Position ids for slots `valid` (B, t) bool, continuing from `start` (B,) valid positions so far.

    A valid slot gets the number of valid slots before it; an invalid one the position its row's next
    valid slot will take (it is masked out, so any value would do; this one keeps ids in range).
    """
    rel = (valid.long().cumsum(-1) - 1).clamp(min=0)
    return rel if start is None else rel + start[:, None]


class KVDecoder:
    """A causal LM plus its KV cache, fed chunk by chunk.

    `extend(inputs_embeds (B, t, D), valid (B, t))` appends t slots to every row and returns the last slots'
    logits and, when asked for, the new slots' hidden states. `crop(length)` forgets everything after `length` slots
    (the weaver uses it to drop its query slots after each insertion). `compact` drops invalid slots
    once they make up too much of the cache. `select_rows` and `join` change which rows the batch holds
    (continuous batching: rows leave when done, new ones join).
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
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int = 1,
        *,
        hidden: bool = False,
    ) -> DecodeOut:
        """Start a fresh cache with a (left-padded) prompt: `inputs_embeds` (B, T, D), `attention_mask` (B, T)."""
        self.cache, self.attention_mask = None, None
        return self.extend(inputs_embeds, attention_mask.bool(), logits_to_keep=logits_to_keep, hidden=hidden)

    def extend(
        self,
        inputs_embeds: torch.Tensor,
        valid: torch.Tensor | None = None,
        logits_to_keep: int = 1,
        *,
        hidden: bool = False,
    ) -> DecodeOut:
        """Append `inputs_embeds` (B, t, D); `valid` (B, t) bool marks the slots a row really has.

        `logits_to_keep`: logits for the last n slots (0 = none: the caller only needs hidden states).
        `hidden`: also return the new slots' last-layer states. Off unless asked for: Hugging Face records
        them through hooks on every layer, a cost per step that plain decoding does not need.
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
            output_hidden_states=hidden,
            logits_to_keep=max(logits_to_keep, 1),
        )
        self.attention_mask = mask
        logits = out.logits[:, -logits_to_keep:].float() if logits_to_keep > 0 else None
        return DecodeOut(logits=logits, hidden=out.hidden_states[-1] if hidden else None)

    def extend_rows(
        self,
        rows: torch.Tensor,
        inputs_embeds: torch.Tensor,
        valid: torch.Tensor | None = None,
        logits_to_keep: int = 1,
        *,
        hidden: bool = False,
    ) -> DecodeOut:
        """`extend` for some rows only: `rows` (R,) long indices, `inputs_embeds` (R, t, D), `valid` (R, t);
        the other rows get t invalid slots. Returns the R rows' outputs.

        Why: when a few rows of a large batch insert a block (K latents), running the block for every row
        computes B * K slots of which only R * K are kept. The model runs on those rows' cache alone, the
        same per-row computation, and the new slots are written back into the full cache.
        """
        R, t, _ = inputs_embeds.shape
        if len(self.attention_mask) == R:
            return self.extend(inputs_embeds, valid, logits_to_keep, hidden=hidden)
        full, L = self.cache, self.length
        sub = copy.copy(full)  # the same kind of cache over the R rows (layers copied, tensors selected)
        sub.layers = [copy.copy(layer) for layer in full.layers]
        for layer in sub.layers:
            layer.keys, layer.values = layer.keys.index_select(0, rows), layer.values.index_select(0, rows)
        mask = self.attention_mask
        self.cache, self.attention_mask = sub, mask.index_select(0, rows)
        try:
            out = self.extend(inputs_embeds, valid, logits_to_keep, hidden=hidden)
        finally:
            self.cache, self.attention_mask = full, mask
        if any(part.keys.shape[-2] != L + t for part in sub.layers):  # a sliding layer past its window
            raise LatentMemError("extend_rows: this cache does not keep every slot (sliding window passed)")
        for layer, part in zip(full.layers, sub.layers, strict=True):
            for name in ("keys", "values"):
                old, new = getattr(layer, name), getattr(part, name)
                grown = torch.cat([old, old.new_zeros(*old.shape[:2], t, old.shape[-1])], dim=-2)
                grown[rows, :, L:] = new[:, :, L:]
                setattr(layer, name, grown)
            if isinstance(layer, DynamicSlidingWindowLayer):
                layer.cumulative_length = part.cumulative_length
        grown = torch.cat([mask, mask.new_zeros(len(mask), t)], dim=1)
        grown[rows, L:] = self.attention_mask.new_ones(R, t) if valid is None else valid.long()
        self.attention_mask = grown
        return out

    def crop(self, length: int) -> None:
        """Forget every slot after the first `length` (cache and mask)."""
        if self.cache is None or length >= self.length:
            return
        self.cache.crop(length - self.length)  # transformers 5: a negative count of slots to drop
        self.attention_mask = self.attention_mask[:, :length]

    def compact(self, threshold: float = 0.0) -> bool:
        """Drop invalid slots when that would shorten the cache by more than `threshold` of its length:
        per row, the valid slots move (in order) to the right end, and the cache keeps only the last
        max-valid-count columns (left padding again). Returns whether it compacted.

        Why: the rectangular-batch rule gives every row the slots any row needs, so with rows inserting at
        different steps (or finished rows) dead slots pile up and every later step attends over them. It is
        exact: cached keys already carry their rotary positions (absolute position embeddings are inside
        the cached states too), position ids count valid slots only, which moving them does not change, and
        invalid slots were never attended to. The criterion counts only what compaction can reclaim: dead
        slots left of a row's valid ones that the longest row needs anyway stay. A cache this cannot move
        (a sliding layer past its window, a static or quantized cache) is left as it is.
        """
        if self.attention_mask is None or self.length == 0:
            return False
        valid = self.attention_mask.bool()
        width = int(valid.sum(1).max())  # the longest row's valid count: the compacted length
        layers = self.cache.layers
        movable = all(
            type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) and layer.keys.shape[-2] == self.length
            for layer in layers
        )
        if not movable or self.length - width <= threshold * self.length:
            return False
        # (B, width): each row's slots with the invalid ones first, stable, so the valid ones keep their order
        order = valid.long().argsort(dim=1, stable=True)[:, self.length - width :]
        for layer in layers:
            index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.keys, layer.values = layer.keys.gather(2, index), layer.values.gather(2, index)
            if isinstance(layer, DynamicSlidingWindowLayer):
                layer.cumulative_length = width  # what the layer's mask sizes and crop read
        self.attention_mask = self.attention_mask.gather(1, order)
        return True

    def _layers(self) -> list[DynamicLayer]:
        layers = [] if self.cache is None else list(self.cache.layers)
        if any(type(layer) is not DynamicLayer for layer in layers):
            raise LatentMemError(
                "moving cache rows needs plain dynamic cache layers; this model's cache has "
                f"{sorted({type(layer).__name__ for layer in layers})}"
            )
        return layers

    def select_rows(self, rows: Sequence[int]) -> None:
        """Keep only the batch rows `rows` (indices, in that order), then drop the leading slots that none
        of them has (left padding that only departed rows needed)."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.attention_mask.device)
        mask = self.attention_mask.index_select(0, index)
        first = int(mask.any(0).long().argmax())  # the first slot some kept row has
        for layer in self._layers():
            layer.keys = layer.keys.index_select(0, index)[..., first:, :]
            layer.values = layer.values.index_select(0, index)[..., first:, :]
        self.attention_mask = mask[:, first:]

    def join(self, others: Sequence[KVDecoder]) -> None:
        """Append the rows of `others` (decoders over the same model) to this batch. Every decoder's slots
        are left-padded with invalid ones to the longest length; cached keys carry their rotary positions
        already and positions count valid slots only, so every row continues exactly as it would alone."""
        parts = [self, *others]
        width = max(p.length for p in parts)

        def padded(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
            if length == width:
                return t
            shape = list(t.shape)
            shape[dim] = width - length
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        layers = [p._layers() for p in parts]
        for i, layer in enumerate(layers[0]):
            for name in ("keys", "values"):
                rows = [
                    padded(getattr(ls[i], name), p.length, -2) for p, ls in zip(parts, layers, strict=True)
                ]
                setattr(layer, name, torch.cat(rows, 0))
        self.attention_mask = torch.cat([padded(p.attention_mask, p.length, 1) for p in parts], 0)
