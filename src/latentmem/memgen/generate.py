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
from latentmem.decoding import COMPACT_THRESHOLD, DecodeOut, KVDecoder, pad_rows
from latentmem.errors import LatentMemError
from latentmem.memgen.insertion import InsertionPlan
from latentmem.memgen.prompt_gate import prompt_features
from latentmem.sampling import SamplingConfig, draw, process_logits


@dataclass
class GenerationConfig(Config):
    max_new_tokens: int = 128
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    trigger_sample: bool | None = (
        None  # learned trigger: Bernoulli draws (True) or threshold; None = sampling.do_sample
    )
    stop_on_eos: bool = True
    # compact a KV cache (`KVDecoder.compact`) once that would shorten it by more than this share; None = never
    compact_threshold: float | None = COMPACT_THRESHOLD

    def validate(self) -> None:
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(
            self.compact_threshold is None or 0.0 <= self.compact_threshold < 1.0,
            "compact_threshold",
            f"must be in [0, 1) or null, got {self.compact_threshold}",
        )


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
    trigger_probs (B, C): the trigger's probability at each candidate of `plan`.
    served (B,) bool: the rows the prompt gate let the weaver serve (every row without a fitted gate); the
    others got no latents at all: the plain reasoner answered them."""

    sequences: torch.Tensor
    logprobs: torch.Tensor
    lengths: torch.Tensor
    insertions: list[list[int]]
    plan: InsertionPlan
    trigger_probs: torch.Tensor
    served: torch.Tensor

    def completion_mask(self) -> torch.Tensor:
        """(B, N) bool: the generated tokens that count (up to and including EOS)."""
        n = self.sequences.shape[1]
        return torch.arange(n, device=self.sequences.device)[None, :] < self.lengths[:, None]


# Called with (step, latents (B, K, D), rows (B,) bool) at every block of latents, before the reasoner reads
# it: step = -1 for the prompt block, else the index of the generated token the block follows; `rows` are
# the rows that insert there (the other rows' latents are unused: zeros). Returns None to insert the block as
# woven, or (latents (B, K, D), keep (B, K) bool): what to insert instead, and which slots to insert at all
# (a dropped slot is skipped, as if the weaver had written one latent fewer). Analysis and ablations use it.
LatentHook = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]


class _Weaver:
    """The weaver's cached view of the token stream: a row's tokens wait in `pending` until that row
    next inserts (only its own latents ever read them)."""

    def __init__(self, model, compact_threshold: float | None) -> None:
        self.model = model
        self.decoder = KVDecoder(model.weaver_lm)
        self.compact_threshold = compact_threshold
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (inputs (B, n, D_w), valid (B, n))

    def push(self, weaver_inputs: torch.Tensor, valid: torch.Tensor) -> None:
        """Queue weaver-space inputs (B, n, D_w) with their validity (B, n) bool."""
        self.pending.append((weaver_inputs, valid))

    def weave(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Latents (B, K, D_r) for rows `rows` (B,) bool; zeros in the other rows, which the weaver skips.

        One forward: the inserting rows read their pending tokens and then the K query slots (cropped right
        after); the other rows' tokens stay pending, as invalid slots of this pass, until they insert
        (`extend_rows`). Why: reading every row's tokens first and the queries in a second pass costs two
        forwards per insertion step, most of a step's cost on a small model, and reads tokens of rows that
        may never insert. A token is read once by its row either way, in order, at the position its row's
        valid slots give it, so the latents are the same."""
        w_in = torch.cat([e for e, _ in self.pending], dim=1)
        valid = torch.cat([v for _, v in self.pending], dim=1).bool()
        B, K = w_in.shape[0], queries.shape[0]
        index = rows.nonzero().squeeze(1)  # (R,) the inserting rows
        mine = valid[index]
        # the columns an inserting row still has to read start at the first one any of them has
        start = int(mine.any(0).long().argmax()) if bool(mine.any()) else w_in.shape[1]
        q = queries.to(w_in.dtype)[None].expand(len(index), -1, -1)
        fed = w_in.shape[1] - start
        keep = self.decoder.length + fed
        inputs = torch.cat([w_in[index, start:], q], dim=1)
        inputs_valid = torch.cat([mine[:, start:], mine.new_ones(len(index), K)], dim=1)
        if bool(rows.all()):  # (the prompt's weave: the cache may still be empty)
            out = self.decoder.extend(inputs, inputs_valid, logits_to_keep=0, hidden=True)
        else:
            out = self.decoder.extend_rows(index, inputs, inputs_valid, logits_to_keep=0, hidden=True)
        part = out.hidden[:, -K:]
        hidden = part.new_zeros(B, K, part.shape[-1]).index_copy(0, index, part)
        self.decoder.crop(keep)  # the query slots are never seen again
        waiting = valid.clone()
        waiting[index] = False  # read now
        left = waiting.any(0)
        if bool(left.any()):
            first = int(left.long().argmax())
            self.pending = [(w_in[:, first:], waiting[:, first:])]
        else:
            self.pending = []
        if self.compact_threshold is not None:  # rows that read late, and finished rows, leave dead slots
            self.decoder.compact(self.compact_threshold)
        return self.model.to_latents(hidden)


class _Reasoner:
    """The reasoner's cache, fed token steps and blocks of latents, compacted as dead slots pile up."""

    def __init__(self, model, compact_threshold: float | None, hook: LatentHook | None) -> None:
        self.model = model
        self.decoder = KVDecoder(model.reasoner)
        self.compact_threshold, self.hook = compact_threshold, hook

    def prefill(self, embeds: torch.Tensor, attention_mask: torch.Tensor, hidden: bool = False) -> DecodeOut:
        """The prompt (B, T, D) with its mask (B, T): next-token logits (B, 1, V), and with `hidden` the
        last-layer states (B, T, D)."""
        with self.model.reasoner_mode():
            return self.decoder.prefill(embeds, attention_mask, hidden=hidden)

    def step(self, tok_embeds: torch.Tensor, alive: torch.Tensor, hidden: bool) -> DecodeOut:
        """One token per row (B, 1, D); finished rows (`alive` (B,) False) feed an invalid slot."""
        return self.feed(tok_embeds, alive[:, None], hidden)

    def feed(self, embeds: torch.Tensor, valid: torch.Tensor, hidden: bool = False) -> DecodeOut:
        """Tokens (B, n, D) with their validity (B, n) bool, appended to the cache in one call."""
        with self.model.reasoner_mode():
            return self.decoder.extend(embeds, valid, hidden=hidden)

    def insert(
        self, latents: torch.Tensor, rows: torch.Tensor, step: int, logits: torch.Tensor
    ) -> torch.Tensor:
        """Append one block of latents (B, K, D) for rows `rows` (B,) bool; the next logits (B, V): the
        block's last kept slot's where a row keeps any, `logits` (before it) elsewhere."""
        keep = rows[:, None].expand_as(latents[..., 0])
        if self.hook is not None and (changed := self.hook(step, latents, rows)) is not None:
            latents, keep = changed[0].to(latents), keep & changed[1].to(keep.device)
            # Dropped slots become invalid (mask 0, no position), exactly as if absent. Kept slots move to
            # the block's end, in order, so the block's last slot is a kept one whenever the row keeps any.
            order = keep.long().argsort(dim=1, stable=True)
            latents = latents.gather(1, order[..., None].expand_as(latents))
            keep = keep.gather(1, order)
        index = keep.any(1).nonzero().squeeze(1)  # (R,) the rows that insert: the block runs for them only
        if len(index) == 0:  # the hook dropped every slot: as if no block came
            return logits
        with self.model.reasoner_mode():
            after = self.decoder.extend_rows(index, latents[index], keep[index]).logits[:, -1]
        return logits.index_copy(0, index, after)

    def compact(self) -> None:
        if self.compact_threshold is not None:
            self.decoder.compact(self.compact_threshold)


class _Tokens:
    """The generated tokens, their log-probs, which rows are done, and the history the repetition
    penalty reads (the prompt with its padding masked out, then the tokens generated so far)."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, cfg: GenerationConfig):
        B, self.T = input_ids.shape
        N, self.cfg = cfg.max_new_tokens, cfg
        self.eos, self.pad = _eos_ids(model), model.tokenizer.pad_token_id
        self.history = torch.cat([input_ids, input_ids.new_full((B, N), self.pad)], 1)
        self.history_mask = torch.cat([attention_mask, attention_mask.new_ones(B, N)], 1)
        self.tokens: list[torch.Tensor] = []
        self.logprobs: list[torch.Tensor] = []
        self.finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        self.lengths = torch.full((B,), N, dtype=torch.long, device=input_ids.device)

    def pick(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The next token per row (B,) from next-token logits (B, V); pad in finished rows."""
        step, end = len(self.tokens), self.T + len(self.tokens)
        z = process_logits(logits, self.cfg.sampling, self.history[:, :end], self.history_mask[:, :end])
        tok = draw(z, self.cfg.sampling, generator).masked_fill(self.finished, self.pad)  # from softmax(z)
        self.logprobs.append(
            z.log_softmax(-1).gather(1, tok[:, None]).squeeze(1).masked_fill(self.finished, 0.0)
        )
        self.tokens.append(tok)
        self.history[:, end] = tok
        if self.cfg.stop_on_eos:
            done_now = torch.isin(tok, self.eos) & ~self.finished
            self.lengths = torch.where(done_now, step + 1, self.lengths)
            self.finished |= done_now
        return tok

    def result(
        self, plan: InsertionPlan, trigger_probs: torch.Tensor, served: torch.Tensor
    ) -> GenerationResult:
        sequences = torch.stack(self.tokens, 1)
        return GenerationResult(
            sequences=sequences,
            logprobs=torch.stack(self.logprobs, 1),
            lengths=self.lengths.clamp(max=sequences.shape[1]),
            insertions=[
                [c - self.T for c, d in zip(row, dec, strict=True) if d and c >= 0]
                for row, dec in zip(plan.candidates.tolist(), plan.decisions.tolist(), strict=True)
            ],
            plan=plan,
            trigger_probs=trigger_probs,
            served=served,
        )


class _TriggerLog:
    """The trigger at candidate delimiters: decisions, the insertion budget, and per step (B,) records of
    candidates, delimiter counts, decisions and probabilities, kept as tensors so a step never leaves torch."""

    def __init__(self, model, served: torch.Tensor, sample: bool, generator: torch.Generator | None) -> None:
        """`served` (B,) bool: the rows the prompt gate let in; the others are never candidates."""
        self.model, self.served, self.sample, self.generator = model, served, sample, generator
        B = len(served)
        device = model.device
        self.n_inserted = torch.zeros(B, dtype=torch.long, device=device)
        self.n_delims = torch.zeros(B, dtype=torch.long, device=device)
        self.at: list[int] = []
        self.records: list[tuple[torch.Tensor, ...]] = []  # per step (candidate, count, decision, prob)

    def candidates(self, tok: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """Count delimiters among the tokens `tok` (B,) about to be fed; (B,) bool: rows that may insert."""
        is_delim = self.model.is_delimiter[tok] & alive
        self.n_delims += is_delim
        return is_delim & self.served & (self.n_inserted < self.model.config.max_inference_insertions)

    def decide(self, step: int, candidate: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
        """(B,) bool: the candidate rows that insert, from the reasoner's last states `hidden` (B, D)
        (None for a rule policy, which does not read them)."""
        trigger = self.model.trigger
        h = hidden if hidden is not None else self.n_delims.new_zeros(len(candidate), 1).float()
        decide, probs = trigger.decide(h, self.n_delims, sample=self.sample, generator=self.generator)
        insert = decide & candidate
        self.at.append(step)
        self.records.append((candidate, self.n_delims.clone(), insert, probs))
        self.n_inserted += insert
        return insert

    def plan(self, T: int, prompt_block: bool, header: int) -> tuple[InsertionPlan, torch.Tensor]:
        """The records as an InsertionPlan over cat([prompt, generated], 1), and the trigger's probability
        at each candidate (B, C); the prompt block (served rows only) sits before the last `header` prompt
        tokens."""
        B = len(self.n_delims)
        rows: list[list[tuple[int, int, int, float]]] = [[] for _ in range(B)]
        if self.at:
            cand, count, decide, prob = (torch.stack(x, 1).tolist() for x in zip(*self.records, strict=True))
            for r in range(B):
                rows[r] = [
                    (T + s, count[r][k], int(decide[r][k]), prob[r][k])
                    for k, s in enumerate(self.at)
                    if cand[r][k]
                ]
        plan = InsertionPlan(
            prompt_end=torch.where(self.served.cpu() & prompt_block, T - 1 - header, -1),
            candidates=pad_rows([[c[0] for c in row] for row in rows], -1),
            delimiter_count=pad_rows([[c[1] for c in row] for row in rows], 0),
            decisions=pad_rows([[c[2] for c in row] for row in rows], 0).bool(),
        )
        probs = pad_rows([[c[3] for c in row] for row in rows], 0, dtype=torch.float32)
        return plan.to(self.model.device), probs.to(self.model.device)


def _eos_ids(model) -> torch.Tensor:
    ids = {model.tokenizer.eos_token_id}
    gen_eos = model.reasoner.generation_config.eos_token_id
    ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return torch.tensor(sorted(i for i in ids if i is not None), device=model.device)


def header_length(model, input_ids: torch.Tensor) -> int:
    """How many trailing prompt tokens follow the prompt latents: the assistant header's length when they
    go before it (`prompt_latents_at: before_header`), which every (left-padded) prompt must end with."""
    header = model.header_ids
    if not header:
        return 0
    expected = torch.tensor(header, device=input_ids.device)
    h = len(header)
    if input_ids.shape[1] <= h or not bool((input_ids[:, -h:] == expected).all()):
        raise LatentMemError(
            f"prompt_latents_at: every prompt must end with the assistant header {list(header)} (render it "
            "with the chat template's generation prompt, left-padded), or use prompt_latents_at: end"
        )
    return h


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
    cfg, mc = config or GenerationConfig(), model.config
    _check_inputs(model, input_ids, attention_mask)
    B, T = input_ids.shape
    model.check_generation_window(T, B, cfg.max_new_tokens, 0 if memory is None else memory.vectors.shape[1])
    input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
    reasoner = _Reasoner(model, cfg.compact_threshold, latent_hook)
    weaver = _Weaver(model, cfg.compact_threshold)
    tokens = _Tokens(model, input_ids, attention_mask, cfg)
    sample = cfg.sampling.do_sample if cfg.trigger_sample is None else cfg.trigger_sample
    # the trigger's head reads the reasoner's last state, which is asked for only at steps with a candidate
    reads_hidden = model.trigger.head is not None

    embeds = reasoner.decoder.embed(input_ids)
    # the prompt up to the prompt latents: all of it, or all but the assistant header that follows them
    cut = T - header_length(model, input_ids)
    gate = model.prompt_gate
    pre = reasoner.prefill(embeds[:, :cut], attention_mask[:, :cut], hidden=gate.active)
    logits = pre.logits[:, -1]
    served = (
        gate.admits(prompt_features(pre.hidden, attention_mask[:, :cut]))
        if gate.active
        else torch.ones(B, dtype=torch.bool, device=model.device)
    )
    # a row the gate turned away is the plain reasoner's: the weaver reads none of its tokens
    weaving = bool(served.any())
    trigger = _TriggerLog(model, served, sample, generator)
    inserts = weaving and mc.inference_latents > 0 and mc.inserts_during_decoding
    if weaving:
        w_in, w_valid = model.weaver_inputs(embeds[:, :cut], attention_mask[:, :cut], memory)
        weaver.push(w_in, w_valid.bool() & served[:, None])
    if weaving and mc.prompt_latents > 0:
        every_row = torch.ones(B, dtype=torch.bool, device=model.device)
        logits = reasoner.insert(weaver.weave(model.prompt_queries, every_row), served, -1, logits)
    if cut < T:
        if weaving:
            weaver.push(model.proj_in(embeds[:, cut:]), attention_mask[:, cut:].bool() & served[:, None])
        logits = reasoner.feed(embeds[:, cut:], attention_mask[:, cut:].bool()).logits[:, -1]
    for step in range(cfg.max_new_tokens):
        tok = tokens.pick(logits, generator)
        if step == cfg.max_new_tokens - 1 or bool(tokens.finished.all()):
            break
        alive = ~tokens.finished
        tok_embeds = reasoner.decoder.embed(tok[:, None])
        if inserts:
            weaver.push(model.proj_in(tok_embeds), (alive & served)[:, None])
        candidate = trigger.candidates(tok, alive) if inserts else None
        any_candidate = candidate is not None and bool(candidate.any())
        out = reasoner.step(tok_embeds, alive, hidden=any_candidate and reads_hidden)
        logits = out.logits[:, -1]
        if any_candidate:
            insert = trigger.decide(step, candidate, None if out.hidden is None else out.hidden[:, -1])
            if bool(insert.any()):
                latents = weaver.weave(model.inference_queries, insert)
                logits = reasoner.insert(latents, insert, step, logits)
        reasoner.compact()
    return tokens.result(*trigger.plan(T, mc.prompt_latents > 0, T - cut), served)


@torch.no_grad()
def prompt_gate_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, D) the prompt gate's features of a left-padded batch (B, T), from the prefill `generate` runs:
    the reasoner's last-layer states over the prompt up to where the prompt latents go."""
    _check_inputs(model, input_ids, attention_mask)
    input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
    cut = input_ids.shape[1] - header_length(model, input_ids)
    reasoner = _Reasoner(model, None, None)
    out = reasoner.prefill(reasoner.decoder.embed(input_ids[:, :cut]), attention_mask[:, :cut], hidden=True)
    return prompt_features(out.hidden, attention_mask[:, :cut])
