"""Chat-model text generation for the manager and the answer agent, batched: greedy free text, and the
most probable operation of the constrained format (`constraint.py`)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentmem.agent_memory.constraint import OperationConstraint, option_logprobs
from latentmem.chat import render_chat


@dataclass
class ChatGenerator:
    """A chat model (a PEFT model too) and its tokenizer (left padding, as `load_model` returns it)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    batch_size: int = 8

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) input ids and attention mask of the chat-templated prompts, left-padded."""
        texts = [render_chat(self.tokenizer, p) for p in prompts]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return enc["input_ids"].to(self.model.device), enc["attention_mask"].to(self.model.device)

    @torch.no_grad()
    def generate_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int
    ) -> torch.Tensor:
        """(B, N) greedy completion ids, padded with pad after EOS."""
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,  # unset the model's sampling defaults: greedy exactly
            top_k=None,
            top_p=None,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return out[:, input_ids.shape[1] :]

    def decode(self, completion_ids: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in completion_ids]

    def greedy(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """The greedy completion of each prompt, in batches of `batch_size`."""
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            ids, mask = self.encode(prompts[start : start + self.batch_size])
            out += self.decode(self.generate_ids(ids, mask, max_new_tokens))
        return out

    @torch.no_grad()
    def operations(self, prompts: Sequence[str], allowed_ids: Sequence[Collection[int]]) -> list[str]:
        """The most probable operation line of each manager prompt among those over the ids its
        operations may name (`allowed_ids`, one collection per prompt: a model policy's prompt numbers,
        `manager.prompt_numbers`): the mode of the distribution GRPO trains (`option_logprobs` at
        temperature 1), in batches of `batch_size`."""
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            ids, mask = self.encode(prompts[start : start + self.batch_size])
            constraint = OperationConstraint(self.tokenizer, allowed_ids[start : start + self.batch_size])
            out += option_logprobs(self.model, ids, mask, constraint, temperature=1.0).modes()
        return out
