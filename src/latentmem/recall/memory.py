"""`RecallMemory`: everything recall memory adds to a model, in one object that saves and loads.

It holds the recall token ids, the memory head and the projector. The trained rows of the recall tokens
live in the model's own embedding matrix (so the ordinary embedding lookup and `lm_head` see them); `save`
copies them out beside the head and projector, and `load` writes them back. A LoRA adapter trained with
recall memory is saved by PEFT under `adapter/` and merged into the model on load.

`RecallModel` is what recall training trains: a model with its recall memory, as a `loop.Trainable`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentmem.errors import ModelLoadError
from latentmem.recall.errors import RecallError
from latentmem.recall.head import MemoryHead
from latentmem.recall.inject import MemoryProjector
from latentmem.recall.tokens import (
    NewRowTraining,
    RecallTokens,
    add_recall_tokens,
    load_token_rows,
    token_rows_state,
)

WEIGHTS = "recall.safetensors"
META = "recall.json"
ADAPTER = "adapter"
# what recall training can train, in the order the optimiser receives them
PARTS = ("rows", "head", "projector", "lora")


class RecallMemory(nn.Module):
    """The recall tokens, the memory head (hidden D -> memory M) and the projector (memory M -> `slots`
    input embeddings (slots, D), filling that many consecutive `<|memory_pad|>`; `projector_width`: the
    projector's hidden width, 0 = D)."""

    def __init__(
        self,
        tokens: RecallTokens,
        hidden_size: int,
        memory_dim: int,
        init_scale: float = 20.0,
        *,
        slots: int = 1,
        projector_width: int = 0,
    ):
        super().__init__()
        self.tokens = tokens
        self.hidden_size, self.memory_dim, self.slots = hidden_size, memory_dim, slots
        self.head = MemoryHead(hidden_size, memory_dim, init_scale=init_scale)
        self.projector = MemoryProjector(memory_dim, hidden_size, slots=slots, width=projector_width)

    @classmethod
    def attach(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        memory_dim: int,
        *,
        init_scale: float = 20.0,
        seed: int = 0,
        slots: int = 1,
        projector_width: int = 0,
    ) -> RecallMemory:
        """Add the recall tokens to `model`/`tokenizer` and build a fresh head and projector for them."""
        tokens = add_recall_tokens(model, tokenizer, seed=seed)
        hidden = model.get_input_embeddings().embedding_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            memory = cls(
                tokens,
                hidden,
                memory_dim,
                init_scale=init_scale,
                slots=slots,
                projector_width=projector_width,
            )
            memory.projector.match_embedding_norm(model.get_input_embeddings().weight)
        return memory.to(model.device)

    def save(self, path: str | Path, model: PreTrainedModel) -> None:
        """Write the head, projector and recall-token rows of `model` to directory `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        state.update(token_rows_state(model, self.tokens))
        save_file(state, str(path / WEIGHTS))
        meta = {
            "hidden_size": self.hidden_size,
            "memory_dim": self.memory_dim,
            "slots": self.slots,
            "projector_width": self.projector.width,
        }
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
        # folders saved before m-slot memories hold neither key: one slot, the default width
        memory = cls.attach(
            model,
            tokenizer,
            meta["memory_dim"],
            slots=meta.get("slots", 1),
            projector_width=meta.get("projector_width", 0),
        )
        if memory.hidden_size != meta["hidden_size"]:
            raise RecallError(
                f"{path} was trained for hidden size {meta['hidden_size']}, this model has {memory.hidden_size}"
            )
        state = load_file(str(path / WEIGHTS))
        load_token_rows(model, memory.tokens, state)
        memory.load_state_dict({k: v for k, v in state.items() if not k.startswith("rows.")})
        if (path / ADAPTER).is_dir():
            PeftModel.from_pretrained(model, path / ADAPTER).merge_and_unload()
        return memory.to(model.device)


class RecallModel(nn.Module):
    """A frozen causal LM with recall memory, as a `loop.Trainable`.

    What trains (`parts`, a subset of `PARTS`): the recall tokens' embedding rows (`rows`: the whole
    embedding matrices, whose gradients `NewRowTraining` masks to those rows), the memory head, the
    projector, and the LoRA adapter when `lm` is a PEFT model. The trainable state it saves and restores is
    always all of them, whichever parts the current optimiser updates, so that any step's checkpoint
    restores the whole recall model.

    Args:
        lm: the model, wrapped by PEFT when a LoRA trains; every base weight frozen.
        rows: the gradient mask of the recall rows, already applied to `lm`'s embedding matrices.
    """

    shared = True  # one frozen model: FSDP would shard only `reasoner`

    def __init__(
        self,
        lm: PreTrainedModel | PeftModel,
        tokenizer: PreTrainedTokenizerBase,
        memory: RecallMemory,
        rows: NewRowTraining,
        parts: Sequence[str] = PARTS,
    ) -> None:
        super().__init__()
        unknown = sorted(set(parts) - set(PARTS))
        if unknown:
            raise RecallError(f"unknown trainable parts {unknown}; choose from {', '.join(PARTS)}")
        self.lm, self.memory = lm, memory
        self.tokenizer, self.rows, self.parts = tokenizer, rows, tuple(parts)

    def only(self, *parts: str) -> RecallModel:
        """The same model (every module shared) with only `parts` trained."""
        return RecallModel(self.lm, self.tokenizer, self.memory, self.rows, parts)

    @property
    def reasoner(self) -> PreTrainedModel:
        """The base model (with the adapter's layers inside it, if any)."""
        return self.lm.get_base_model() if isinstance(self.lm, PeftModel) else self.lm

    @property
    def device(self) -> torch.device:
        return self.reasoner.device

    def _lora(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.lm.named_parameters() if "lora_" in n}

    def trainable_parameters(self) -> list[nn.Parameter]:
        by_part = {
            "rows": self.rows.parameters(),
            "head": list(self.memory.head.parameters()),
            "projector": list(self.memory.projector.parameters()),
            "lora": list(self._lora().values()),
        }
        return [p for part in PARTS if part in self.parts for p in by_part[part]]

    def num_trainable(self) -> int:
        """How many weights `parts` train: the recall rows counted as rows (3 × D per embedding matrix),
        not as the whole matrices that their gradient mask lets train."""
        matrices = self.rows.parameters()
        count = sum(p.numel() for p in self.trainable_parameters() if all(p is not m for m in matrices))
        if "rows" in self.parts:
            count += len(self.memory.tokens.ids) * self.memory.hidden_size * len(matrices)
        return count

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Head and projector (`RecallMemory.state_dict` keys), the recall rows (`rows.i`: (3, D) each) and
        the LoRA weights (PEFT's parameter names)."""
        state = {k: v.detach() for k, v in self.memory.state_dict().items()}
        state.update(token_rows_state(self.reasoner, self.memory.tokens))
        state.update({n: p.detach() for n, p in self._lora().items()})
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.trainable_state_dict()
        if set(state) != set(expected):
            missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
            raise ModelLoadError(
                f"recall state does not fit this model: missing {missing[:5]}, extra {extra[:5]}"
            )
        self.memory.load_state_dict({k: state[k] for k in self.memory.state_dict()})
        load_token_rows(self.reasoner, self.memory.tokens, state)
        with torch.no_grad():
            for name, p in self._lora().items():
                p.copy_(state[name])

    def save_pretrained(self, directory: str | Path) -> None:
        """What `RecallMemory.load(directory, model, tokenizer)` loads back: the recall weights and, with a
        LoRA, PEFT's adapter folder under `adapter/`."""
        self.memory.save(directory, self.reasoner)
        if isinstance(self.lm, PeftModel):
            self.lm.save_pretrained(str(Path(directory) / ADAPTER))
