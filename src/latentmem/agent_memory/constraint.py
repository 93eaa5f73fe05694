"""Constrained decoding of manager operations: the model's output space is the operation format.

An untrained chat model asked for an operation writes prose ("The user has updated their fact to
Quito."), which parses as NOOP; a GRPO group of such outputs all score the same and give no gradient.
So the model policies (`prompted`, `rl`) decode under a constraint: per request, the only completions are

    ADD | NOOP | UPDATE id | DELETE id      (id: one of the memories shown), then EOS

each as the tokenizer writes that string, EOS appended. ADD and UPDATE carry no text: they store the new
fact, so the manager chooses the operation and the memory, not the wording (a 135M model that rewrites
facts mostly damages them). The rule lives in one place, `OperationConstraint.allowed` (a token trie per
request); generation applies it through transformers' `PrefixConstrainedLogitsProcessor`, and the GRPO
learner applies the same rule to its recomputed logits (`mask`), so the rollout's distribution and the
learner's are one: before the first update their ratio is 1.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from transformers import LogitsProcessorList, PrefixConstrainedLogitsProcessor, PreTrainedTokenizerBase

from latentmem.agent_memory.errors import AgentMemoryError
from latentmem.agent_memory.operations import Operation


def operation_options(shown_ids: Collection[int]) -> list[str]:
    """Every operation line allowed over the memories `shown_ids`, in the constrained format."""
    ops = [Operation("ADD"), Operation("NOOP")]
    for memory_id in sorted(shown_ids):
        ops += [Operation("UPDATE", memory_id), Operation("DELETE", memory_id)]
    return [op.format() for op in ops]


class OperationConstraint:
    """The allowed next tokens of B requests' completions (module docstring), row b over `shown_ids[b]`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, shown_ids: Sequence[Collection[int]]) -> None:
        if tokenizer.eos_token_id is None:
            raise AgentMemoryError("constrained operations need a tokenizer with an EOS token")
        self.eos = int(tokenizer.eos_token_id)
        self._next: list[dict[tuple[int, ...], list[int]]] = []
        longest = 0
        for ids in shown_ids:
            table: dict[tuple[int, ...], set[int]] = {}
            for option in operation_options(ids):
                seq = (*tokenizer.encode(option, add_special_tokens=False), self.eos)
                longest = max(longest, len(seq))
                for i, token in enumerate(seq):
                    table.setdefault(seq[:i], set()).add(token)
            self._next.append({prefix: sorted(tokens) for prefix, tokens in table.items()})
        self.max_new_tokens = longest  # every option, EOS included, fits

    def __len__(self) -> int:
        return len(self._next)

    def allowed(self, row: int, prefix: Sequence[int]) -> list[int]:
        """The tokens row `row` may generate after its completion `prefix`; after a finished option
        (EOS, then padding) only EOS, which generation replaces by padding and the loss never counts."""
        return self._next[row].get(tuple(prefix), [self.eos])

    def processors(self, prompt_len: int) -> LogitsProcessorList:
        """The constraint for `model.generate` on a batch of prompts `prompt_len` wide (left-padded: the
        completion of every row starts there), one sequence per request (no beams)."""

        def allowed(row: int, sequence: torch.Tensor) -> list[int]:
            return self.allowed(row, sequence[prompt_len:].tolist())

        return LogitsProcessorList([PrefixConstrainedLogitsProcessor(allowed, num_beams=1)])

    def mask(self, completion: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """(B, N, V) bool: the tokens allowed at each position of the (B, N) `completion` ids, i.e. the
        logits the processor kept when that completion was generated."""
        B, N = completion.shape
        if len(self) != B:
            raise AgentMemoryError(f"constraint over {len(self)} requests applied to {B} completions")
        out = torch.zeros(B, N, vocab_size, dtype=torch.bool, device=completion.device)
        rows = completion.tolist()
        for b in range(B):
            for t in range(N):
                out[b, t, self.allowed(b, rows[b][:t])] = True
        return out

    def logprobs(self, logits: torch.Tensor, completion: torch.Tensor, temperature: float) -> torch.Tensor:
        """(B, N) log-probs of the `completion` tokens under softmax over the allowed tokens of
        `logits` (B, N, V) / `temperature`: the distribution the constrained rollout sampled from. A
        token outside the allowed set (padding after EOS) gets -inf; callers mask those positions."""
        masked = logits.float().masked_fill(~self.mask(completion, logits.shape[-1]), float("-inf"))
        return (masked / temperature).log_softmax(-1).gather(2, completion[:, :, None]).squeeze(2)
