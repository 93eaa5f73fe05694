"""Where latents go, and how a sequence with latents is laid out: the one rule that training and
generation share.

Insertion points (DESIGN.md §1): after the last prompt token (K_p prompt latents), and after answer tokens
whose text ends in a delimiter (K_i inference latents each), at most `max_inference_insertions` per
sequence, when the trigger says so. A delimiter is a *candidate* only if another answer token follows it
and the row's insertion budget is not spent; generation applies exactly the same rule token by token.

The weaver reads the token stream only (never earlier latents): the query slots of insertion point j see
the tokens up to and including the delimiter and the earlier queries of their own block, nothing else sees
them. That choice lets generation keep a weaver KV cache (queries are cropped after each insertion) and lets
training compute every point's latents in one weaver pass with a block attention mask (`weaver_layout`).
The reasoner sees tokens with each block of latents spliced in after its anchor token (`reasoner_layout`);
position ids count the valid slots before each slot, in training and in generation alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from latentmem.decoding import IGNORE, pad_rows, positions_from_valid
from latentmem.errors import ConfigError, LatentMemError
from latentmem.memgen.config import MemGenConfig
from latentmem.memgen.trigger import rule_decides


def delimiter_table(
    tokenizer: PreTrainedTokenizerBase, delimiters: tuple[str, ...], vocab_rows: int
) -> torch.Tensor:
    """(vocab_rows,) bool: token ids whose decoded text ends in a delimiter. Computed once per model, so
    decoding never turns ids back into text to find a boundary. Special tokens are never delimiters."""
    n = min(len(tokenizer), vocab_rows)
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False)
    special = set(tokenizer.all_special_ids)
    table = torch.zeros(vocab_rows, dtype=torch.bool)
    for i, text in enumerate(texts):
        if i not in special and text.endswith(delimiters):
            table[i] = True
    return table


@dataclass
class InsertionPlan:
    """Insertion points of a batch, as indices into the token axis T of `input_ids`.

    prompt_end (B,): index of the last prompt token (prompt latents follow it); -1 = no prompt latents.
    candidates (B, C): candidate delimiter indices, -1 = padding; in order.
    delimiter_count (B, C): 1-based index of each candidate among its row's delimiters (every_n uses it).
    decisions (B, C): bool, latents inserted after that candidate.
    """

    prompt_end: torch.Tensor
    candidates: torch.Tensor
    delimiter_count: torch.Tensor
    decisions: torch.Tensor

    def points(self) -> torch.Tensor:
        """(B, P) indices after which inference latents go, ascending, -1 padded (P >= 0)."""
        chosen = torch.where(self.decisions, self.candidates, torch.full_like(self.candidates, -1))
        P = int(self.decisions.sum(-1).max()) if self.decisions.numel() else 0
        # valid indices first (ascending), padding after: sort on (invalid, index)
        key = torch.where(chosen >= 0, chosen, torch.full_like(chosen, torch.iinfo(torch.long).max))
        return chosen.gather(1, key.argsort(dim=1))[:, :P]

    def to(self, device: torch.device | str) -> InsertionPlan:
        return InsertionPlan(
            *(t.to(device) for t in (self.prompt_end, self.candidates, self.delimiter_count, self.decisions))
        )


def scan_candidates(
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    is_delimiter: torch.Tensor,
    cfg: MemGenConfig,
    header: Sequence[int] = (),
) -> tuple[torch.Tensor, list[list[int]], list[list[int]]]:
    """Prompt ends and candidate delimiters (with their delimiter counts) of a labelled batch.

    The answer region is where `labels != IGNORE` (-100). The prompt latents follow the prompt's last token,
    or with `header` (the assistant header's ids, `prompt_latents_at: before_header`) the token before it,
    which every prompt must end with. Mirrors generation: a delimiter answer token is a candidate when
    another answer token follows it; the insertion budget is applied by `plan_insertions`.
    """
    ids, labs, delim = input_ids.tolist(), labels.tolist(), is_delimiter.tolist()
    prompt_end, candidates, counts = [], [], []
    h = len(header)
    for b, (row_ids, row_labels) in enumerate(zip(ids, labs, strict=True)):
        answer = [i for i, lab in enumerate(row_labels) if lab != IGNORE]
        if (
            answer
            and cfg.prompt_latents > 0
            and h
            and tuple(row_ids[answer[0] - h : answer[0]]) != tuple(header)
        ):
            raise LatentMemError(
                f"prompt_latents_at: row {b}'s prompt does not end with the assistant header {list(header)}; "
                "render prompts with the chat template's generation prompt, or use prompt_latents_at: end"
            )
        prompt_end.append(answer[0] - 1 - h if answer and cfg.prompt_latents > 0 else -1)
        cands, cnts, seen = [], [], 0
        if cfg.inserts_during_decoding:
            for i in answer:
                if delim[row_ids[i]]:
                    seen += 1
                    if i + 1 < len(row_labels) and row_labels[i + 1] != IGNORE:
                        cands.append(i)
                        cnts.append(seen)
        candidates.append(cands)
        counts.append(cnts)
    return torch.tensor(prompt_end, dtype=torch.long), candidates, counts


def plan_insertions(
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    is_delimiter: torch.Tensor,
    cfg: MemGenConfig,
    decisions: list[list[bool]] | None = None,
    header: Sequence[int] = (),
) -> InsertionPlan:
    """The insertion plan of a labelled batch under a deterministic trigger policy (always, never,
    every_n), or with explicit per-candidate `decisions` (e.g. recorded during a rollout with a learned
    trigger). A row stops having candidates once `max_inference_insertions` latents blocks are in, as in
    generation."""
    prompt_end, candidates, counts = scan_candidates(input_ids, labels, is_delimiter.cpu(), cfg, header)
    if decisions is None and cfg.trigger.policy == "learned":
        raise ConfigError(
            "trigger.policy: a learned trigger decides at run time: pass the decisions recorded by generate() "
            "(GenerationResult.plan), or use policy always / every_n / never for training forward"
        )
    kept_c, kept_n, kept_d = [], [], []
    for b, (cands, cnts) in enumerate(zip(candidates, counts, strict=True)):
        rc, rn, rd, inserted = [], [], [], 0
        for j, (c, n) in enumerate(zip(cands, cnts, strict=True)):
            if inserted >= cfg.max_inference_insertions:
                break
            if decisions is not None:
                d = bool(decisions[b][j]) if j < len(decisions[b]) else False
            else:
                d = bool(rule_decides(cfg.trigger, torch.tensor(n)))
            rc.append(c)
            rn.append(n)
            rd.append(d)
            inserted += d
        kept_c.append(rc)
        kept_n.append(rn)
        kept_d.append(rd)
    return InsertionPlan(
        prompt_end=prompt_end,
        candidates=pad_rows(kept_c, -1),
        delimiter_count=pad_rows(kept_n, 0),
        decisions=pad_rows([[int(x) for x in r] for r in kept_d], 0).bool(),
    )


@dataclass
class Blocks:
    """Latent blocks of a batch: block 0 is the prompt block when K_p > 0, then one per inference point.

    anchor (B, J): token index each block follows (-1 = the row has no such block).
    sizes: the K of each block (shared by all rows).
    """

    anchor: torch.Tensor
    sizes: list[int]

    @property
    def valid(self) -> torch.Tensor:  # (B, J)
        return self.anchor >= 0

    def shifted(self, n: int) -> Blocks:
        """The same blocks with anchors moved `n` slots right (slots prepended to the token stream)."""
        return Blocks(anchor=torch.where(self.valid, self.anchor + n, self.anchor), sizes=self.sizes)

    @classmethod
    def from_plan(cls, plan: InsertionPlan, cfg: MemGenConfig) -> Blocks:
        points = plan.points()
        anchors, sizes = [], []
        if cfg.prompt_latents > 0:
            anchors.append(plan.prompt_end[:, None])
            sizes.append(cfg.prompt_latents)
        if cfg.inference_latents > 0 and points.shape[1] > 0:
            anchors.append(points)
            sizes += [cfg.inference_latents] * points.shape[1]
        if not anchors:
            return cls(anchor=torch.empty(plan.prompt_end.shape[0], 0, dtype=torch.long), sizes=[])
        return cls(anchor=torch.cat(anchors, dim=1), sizes=sizes)


def weaver_layout(
    attention_mask: torch.Tensor, blocks: Blocks, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The weaver's one-pass layout: T token slots, then every block's query slots.

    Returns (mask (B, 1, Lw, Lw) additive in `dtype`: 0 where a slot attends, the dtype's minimum where it
    does not; position_ids (B, Lw); block_of_slot (Lw,) with -1 for tokens).
    A token slot sees valid tokens at or before it; query k of block j sees valid tokens up to the block's
    anchor and queries 0..k of block j; every slot sees itself (padding never yields an all-masked row).
    The mask is additive because transformers hands a 4-D mask to the attention unchanged: SDPA reads a
    bool mask as "attend", but eager attention adds the mask to the scores, so a bool mask would mask
    nothing there; both add a float mask. `dtype` is the weaver's: SDPA wants the mask in the query dtype.
    """
    B, T = attention_mask.shape
    device = attention_mask.device
    tok_valid = attention_mask.bool()
    sizes = torch.tensor(blocks.sizes, dtype=torch.long, device=device)
    J = len(blocks.sizes)
    block_of_slot = torch.cat(
        [torch.full((T,), -1, device=device), torch.repeat_interleave(torch.arange(J, device=device), sizes)]
    )
    k_of_slot = torch.cat(
        [
            torch.zeros(T, dtype=torch.long, device=device),
            *[torch.arange(s, device=device) for s in blocks.sizes],
        ]
    )
    Lw = block_of_slot.shape[0]
    is_query = block_of_slot >= 0  # (Lw,)
    anchor = blocks.anchor.to(device)
    # the last token each slot may see: itself for tokens, the block's anchor for queries
    slot_anchor = torch.arange(Lw, device=device).expand(B, Lw).clone()  # (B, Lw)
    if J:
        slot_anchor[:, is_query] = anchor[:, block_of_slot[is_query]]
    key_pos = torch.arange(T, device=device)
    sees_tokens = (key_pos[None, None, :] <= slot_anchor[:, :, None]) & tok_valid[:, None, :]  # (B, Lw, T)
    same_block = block_of_slot[:, None] == block_of_slot[None, :]
    sees_queries = is_query[:, None] & same_block & (k_of_slot[None, :] <= k_of_slot[:, None])  # (Lw, Lw)
    mask = torch.cat([sees_tokens, sees_queries[None, :, T:].expand(B, Lw, Lw - T)], dim=2)
    mask |= torch.eye(Lw, dtype=torch.bool, device=device)[None]
    additive = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, torch.finfo(dtype).min)
    tok_pos = positions_from_valid(tok_valid)  # (B, T)
    positions = torch.zeros(B, Lw, dtype=torch.long, device=device)
    positions[:, :T] = tok_pos
    if J:
        anchor_pos = tok_pos.gather(1, anchor.clamp(min=0))  # (B, J)
        positions[:, T:] = anchor_pos[:, block_of_slot[T:]] + 1 + k_of_slot[T:]
    return additive[:, None], positions, block_of_slot


def reasoner_layout(
    attention_mask: torch.Tensor, blocks: Blocks
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each token and each latent goes in the spliced reasoner sequence.

    Returns (token_dest (B, T), latent_dest (B, sum(sizes)) with -1 for absent blocks, valid (B, L) bool).
    Block j of a row lands right after its anchor token; later tokens shift right by the sizes of the
    blocks before them. Rows with fewer latents end in invalid filler slots.
    """
    B, T = attention_mask.shape
    device = attention_mask.device
    anchor = blocks.anchor.to(device)
    sizes = torch.tensor(blocks.sizes, dtype=torch.long, device=device)  # (J,)
    valid_block = anchor >= 0  # (B, J)
    eff = sizes[None, :] * valid_block  # (B, J)
    idx = torch.arange(T, device=device)
    # shift of token i = sizes of the valid blocks anchored strictly before i
    token_dest = idx[None, :] + ((anchor[:, None, :] < idx[None, :, None]) * eff[:, None, :]).sum(-1)
    # start of block j = anchor + 1 + sizes of valid blocks anchored before it
    before = (anchor[:, None, :] < anchor[:, :, None]) & valid_block[:, None, :]  # (B, J, J')
    block_start = anchor + 1 + (before * sizes[None, None, :]).sum(-1)  # (B, J)
    k = torch.cat([torch.arange(s, device=device) for s in blocks.sizes]) if blocks.sizes else idx[:0]
    block_id = torch.repeat_interleave(torch.arange(len(blocks.sizes), device=device), sizes)
    latent_dest = block_start[:, block_id] + k[None, :]
    latent_dest = torch.where(valid_block[:, block_id], latent_dest, torch.full_like(latent_dest, -1))
    L = T + int(eff.sum(-1).max()) if eff.numel() else T
    valid = torch.zeros(B, L, dtype=torch.bool, device=device)
    valid.scatter_(1, token_dest, attention_mask.bool())
    lat_ok = latent_dest >= 0
    valid[torch.arange(B, device=device)[:, None].expand_as(latent_dest)[lat_ok], latent_dest[lat_ok]] = True
    return token_dest, latent_dest, valid
