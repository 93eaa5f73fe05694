"""Batched generation with latent memory, on one KV cache per model.

Per step: pick the next token for every row (shared sampling processors), feed it to the reasoner (one
cached step, like plain `generate`), and at rows whose token is a candidate delimiter ask the trigger. Rows
that insert get K latents written by the weaver and appended to the reasoner's cache; the other rows get K
invalid slots in the same call (attention-mask 0, positions unchanged), so the cache stays rectangular and
nothing is recomputed. The weaver keeps its own cache of the token stream: at an insertion it reads only
the tokens new since its last call plus its K query slots, then forgets the query slots (crop).

The insertion rule is the one in `insertion.py`, which the training forward uses too; a test checks that
training forward and generation assign the same log-probabilities to the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from latentmem.config import Config, require
from latentmem.decoding import KVDecoder, pad_rows
from latentmem.errors import LatentMemError
from latentmem.memgen.insertion import InsertionPlan
from latentmem.sampling import SamplingConfig, draw, process_logits


@dataclass
class GenerationConfig(Config):
    max_new_tokens: int = 128
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    trigger_sample: bool | None = (
        None  # learned trigger: Bernoulli draws (True) or threshold; None = sampling.do_sample
    )
    stop_on_eos: bool = True

    def validate(self) -> None:
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")


@dataclass
class GenerationResult:
    """sequences (B, N): generated tokens, pad after EOS. lengths (B,): tokens up to and including EOS.
    logprobs (B, N) float32: each token's log-probability under the distribution it was selected from,
    log_softmax(process_logits(z)) with z the reasoner's logits at that step (after any latents) and the
    processors of `config.sampling`: sampled, repetition penalty then temperature, top-k, top-p, min-p;
    greedy, the repetition penalty only, so by default the model's own log softmax(z). 0 after EOS.
    insertions: per row, the generated-token indices after which inference latents were inserted.
    plan: the same insertion points as indices into cat([input_ids, sequences], 1), with the trigger's
    candidates and decisions, ready for `LatentMemoryModel.forward(..., plan=...)`.
    trigger_probs (B, C): the trigger's probability at each candidate of `plan`."""

    sequences: torch.Tensor
    logprobs: torch.Tensor
    lengths: torch.Tensor
    insertions: list[list[int]]
    plan: InsertionPlan
    trigger_probs: torch.Tensor

    def completion_mask(self) -> torch.Tensor:
        """(B, N) bool: the generated tokens that count (up to and including EOS)."""
        n = self.sequences.shape[1]
        return torch.arange(n, device=self.sequences.device)[None, :] < self.lengths[:, None]


# Called with (step, latents (B, K, D), rows (B,) bool) at every block of latents, before the reasoner reads
# it: step = -1 for the prompt block, else the index of the generated token the block follows; `rows` are
# the rows that insert there (the other rows' latents are unused). Returns None to insert the block as
# woven, or (latents (B, K, D), keep (B, K) bool): what to insert instead, and which slots to insert at all
# (a dropped slot is skipped, as if the weaver had written one latent fewer). Analysis and ablations use it.
LatentHook = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]


class _Weaver:
    """The weaver's cached view of the token stream: tokens wait in `pending` until the next insertion."""

    def __init__(self, model) -> None:
        self.model = model
        self.decoder = KVDecoder(model.weaver_lm)
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (inputs (B, n, D_w), valid (B, n))

    def push(self, weaver_inputs: torch.Tensor, valid: torch.Tensor) -> None:
        """Queue weaver-space inputs (B, n, D_w) with their validity (B, n)."""
        self.pending.append((weaver_inputs, valid))

    def weave(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Latents (B, K, D_r) for rows `rows` (B,) bool (other rows' output is unused)."""
        w_in = torch.cat([e for e, _ in self.pending], dim=1)
        valid = torch.cat([v for _, v in self.pending], dim=1)
        self.pending.clear()
        B, K = w_in.shape[0], queries.shape[0]
        x = torch.cat([w_in, queries.to(w_in.dtype)[None].expand(B, -1, -1)], dim=1)
        keep = self.decoder.length + w_in.shape[1]
        out = self.decoder.extend(x, torch.cat([valid, rows[:, None].expand(B, K)], dim=1), logits_to_keep=0)
        self.decoder.crop(keep)  # the query slots are never seen again
        return self.model.to_latents(out.hidden[:, -K:])


def _eos_ids(model) -> torch.Tensor:
    ids = {model.tokenizer.eos_token_id}
    gen_eos = model.reasoner.generation_config.eos_token_id
    ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return torch.tensor(sorted(i for i in ids if i is not None), device=model.device)


def _check_inputs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Refuse inputs that would otherwise fail deep inside the model with an index or shape error."""
    if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise LatentMemError(
            f"input_ids: expected a non-empty (batch, length) tensor, got shape {tuple(input_ids.shape)}; "
            "for one prompt pass input_ids[None] and attention_mask[None]"
        )
    if attention_mask.shape != input_ids.shape:
        raise LatentMemError(
            f"attention_mask: shape {tuple(attention_mask.shape)} differs from input_ids' "
            f"{tuple(input_ids.shape)}; pass the mask the tokenizer returned with these ids"
        )
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise LatentMemError(f"input_ids: expected integer token ids, got dtype {input_ids.dtype}")
    vocab = model.reasoner.get_input_embeddings().num_embeddings
    bad = (input_ids < 0) | (input_ids >= vocab)
    if bool(bad.any()):
        raise LatentMemError(
            f"input_ids: token id {int(input_ids[bad][0])} is outside the model's vocabulary of {vocab}; "
            "encode the prompts with the model's own tokenizer"
        )


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig | None = None,
    generator: torch.Generator | None = None,
    memory=None,
    latent_hook: LatentHook | None = None,
) -> GenerationResult:
    """Generate for a left-padded batch `input_ids`, `attention_mask` (B, T) with `model` (a
    LatentMemoryModel). Greedy or sampled per `config.sampling`; each row stops at EOS. `memory`: a
    `RetrievedMemory` the weaver reads before the prompt. `latent_hook`: sees (and may replace or drop)
    every block of latents before the reasoner reads it; see `LatentHook`."""
    cfg = config or GenerationConfig()
    mc = model.config
    trigger_sample = cfg.sampling.do_sample if cfg.trigger_sample is None else cfg.trigger_sample
    _check_inputs(model, input_ids, attention_mask)
    B, T = input_ids.shape
    model.check_generation_window(T, B, cfg.max_new_tokens, 0 if memory is None else memory.vectors.shape[1])
    device = model.device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    eos = _eos_ids(model)
    pad = model.tokenizer.pad_token_id
    reasoner = KVDecoder(model.reasoner)
    weaver = _Weaver(model)
    K_i = mc.inference_latents if mc.inserts_during_decoding else 0

    embeds = reasoner.embed(input_ids)
    w_in, w_mask = model.weaver_inputs(embeds, attention_mask, memory)
    weaver.push(w_in, w_mask.bool())
    with model.reasoner_mode():
        logits = reasoner.prefill(embeds, attention_mask).logits[:, -1]
    if mc.prompt_latents > 0:
        every_row = torch.ones(B, dtype=torch.bool, device=device)
        latents = weaver.weave(model.prompt_queries, every_row)
        logits = _insert(model, reasoner, latents, every_row, -1, latent_hook, logits)

    tokens, logprobs = [], []
    # what the repetition penalty reads: the prompt (its padding masked out), then the tokens generated so far
    history = torch.cat([input_ids, input_ids.new_full((B, cfg.max_new_tokens), pad)], 1)
    history_mask = torch.cat([attention_mask, attention_mask.new_ones(B, cfg.max_new_tokens)], 1)
    # per step (B,) tensors of the trigger's candidates; kept as tensors so a step never leaves torch
    steps_at: list[int] = []
    steps_cand, steps_count, steps_decide, steps_prob = [], [], [], []
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    lengths = torch.full((B,), cfg.max_new_tokens, dtype=torch.long, device=device)
    n_inserted = torch.zeros(B, dtype=torch.long, device=device)
    n_delims = torch.zeros(B, dtype=torch.long, device=device)
    for step in range(cfg.max_new_tokens):
        z = process_logits(logits, cfg.sampling, history[:, : T + step], history_mask[:, : T + step])
        tok = draw(z, cfg.sampling, generator).masked_fill(finished, pad)  # drawn from softmax(z) (B, V)
        lp = z.log_softmax(-1).gather(1, tok[:, None]).squeeze(1).masked_fill(finished, 0.0)
        tokens.append(tok)
        history[:, T + step] = tok
        logprobs.append(lp)
        if cfg.stop_on_eos:
            done_now = torch.isin(tok, eos) & ~finished
            lengths = torch.where(done_now, step + 1, lengths)
            finished |= done_now
        if step == cfg.max_new_tokens - 1 or bool(finished.all()):
            break
        alive = ~finished
        tok_embeds = reasoner.embed(tok[:, None])
        weaver.push(model.proj_in(tok_embeds), alive[:, None])
        with model.reasoner_mode():
            out = reasoner.extend(tok_embeds, alive[:, None])
        logits = out.logits[:, -1]
        if K_i == 0:
            continue
        is_delim = model.is_delimiter[tok] & alive
        n_delims += is_delim
        candidate = is_delim & (n_inserted < mc.max_inference_insertions)
        if not bool(candidate.any()):
            continue
        decide, probs = model.trigger.decide(
            out.hidden[:, -1], n_delims, sample=trigger_sample, generator=generator
        )
        insert = decide & candidate
        steps_at.append(step)
        steps_cand.append(candidate)
        steps_count.append(n_delims.clone())
        steps_decide.append(insert)
        steps_prob.append(probs)
        if not bool(insert.any()):
            continue
        latents = weaver.weave(model.inference_queries, insert)
        logits = _insert(model, reasoner, latents, insert, step, latent_hook, logits)
        n_inserted += insert

    sequences = torch.stack(tokens, 1)
    plan, probs = _plan_from_steps(
        T, mc.prompt_latents > 0, steps_at, steps_cand, steps_count, steps_decide, steps_prob, B, device
    )
    return GenerationResult(
        sequences=sequences,
        logprobs=torch.stack(logprobs, 1),
        lengths=torch.minimum(lengths, torch.tensor(sequences.shape[1], device=device)),
        insertions=[
            [c - T for c, d in zip(row, dec, strict=True) if d and c >= 0]
            for row, dec in zip(plan.candidates.tolist(), plan.decisions.tolist(), strict=True)
        ],
        plan=plan,
        trigger_probs=probs,
    )


def _insert(
    model,
    reasoner: KVDecoder,
    latents: torch.Tensor,
    rows: torch.Tensor,
    step: int,
    hook: LatentHook | None,
    logits: torch.Tensor,
) -> torch.Tensor:
    """Append one block of latents (B, K, D) for rows `rows` (B,) to the reasoner's cache; the next
    logits (B, V): the block's last kept slot's where a row keeps any, `logits` (before it) elsewhere."""
    keep = rows[:, None].expand_as(latents[..., 0])
    if hook is not None and (changed := hook(step, latents, rows)) is not None:
        latents, keep = changed[0].to(latents), keep & changed[1].to(keep.device)
        # Dropped slots become invalid (mask 0, no position), exactly as if absent. Kept slots move to the
        # block's end, in order, so the block's last slot is a kept one whenever the row keeps any.
        order = keep.long().argsort(dim=1, stable=True)
        latents = latents.gather(1, order[..., None].expand_as(latents))
        keep = keep.gather(1, order)
    with model.reasoner_mode():
        after = reasoner.extend(latents, keep).logits[:, -1]
    return torch.where(keep.any(1)[:, None], after, logits)


def _plan_from_steps(
    T: int, prompt_block: bool, at: list[int], cand, count, decide, prob, B: int, device
) -> tuple[InsertionPlan, torch.Tensor]:
    """Gather the per-step candidate records (steps `at`, each a (B,) tensor) into an InsertionPlan over
    cat([prompt, generated], 1), and the trigger's probability at each candidate (B, C)."""
    rows: list[list[tuple[int, int, int, float]]] = [[] for _ in range(B)]
    if at:
        cand, count, decide, prob = (torch.stack(x, 1).tolist() for x in (cand, count, decide, prob))
        for r in range(B):
            rows[r] = [
                (T + s, count[r][k], int(decide[r][k]), prob[r][k]) for k, s in enumerate(at) if cand[r][k]
            ]
    plan = InsertionPlan(
        prompt_end=torch.full((B,), T - 1 if prompt_block else -1, dtype=torch.long),
        candidates=pad_rows([[c[0] for c in row] for row in rows], -1),
        delimiter_count=pad_rows([[c[1] for c in row] for row in rows], 0),
        decisions=pad_rows([[c[2] for c in row] for row in rows], 0).bool(),
    )
    return plan.to(device), pad_rows([[c[3] for c in row] for row in rows], 0, dtype=torch.float32).to(device)
