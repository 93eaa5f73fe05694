"""Generation with autoregressive recall: `<recall>` -> memory head -> injected `<|memory_pad|>` -> decode.

One loop on the shared `KVDecoder` and `select_next`. Every step feeds one slot per row:

- a row whose last token was not `<recall>` takes the next token chosen from its token logits;
- a row whose last token was `<recall>` (generated, or the prompt's last token) takes a memory instead:
  the hidden state at `<recall>` goes through the memory head, the memory logits through the same
  sampling processors as tokens (`memory_sampling`), and the chosen memory's projected vector becomes the
  input embedding of a forced `<|memory_pad|>`.

Rows that recall and rows that do not share the step, so the batch stays rectangular and the KV cache is
kept: no row waits, nothing is recomputed. Finished rows feed invalid slots (masked, positions frozen).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentmem.chat import render_chat
from latentmem.config import require
from latentmem.decoding import COMPACT_THRESHOLD, KVDecoder
from latentmem.recall.bank import MemoryBank
from latentmem.recall.errors import NoBankError, RecallError
from latentmem.recall.inject import inject
from latentmem.recall.memory import RecallMemory
from latentmem.recall.tokens import MEMORY_PAD, RECALL
from latentmem.sampling import SamplingConfig, select_next


@dataclass
class RecallEvent:
    """One recall: at generated-token index `step` (where the `<|memory_pad|>` sits) memory `memory_id`."""

    step: int
    memory_id: int
    logit: float
    text: str


@dataclass
class RecallOutput:
    """Per sequence: generated token ids (pads after EOS dropped), their text, and the recalls made."""

    token_ids: list[list[int]]
    texts: list[str]
    recalls: list[list[RecallEvent]]
    prompt_tokens: list[int] = field(default_factory=list)
    seconds: float = 0.0


class RecallGenerator:
    """Batched generation with a memory head over a `MemoryBank`.

    Args:
        model, tokenizer: a causal LM with the recall tokens attached (`RecallMemory.attach` / `load`).
        memory: its `RecallMemory`.
        bank: the memories to recall from; `None` makes a `<recall>` an error (`NoBankError`).
        sampling: token selection; memory_sampling: memory selection (default: greedy; no
            `repetition_penalty`, which needs a token history that memory logits do not have).
        recall: "model" lets the model emit `<recall>`; "never" masks it out of the token logits.
        full_max, candidates: see `MemoryHead.score_bank`.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        memory: RecallMemory,
        bank: MemoryBank | None = None,
        *,
        sampling: SamplingConfig | None = None,
        memory_sampling: SamplingConfig | None = None,
        recall: Literal["model", "never"] = "model",
        full_max: int = 4096,
        candidates: int = 64,
    ) -> None:
        self.model, self.tokenizer, self.memory, self.bank = model, tokenizer, memory, bank
        self.sampling = sampling or SamplingConfig()
        self.memory_sampling = memory_sampling or SamplingConfig()
        require(
            self.memory_sampling.repetition_penalty == 1.0,
            "memory_sampling.repetition_penalty",
            f"must be 1.0, got {self.memory_sampling.repetition_penalty}: the penalty reads a token history, "
            "and memory logits have none",
        )
        self.recall, self.full_max, self.candidates = recall, full_max, candidates
        if bank is not None:
            bank.require_dim(memory.memory_dim, "the memory head's query")

    def render(self, questions: Sequence[str], *, recall_first: bool = False) -> list[str]:
        """Chat prompts for `questions`; `recall_first` appends `<recall>` so the reply starts with a recall."""
        return [render_chat(self.tokenizer, q) + (RECALL if recall_first else "") for q in questions]

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        generator: torch.Generator | None = None,
        prompt_memories: Sequence[int] | None = None,
    ) -> RecallOutput:
        """Generate a continuation of each prompt (already chat-rendered text; see `render`).

        `prompt_memories`: one bank id per prompt, whose projected vector fills that prompt's own
        `memory.slots` `<|memory_pad|>` (xRAG-style injection, `latentmem.recall.xrag`): the memory is read
        in the prompt, without a `<recall>`."""
        start_time = time.perf_counter()
        device = self.model.device
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(
            device
        )
        tok = self.memory.tokens
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        B = enc.input_ids.shape[0]
        dec = KVDecoder(self.model)
        last = enc.input_ids[:, -1]  # left padding: the last column holds every row's last prompt token
        # hidden states only where the memory head will read one: after a slot that fed `<recall>`
        embeds = dec.embed(enc.input_ids)
        if prompt_memories is not None:
            embeds = self._with_prompt_memories(enc.input_ids, enc.attention_mask, embeds, prompt_memories)
        out = dec.prefill(embeds, enc.attention_mask, hidden=bool((last == tok.recall_id).any()))
        done = torch.zeros(B, dtype=torch.bool, device=device)
        generated: list[torch.Tensor] = []
        # what the repetition penalty reads: the prompt (its padding masked out), then the tokens fed so far
        T = enc.input_ids.shape[1]
        history = torch.cat([enc.input_ids, enc.input_ids.new_full((B, max_new_tokens), pad)], 1)
        history_mask = torch.cat([enc.attention_mask, enc.attention_mask.new_ones(B, max_new_tokens)], 1)
        recalls: list[list[RecallEvent]] = [[] for _ in range(B)]
        # an m-slot memory (`memory.slots`) fills m consecutive forced pads: its projected embeddings wait
        # in `slot_embeds` (B, m, D) and `pending` counts the slots each row has still to feed
        m = self.memory.slots
        pending = torch.zeros(B, dtype=torch.long, device=device)
        embed_dtype = self.model.get_input_embeddings().weight.dtype
        slot_embeds = torch.zeros(B, m, self.memory.hidden_size, device=device, dtype=embed_dtype)
        for step in range(max_new_tokens):
            logits = out.logits[:, -1]
            if self.recall == "never":
                logits = logits.clone()
                logits[:, tok.recall_id] = float("-inf")
            nxt = select_next(
                logits, self.sampling, generator, history[:, : T + step], history_mask[:, : T + step]
            )
            emb = dec.embed(nxt[:, None])  # (B, 1, D)
            recalling = (last == tok.recall_id) & ~done
            if recalling.any():
                rows = recalling.nonzero().squeeze(-1)
                memory_ids, chosen_logits = self._choose(out.hidden[rows, -1], generator)
                projected = self.memory.projector(self._vectors(memory_ids))  # (R, m, D)
                slot_embeds[rows] = projected.to(embed_dtype)
                pending[rows] = m
                for r, mid, lg in zip(
                    rows.tolist(), memory_ids.tolist(), chosen_logits.tolist(), strict=True
                ):
                    recalls[r].append(RecallEvent(step, mid, lg, self.bank.text(mid)))
            feeding = (pending > 0) & ~done
            if feeding.any():
                emb = inject(emb, feeding[:, None], slot_embeds[feeding, m - pending[feeding]])
                nxt = nxt.masked_fill(feeding, tok.pad_id)
                pending = pending - feeding.long()
            nxt = nxt.masked_fill(done, pad)
            generated.append(nxt)
            history[:, T + step] = nxt
            done = done | (nxt == eos)
            if done.all():
                break
            out = dec.extend(emb, valid=~done[:, None], hidden=bool((nxt == tok.recall_id).any()))
            last = nxt
            dec.compact(COMPACT_THRESHOLD)  # finished rows leave a dead slot behind at every step
        ids = torch.stack(generated, 1).tolist() if generated else [[] for _ in range(B)]
        token_ids = [_until_eos(row, eos) for row in ids]
        texts = self.tokenizer.batch_decode(token_ids, skip_special_tokens=False)
        return RecallOutput(
            token_ids=token_ids,
            texts=[_strip_special(t, self.tokenizer) for t in texts],
            recalls=recalls,
            prompt_tokens=enc.attention_mask.sum(-1).tolist(),
            seconds=time.perf_counter() - start_time,
        )

    def _with_prompt_memories(
        self, ids: torch.Tensor, mask: torch.Tensor, embeds: torch.Tensor, memory_ids: Sequence[int]
    ) -> torch.Tensor:
        """`embeds` (B, T, D) with each row's prompt pads holding its memory's projection (m pads a row)."""
        slots = (ids == self.memory.tokens.pad_id) & mask.bool()
        m = self.memory.slots
        if len(memory_ids) != len(ids) or bool((slots.sum(1) != m).any()):
            raise RecallError(
                f"prompt_memories needs one memory id per prompt ({len(ids)}, got {len(memory_ids)}) and "
                f"each prompt to hold exactly {m} {MEMORY_PAD} (it has {slots.sum(1).tolist()})"
            )
        if self.bank is None:
            raise NoBankError("prompt_memories are bank ids; pass bank=MemoryBank(...) to the generator")
        vectors = self._vectors(torch.tensor(list(memory_ids)))
        return inject(embeds, slots, self.memory.projector(vectors))

    def _choose(
        self, hidden: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory ids (R,) and their logits (R,) for `<recall>` hidden states (R, D)."""
        if self.bank is None:
            raise NoBankError(
                "a sequence emitted <recall> but the generator has no memory bank; pass bank=MemoryBank(...) "
                "or recall='never'"
            )
        logits, ids = self.memory.head.score_bank(
            hidden, self.bank, full_max=self.full_max, candidates=self.candidates
        )
        pick = select_next(logits, self.memory_sampling, generator)  # (R,) column in the candidates
        rows = torch.arange(len(pick), device=pick.device)
        return ids[rows, pick], logits[rows, pick]

    def _vectors(self, memory_ids: torch.Tensor) -> torch.Tensor:
        """Unit vectors (R, M) of the chosen memories."""
        return torch.stack([torch.from_numpy(self.bank.get(int(i)).vector) for i in memory_ids]).to(
            self.model.device
        )


def _until_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row


def _strip_special(text: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """Decoded text without pad/EOS tokens but keeping the recall markers visible."""
    for t in (tokenizer.pad_token, tokenizer.eos_token):
        if t:
            text = text.replace(t, "")
    return text
