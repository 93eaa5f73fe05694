"""The recall special tokens: `<recall>` (the model asks for a memory), `<|memory_pad|>` (the slot whose input
embedding is the injected memory vector) and `</recall>` (closes the remembered text, so the model knows
where the memory ends and its own answer resumes).

`add_recall_tokens` adds them to any tokenizer and resizes the model's embeddings. `NewRowTraining` makes
only the new rows trainable: the embedding matrix (and an untied output matrix) get `requires_grad=True`,
and a gradient hook zeroes every row but the new ones, so the base vocabulary stays bit-for-bit frozen
(with Adam and no weight decay on these matrices, a zero gradient means a zero update).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import AddedToken
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentmem.recall.errors import RecallTokenError

RECALL = "<recall>"
MEMORY_PAD = "<|memory_pad|>"
RECALL_END = "</recall>"
RECALL_TOKENS = (RECALL, MEMORY_PAD, RECALL_END)


@dataclass(frozen=True)
class RecallTokens:
    """Token ids of the three recall tokens in one tokenizer."""

    recall_id: int
    pad_id: int
    end_id: int

    @property
    def ids(self) -> tuple[int, int, int]:
        return (self.recall_id, self.pad_id, self.end_id)


def recall_tokens(tokenizer: PreTrainedTokenizerBase) -> RecallTokens:
    """The ids of the recall tokens already in `tokenizer`; `RecallTokenError` when one is missing."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in RECALL_TOKENS if t not in vocab]
    if missing:
        raise RecallTokenError(
            f"the tokenizer lacks {', '.join(missing)}; call add_recall_tokens(model, tokenizer) first"
        )
    return RecallTokens(*(vocab[t] for t in RECALL_TOKENS))


def add_recall_tokens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, seed: int = 0
) -> RecallTokens:
    """Add the recall tokens to `tokenizer` (idempotent) and give `model` embedding rows for them.

    New rows start at the mean of the existing rows plus small seeded noise (scaled to the rows' spread),
    so they are distinct from each other yet typical in norm; rows already present are left untouched.
    """
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in RECALL_TOKENS], special_tokens=True
    )
    tokens = recall_tokens(tokenizer)
    emb = model.get_input_embeddings()
    old_rows = emb.num_embeddings
    needed = max(len(tokenizer), max(tokens.ids) + 1)
    if needed > old_rows:
        model.resize_token_embeddings(needed, mean_resizing=False)
        gen = torch.Generator().manual_seed(seed)
        for matrix in _row_matrices(model):
            with torch.no_grad():
                base = matrix[:old_rows]
                mean, std = base.mean(0), base.std(0)
                noise = torch.randn(needed - old_rows, matrix.shape[1], generator=gen).to(matrix)
                matrix[old_rows:] = mean + 0.5 * std * noise
    return tokens


def _row_matrices(model: PreTrainedModel) -> list[nn.Parameter]:
    """The input embedding matrix, plus the output matrix when it is not tied to it."""
    inp = model.get_input_embeddings().weight
    out_emb = model.get_output_embeddings()
    out = out_emb.weight if out_emb is not None else None
    return [inp] if out is None or out is inp else [inp, out]


class NewRowTraining:
    """Make only the recall tokens' rows of the embedding (and untied output) matrices trainable.

    Use `parameters()` in an optimizer param group with `weight_decay=0`; call `remove()` to undo.
    """

    def __init__(self, model: PreTrainedModel, tokens: RecallTokens) -> None:
        self.params = _row_matrices(model)
        self._was = [p.requires_grad for p in self.params]
        self._handles = []
        for p in self.params:
            mask = torch.zeros(p.shape[0], 1, dtype=p.dtype, device=p.device)
            mask[list(tokens.ids)] = 1.0
            p.requires_grad_(True)
            self._handles.append(p.register_hook(lambda g, m=mask: g * m))

    def parameters(self) -> list[nn.Parameter]:
        return list(self.params)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        for p, was in zip(self.params, self._was, strict=True):
            p.requires_grad_(was)
        self._handles = []


def token_rows_state(model: PreTrainedModel, tokens: RecallTokens) -> dict[str, torch.Tensor]:
    """The trained rows of the recall tokens: `{"rows.0": (3, D), ["rows.1": (3, D)]}` for saving."""
    ids = torch.tensor(tokens.ids)
    return {f"rows.{i}": m.detach()[ids].clone().cpu() for i, m in enumerate(_row_matrices(model))}


def load_token_rows(model: PreTrainedModel, tokens: RecallTokens, state: dict[str, torch.Tensor]) -> None:
    """Write rows saved by `token_rows_state` back into `model` (after `add_recall_tokens`)."""
    matrices = _row_matrices(model)
    if len(matrices) != sum(k.startswith("rows.") for k in state):
        raise RecallTokenError(
            "the saved recall-token rows do not match this model's embeddings (tied vs untied); "
            "load them into the same model family they were trained on"
        )
    ids = torch.tensor(tokens.ids)
    with torch.no_grad():
        for i, m in enumerate(matrices):
            m[ids] = state[f"rows.{i}"].to(m)
