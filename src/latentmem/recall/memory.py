"""`RecallMemory`: everything recall memory adds to a model, in one object that saves and loads.

It holds the recall token ids, the memory head and the projector. The trained rows of the recall tokens
live in the model's own embedding matrix (so the ordinary embedding lookup and `lm_head` see them); `save`
copies them out beside the head and projector, and `load` writes them back. A LoRA adapter trained with
recall memory is saved by PEFT under `adapter/` and merged into the model on load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentmem.recall.errors import RecallError
from latentmem.recall.head import MemoryHead
from latentmem.recall.inject import MemoryProjector
from latentmem.recall.tokens import RecallTokens, add_recall_tokens, load_token_rows, token_rows_state

WEIGHTS = "recall.safetensors"
META = "recall.json"
ADAPTER = "adapter"


class RecallMemory(nn.Module):
    """The recall tokens, the memory head (hidden D -> memory M) and the projector (memory M -> input D)."""

    def __init__(self, tokens: RecallTokens, hidden_size: int, memory_dim: int, init_scale: float = 20.0):
        super().__init__()
        self.tokens = tokens
        self.hidden_size, self.memory_dim = hidden_size, memory_dim
        self.head = MemoryHead(hidden_size, memory_dim, init_scale=init_scale)
        self.projector = MemoryProjector(memory_dim, hidden_size)

    @classmethod
    def attach(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        memory_dim: int,
        *,
        init_scale: float = 20.0,
        seed: int = 0,
    ) -> RecallMemory:
        """Add the recall tokens to `model`/`tokenizer` and build a fresh head and projector for them."""
        tokens = add_recall_tokens(model, tokenizer, seed=seed)
        hidden = model.get_input_embeddings().embedding_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            memory = cls(tokens, hidden, memory_dim, init_scale=init_scale)
            memory.projector.match_embedding_norm(model.get_input_embeddings().weight)
        return memory.to(model.device)

    def save(self, path: str | Path, model: PreTrainedModel) -> None:
        """Write the head, projector and recall-token rows of `model` to directory `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        state.update(token_rows_state(model, self.tokens))
        save_file(state, str(path / WEIGHTS))
        meta = {"hidden_size": self.hidden_size, "memory_dim": self.memory_dim}
        (path / META).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(
        cls, path: str | Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
    ) -> RecallMemory:
        """Attach recall memory saved by `save` to a fresh `model`/`tokenizer` (merging any LoRA adapter)."""
        path = Path(path)
        if not (path / WEIGHTS).exists():
            raise RecallError(f"{path} holds no {WEIGHTS}; train one with `latentmem train recall`")
        meta = json.loads((path / META).read_text())
        memory = cls.attach(model, tokenizer, meta["memory_dim"])
        if memory.hidden_size != meta["hidden_size"]:
            raise RecallError(
                f"{path} was trained for hidden size {meta['hidden_size']}, this model has {memory.hidden_size}"
            )
        state = load_file(str(path / WEIGHTS))
        load_token_rows(model, memory.tokens, state)
        memory.load_state_dict({k: v for k, v in state.items() if not k.startswith("rows.")})
        if (path / ADAPTER).is_dir():
            from peft import PeftModel

            PeftModel.from_pretrained(model, path / ADAPTER).merge_and_unload()
        return memory.to(model.device)
