"""How much the reasoner attends to latent slots while it writes the answer, layer by layer.

Each traced example is replayed in one teacher-forced pass of the frozen reasoner over the sequence
generation built (prompt, the latents the reasoner read, each after its anchor, the generated tokens),
with eager attention so that the attention weights exist. For every answer token's slot (the last one
excepted: it predicts nothing the trace holds) the weights on prompt latents and on inference latents are
summed, then averaged over heads, slots and examples. Uniform attention over the slots a query can see
would give the `uniform` share; mass well above it means the reasoner seeks the latents out.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from latentmem.analyze.capture import ExampleTrace, Trace, encode_prompts
from latentmem.eval.task import Example, Task
from latentmem.memgen import LatentMemoryModel

PROMPT, INFERENCE = 1, 2  # slot kinds in a replayed sequence; 0 = token


@dataclass
class LatentAttention:
    """prompt, inference (L,): mean attention mass per layer on prompt / inference latents; uniform (): the
    share of latent slots among the slots each query sees, averaged the same way; queries: slots averaged."""

    prompt: torch.Tensor
    inference: torch.Tensor
    uniform: float
    queries: int

    def to_dict(self) -> dict:
        return {
            "prompt": [round(x, 5) for x in self.prompt.tolist()],
            "inference": [round(x, 5) for x in self.inference.tolist()],
            "uniform": round(self.uniform, 5),
            "queries": self.queries,
        }


@contextmanager
def _eager(model: torch.nn.Module) -> Iterator[None]:
    """Eager attention for the duration (the fused kernels return no weights), then the previous one."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def replay(
    model: LatentMemoryModel, prompt_ids: torch.Tensor, example: ExampleTrace
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reasoner's input for one example, as generation fed it: embeddings (1, S, D), the kind of each
    slot (S,), and the answer-token slots that count as queries (S,) bool."""
    embed = model.reasoner.get_input_embeddings()
    ids = torch.tensor(example.token_ids, device=model.device)
    tokens = embed(ids)  # (n, D)
    after: dict[int, torch.Tensor] = {b.step: b.inserted[b.kept].to(tokens) for b in example.blocks}
    pieces = [embed(prompt_ids.to(model.device))]
    kinds, queries = [0] * prompt_ids.shape[0], [False] * prompt_ids.shape[0]
    for i in range(-1, len(example.token_ids)):
        if i >= 0:
            pieces.append(tokens[i : i + 1])
            kinds.append(0)
            queries.append(i < len(example.token_ids) - 1)
        block = after.get(i)
        if block is not None and block.shape[0]:
            pieces.append(block)
            kinds += [PROMPT if i < 0 else INFERENCE] * block.shape[0]
            queries += [False] * block.shape[0]
    return torch.cat(pieces)[None], torch.tensor(kinds), torch.tensor(queries)


@torch.no_grad()
def latent_attention(
    model: LatentMemoryModel, task: Task, examples: Sequence[Example], trace: Trace
) -> LatentAttention | None:
    """Attention mass on latent slots per layer over `trace` (see the module docstring); None when no
    example has an answer token to average over."""
    total_p = total_i = None
    uniform, n = 0.0, 0
    with model.reasoner_mode() as reasoner, _eager(reasoner):
        for e in trace.examples:
            if e.n_tokens < 2:
                continue
            prompt_ids = encode_prompts(model, task, [examples[e.index].prompt])["input_ids"][0]
            x, kinds, queries = replay(model, prompt_ids, e)
            out = reasoner(inputs_embeds=x, output_attentions=True, logits_to_keep=1)
            att = torch.stack(out.attentions)[:, 0].float().mean(1)  # (layers, S, S), mean over heads
            att = att[:, queries.to(att.device)].cpu()  # (layers, Q, S)
            mass_p = att[..., kinds == PROMPT].sum(-1).sum(-1)  # (layers,)
            mass_i = att[..., kinds == INFERENCE].sum(-1).sum(-1)
            total_p = mass_p if total_p is None else total_p + mass_p
            total_i = mass_i if total_i is None else total_i + mass_i
            latent_before = torch.cumsum(kinds > 0, 0)[queries]  # latent slots each query sees
            seen = torch.arange(1, kinds.shape[0] + 1)[queries]
            uniform += float((latent_before / seen).sum())
            n += int(queries.sum())
    if total_p is None or total_i is None or n == 0:
        return None
    return LatentAttention(prompt=total_p / n, inference=total_i / n, uniform=uniform / n, queries=n)
