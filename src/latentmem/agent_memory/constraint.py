"""Constrained decoding of manager operations: the model's output space is the operation format.

An untrained chat model asked for an operation writes prose ("The user has updated their fact to
Quito."), which parses as NOOP; a GRPO group of such outputs all score the same and give no gradient.
So the model policies (`prompted`, `rl`) decode under a constraint: per request, the only completions are

    ADD | NOOP | UPDATE id | DELETE id      (id: one of the memories shown), then EOS

each as the tokenizer writes that string, EOS appended. ADD and UPDATE carry no text: they store the new
fact, so the manager chooses the operation and the memory, not the wording (a 135M model that rewrites
facts mostly damages them). The rule lives in one place, `OperationConstraint.allowed` (a token trie per
request). `option_logprobs` applies it to the logits of every option at once (`mask`, `options`): the
GRPO learner samples its rollouts from those probabilities and the model policies take their mode
(`OptionScores.modes`), so training and inference read the same distribution; `processors` applies the
same rule to `model.generate` through transformers' `PrefixConstrainedLogitsProcessor` (token-by-token
constrained sampling, which draws from exactly that distribution: tested).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessorList,
    PrefixConstrainedLogitsProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from latentmem.agent_memory.errors import AgentMemoryError
from latentmem.agent_memory.operations import Operation
from latentmem.decoding import positions_from_valid


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
        self.options: list[list[tuple[str, tuple[int, ...]]]] = []  # per request: (line, its ids + EOS)
        longest = 0
        for ids in shown_ids:
            table: dict[tuple[int, ...], set[int]] = {}
            self.options.append([])
            for option in operation_options(ids):
                seq = (*tokenizer.encode(option, add_special_tokens=False), self.eos)
                self.options[-1].append((option, seq))
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

    def mask(
        self, completion: torch.Tensor, vocab_size: int, requests: Sequence[int] | None = None
    ) -> torch.Tensor:
        """(B, N, V) bool: the tokens allowed at each position of the (B, N) `completion` ids, i.e. the
        logits the processor kept when that completion was generated. Completion b is of request
        `requests[b]` (default: b), so that several completions may share a request."""
        B, N = completion.shape
        requests = list(range(len(self))) if requests is None else list(requests)
        if len(requests) != B or any(not 0 <= r < len(self) for r in requests):
            raise AgentMemoryError(f"constraint over {len(self)} requests applied to {B} completions")
        out = torch.zeros(B, N, vocab_size, dtype=torch.bool, device=completion.device)
        rows = completion.tolist()
        for b, r in enumerate(requests):
            for t in range(N):
                out[b, t, self.allowed(r, rows[b][:t])] = True
        return out

    def logprobs(
        self,
        logits: torch.Tensor,
        completion: torch.Tensor,
        temperature: float,
        requests: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """(B, N) log-probs of the `completion` tokens under softmax over the allowed tokens of
        `logits` (B, N, V) / `temperature`: the distribution the constrained rollout sampled from
        (`requests` as in `mask`). A token outside the allowed set (padding after EOS) gets -inf;
        callers mask those positions."""
        allowed = self.mask(completion, logits.shape[-1], requests)
        masked = logits.float().masked_fill(~allowed, float("-inf"))
        return (masked / temperature).log_softmax(-1).gather(2, completion[:, :, None]).squeeze(2)


@dataclass
class OptionScores:
    """Every allowed operation of B requests, flattened: `lines[j]` of request `row[j]`, with its
    sequence log-prob `logp[j]` (grad attached) and its token count `tokens[j]` (EOS included)."""

    lines: list[str]
    row: torch.Tensor  # (M,) long
    logp: torch.Tensor  # (M,)
    tokens: torch.Tensor  # (M,)

    def of_row(self, b: int) -> tuple[list[int], torch.Tensor]:
        """The flat indices of request `b`'s options and their probabilities (detached, summing to 1)."""
        idx = (self.row == b).nonzero().flatten()
        probs = self.logp[idx].detach().exp()
        return idx.tolist(), probs / probs.sum()

    def modes(self) -> list[str]:
        """Each request's most probable operation line: the exact mode of its operation distribution
        (token-by-token greedy can miss it when two options share a first token, e.g. `UPDATE 3` and
        `UPDATE 12`, and the likelier prefix leads to the less likely whole)."""
        out = []
        for b in range(int(self.row.max()) + 1 if len(self.row) else 0):
            idx, probs = self.of_row(b)
            out.append(self.lines[idx[int(probs.argmax())]])
        return out


def option_logprobs(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    constraint: OperationConstraint,
    temperature: float,
) -> OptionScores:
    """The log-prob of each operation `constraint` allows each request, under token-by-token
    softmax(z / temperature) over the allowed tokens (the distribution constrained sampling draws from,
    so sampling from these is a rollout): one prefill of the B (left-padded) prompts, its KV cache then
    shared by the M options, a handful of tokens each, instead of a prefill per sampled completion."""
    valid = prompt_mask.bool()
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=positions_from_valid(valid),
        use_cache=True,
    )
    pairs = [(b, line, seq) for b, opts in enumerate(constraint.options) for line, seq in opts]
    device = prompt_ids.device
    row = torch.tensor([b for b, _, _ in pairs], device=device)
    width = max(len(seq) for _, _, seq in pairs)
    tokens = torch.full((len(pairs), width), constraint.eos, device=device)
    for j, (_, _, seq) in enumerate(pairs):
        tokens[j, : len(seq)] = torch.tensor(seq, device=device)
    lengths = torch.tensor([len(seq) for _, _, seq in pairs], device=device)
    keep = torch.arange(width, device=device)[None] < lengths[:, None]
    cache = out.past_key_values
    cache.batch_select_indices(row)
    logits = model(
        input_ids=tokens,
        attention_mask=torch.cat([prompt_mask[row], keep.long()], 1),
        position_ids=valid.sum(1)[row][:, None] + torch.arange(width, device=device)[None],
        past_key_values=cache,
    ).logits
    step_logits = torch.cat([out.logits[row, -1:], logits[:, :-1]], 1)  # (M, width, V): predicts token t
    logp = constraint.logprobs(step_logits, tokens, temperature, row.tolist())
    return OptionScores([line for _, line, _ in pairs], row, logp.masked_fill(~keep, 0.0).sum(1), lengths)
