"""`LatentMemoryModel`: a frozen reasoner, a weaver that writes latent tokens into it, and a trigger.

    model = LatentMemoryModel(reasoner, tokenizer, MemGenConfig())     # weaver = LoRA on the reasoner
    out = model(input_ids, attention_mask, labels)                      # training forward, out.loss
    res = model.generate(input_ids, attention_mask, GenerationConfig()) # batched, cached decoding
    model.save_pretrained(dir); LatentMemoryModel.from_pretrained(dir, base="tiny-qwen2")

Only the weaver (LoRA, query vectors, projections) and the learned trigger head train; every reasoner
weight is frozen, so the reasoner's general ability cannot be forgotten.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import get_layer_types_and_kwargs

from latentmem.chat import generation_header
from latentmem.decoding import IGNORE, positions_from_valid
from latentmem.errors import LatentMemError, ModelLoadError
from latentmem.memgen.base_identity import base_identity, check_base, fingerprint
from latentmem.memgen.config import DEFAULT_LORA_TARGETS, MemGenConfig
from latentmem.memgen.insertion import (
    Blocks,
    InsertionPlan,
    delimiter_table,
    plan_insertions,
    reasoner_layout,
    weaver_layout,
)
from latentmem.memgen.latent_parts import EmbeddingRMSNorm, initial_queries, output_projection, start_token
from latentmem.memgen.prompt_gate import PromptGate
from latentmem.memgen.trigger import Trigger
from latentmem.models import load_model, max_positions

CONFIG_FILE = "memgen_config.json"
WEIGHTS_FILE = "memgen.safetensors"
ADAPTER = "weaver"
# Attention implementations that honour the weaver's 4-D block mask (transformers passes a 4-D mask through
# unchanged; these two add it to the scores). flash attention reads only 2-D padding masks; flex attention
# compiles its kernels (it does not run on this project's CPU test machines), so it stays unchecked and refused.
MASKED_ATTENTION = ("sdpa", "eager")


def attention_window(config: PretrainedConfig) -> int | None:
    """The smallest sliding (or chunked) attention window among a model's layers, in slots; None when every
    layer attends to the whole context. Read with the rule `DynamicCache` uses to give a layer a sliding
    cache (`layer_types`, else `sliding_window` / `attention_chunk_size`; Qwen2 sets `layer_types` from
    `use_sliding_window`), so it names exactly the layers whose attention and cache slide."""
    _, per_layer = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    return min((kw["sliding_window"] for kw in per_layer if kw.get("sliding_window")), default=None)


@dataclass
class RetrievedMemory:
    """Memories retrieved for each row, as vectors the weaver reads before the context.

    vectors (B, M, memory_dim): e.g. sentence-encoder embeddings of the top-M retrieved texts.
    mask (B, M): 1 where a row really has that memory (rows may retrieve fewer).
    """

    vectors: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device | str) -> RetrievedMemory:
        return RetrievedMemory(self.vectors.to(device), self.mask.to(device))

    @classmethod
    def stack(cls, rows: Sequence[Any], dim: int) -> RetrievedMemory:
        """Rows of memory vectors, each (M_b, dim) (lists or arrays; M_b may differ, even be 0), padded
        into one batch: vectors (B, max M_b, dim), mask 1 on each row's real memories."""
        M = max((len(r) for r in rows), default=0)
        vectors = torch.zeros(len(rows), M, dim)
        mask = torch.zeros(len(rows), M, dtype=torch.long)
        for b, row in enumerate(rows):
            if len(row):
                vectors[b, : len(row)] = torch.as_tensor(row, dtype=torch.float32)
                mask[b, : len(row)] = 1
        return cls(vectors=vectors, mask=mask)


@dataclass
class MemGenOutput:
    loss: torch.Tensor  # () mean next-token NLL over answer tokens (latent positions never count)
    token_logprobs: torch.Tensor  # (B, T) log p(input_ids[:, i]) for answer tokens, 0 elsewhere
    target_mask: torch.Tensor  # (B, T) bool, the answer tokens that were scored
    token_is_greedy: torch.Tensor  # (B, T) bool, answer tokens that are the argmax of their distribution
    plan: InsertionPlan
    trigger_probs: torch.Tensor | None  # (B, C) insert probability at each candidate (learned trigger)
    # (N, V) log-distribution at each scored token, in `target_mask.nonzero()` order; `distributions=True`
    target_logprobs: torch.Tensor | None = None


class LatentMemoryModel(nn.Module):
    """Generative latent memory over any Hugging Face causal LM (see the module docstring)."""

    def __init__(
        self,
        reasoner: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: MemGenConfig | None = None,
        *,
        weaver_base: PreTrainedModel | None = None,
    ) -> None:
        super().__init__()
        cfg = config or MemGenConfig()
        self.config, self.tokenizer = cfg, tokenizer
        for p in reasoner.parameters():
            p.requires_grad_(False)
        self.shared = cfg.weaver_model is None and weaver_base is None
        if self.shared:
            base = reasoner
        else:
            base = weaver_base if weaver_base is not None else load_model(cfg.weaver_model)[0]
            for p in base.parameters():
                p.requires_grad_(False)
        self._check_attention(base)
        targets = self.lora_targets(base, cfg)
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(targets),
        )
        # get_peft_model freezes `base` and injects LoRA layers into it; in the shared case the reasoner's
        # own forward therefore runs with the adapter disabled (`reasoner_mode`).
        self.weaver_lm = get_peft_model(base, lora, adapter_name=ADAPTER)
        self._lora_layers = [m for m in self.weaver_lm.modules() if isinstance(m, BaseTunerLayer)]
        self.reasoner = reasoner
        # taken now, while every weight is whole: the frozen weights never change, and under FSDP they are
        # sharded later, when only the main process saves
        self.base_fingerprint = fingerprint(reasoner)
        # taken before any training, as the reasoner's: the separate weaver's base weights are frozen too
        self.weaver_fingerprint = None if self.shared else fingerprint(self.weaver_lm.get_base_model())
        self.reasoner_window = attention_window(reasoner.config)
        self.weaver_window = attention_window(base.config)
        self.reasoner_positions = max_positions(reasoner)
        self.weaver_positions = max_positions(base)
        d_r = reasoner.config.get_text_config().hidden_size
        d_w = base.config.get_text_config().hidden_size
        self.prompt_queries = nn.Parameter(initial_queries(cfg.prompt_latents, base, tokenizer, cfg))
        self.inference_queries = nn.Parameter(initial_queries(cfg.inference_latents, base, tokenizer, cfg))
        self.proj_in = nn.Identity() if self.shared else nn.Linear(d_r, d_w)
        self.proj_out = output_projection(cfg, d_w, d_r)
        self.latent_norm = (
            EmbeddingRMSNorm(reasoner.get_input_embeddings().weight, start_token=start_token(tokenizer, cfg))
            if cfg.latent_norm == "rms"
            else None
        )
        self.proj_memory = nn.Linear(cfg.memory_dim, d_w) if cfg.memory_dim else None
        # the assistant header the prompt latents go before (`prompt_latents_at: before_header`); () = none
        self.header_ids = (
            generation_header(tokenizer)
            if cfg.prompt_latents > 0 and cfg.prompt_latents_at == "before_header"
            else ()
        )
        self.trigger = Trigger(cfg.trigger, d_r)
        self.prompt_gate = PromptGate(cfg.trigger, d_r)  # unfitted: serves every prompt
        vocab_rows = reasoner.get_input_embeddings().num_embeddings
        self.register_buffer(
            "is_delimiter", delimiter_table(tokenizer, cfg.delimiters, vocab_rows), persistent=False
        )
        self.to(reasoner.device)

    # ---- construction helpers -------------------------------------------------------------------
    @staticmethod
    def _check_attention(base: PreTrainedModel) -> None:
        impls = {base.config._attn_implementation, base.config.get_text_config()._attn_implementation}
        bad = sorted(str(i) for i in impls if i not in MASKED_ATTENTION)
        if bad:
            raise LatentMemError(
                f"attn_implementation: the weaver ({base.config.model_type}) runs with {bad[0]!r}, which cannot "
                "apply the 4-D block mask that keeps each insertion point's latents from reading later tokens; "
                'load the model with attn_implementation="sdpa" or "eager" (Gemma2 needs "eager")'
            )

    @staticmethod
    def lora_targets(base: PreTrainedModel, cfg: MemGenConfig) -> tuple[str, ...]:
        names = {name.rsplit(".", 1)[-1] for name, _ in base.named_modules()}
        if all(t in names for t in cfg.lora_targets):
            return cfg.lora_targets
        fallback = DEFAULT_LORA_TARGETS.get(base.config.model_type)
        if fallback and all(t in names for t in fallback):
            return fallback
        raise LatentMemError(
            f"lora_targets: {list(cfg.lora_targets)} are not modules of this {base.config.model_type} model; "
            f"set lora_targets to some of its linear layers (e.g. {sorted(n for n in names if 'proj' in n)[:6]})"
        )

    @property
    def device(self) -> torch.device:
        return self.prompt_queries.device

    def train(self, mode: bool = True) -> LatentMemoryModel:
        """Train mode for the heads only: the reasoner and the weaver LM always run in eval mode, so no
        dropout can make a training forward disagree with the generation it replays (GRPO ratios)."""
        super().train(mode)
        self.reasoner.eval()
        self.weaver_lm.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser groups (what `training.loop.Trainer` hands AdamW): the LoRA and the trigger head at `lr`,
        the query vectors, projections and latent gain at `lr * config.head_lr_scale`. These start from
        scratch while the LoRA starts at zero effect, so the issue's recipe gives them 3-10x the LoRA's rate.
        Only parameters that train are listed, and empty groups are left out (trigger RL trains the head)."""
        heads = {id(p) for name, m in self._heads() if name != "trigger" for p in m.parameters()}
        heads |= {id(self.prompt_queries), id(self.inference_queries)}
        params = self.trainable_parameters()
        groups = [
            {"params": [p for p in params if id(p) not in heads], "lr": lr},
            {"params": [p for p in params if id(p) in heads], "lr": lr * self.config.head_lr_scale},
        ]
        return [g for g in groups if g["params"]]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    @contextlib.contextmanager
    def reasoner_mode(self) -> Iterator[PreTrainedModel]:
        """The plain frozen reasoner (the weaver's LoRA switched off when it shares the weights).

        This runs at every decoding step, so it flips the LoRA layers' own switch (`_disable_adapters`, the
        flag PEFT's `enable_adapters` sets) directly instead of PEFT's public `disable_adapter()`, which
        inspects the whole model on each call (~4 ms on a 2-layer model) and whose `enable_adapters(True)`
        sets `requires_grad` on the adapter again (trigger RL keeps the LoRA frozen). A test pins this to
        `disable_adapter()`'s logits under the pinned PEFT (`test_reasoner_mode_equals_peft_disable_adapter`).
        """
        if not self.shared:
            yield self.reasoner
            return
        for layer in self._lora_layers:
            layer._disable_adapters = True
        try:
            yield self.reasoner
        finally:
            for layer in self._lora_layers:
                layer._disable_adapters = False

    # ---- the weaver ------------------------------------------------------------------------------
    def queries_for(self, blocks_sizes: list[int], prompt_block: bool) -> torch.Tensor:
        """Query vectors of all blocks, concatenated: (sum(sizes), D_w)."""
        parts = [self.prompt_queries] if prompt_block else []
        parts += [self.inference_queries] * (len(blocks_sizes) - len(parts))
        return torch.cat(parts) if parts else self.prompt_queries[:0]

    def to_latents(self, weaver_hidden: torch.Tensor) -> torch.Tensor:
        """Weaver last-layer states at query slots (..., D_w) -> latent embeddings for the reasoner (..., D_r)."""
        latents = self.proj_out(weaver_hidden.float())
        if self.latent_norm is not None:
            latents = self.latent_norm(latents)
        return latents.to(self.reasoner.dtype)

    def weaver_inputs(
        self, token_embeds: torch.Tensor, attention_mask: torch.Tensor, memory: RetrievedMemory | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The weaver's view of a sequence: [retrieved memories E; tokens H] in weaver space (paper:
        M = W([H; E])). `token_embeds` (B, T, D_r) -> ((B, M + T, D_w), mask (B, M + T))."""
        w_in = self.proj_in(token_embeds)
        if memory is None:
            return w_in, attention_mask
        if self.proj_memory is None:
            raise LatentMemError(
                "memory: this MemGen model reads no retrieved memories; build it with memory_dim set "
                "(the dimension of your memory vectors, e.g. 384 for all-MiniLM-L6-v2)"
            )
        vectors = memory.vectors.to(self.proj_memory.weight.device, torch.float32)
        if (
            vectors.ndim != 3
            or vectors.shape[0] != token_embeds.shape[0]
            or vectors.shape[2] != self.config.memory_dim
        ):
            raise LatentMemError(
                f"memory.vectors: expected shape (B={token_embeds.shape[0]}, M, {self.config.memory_dim}), "
                f"got {tuple(vectors.shape)}"
            )
        mem = self.proj_memory(vectors).to(w_in.dtype)
        return torch.cat([mem, w_in], dim=1), torch.cat(
            [memory.mask.to(attention_mask), attention_mask], dim=1
        )

    def weave_all(self, w_in: torch.Tensor, w_mask: torch.Tensor, blocks: Blocks) -> torch.Tensor:
        """Every block's latents in one weaver pass: weaver inputs `w_in` (B, Tw, D_w), `w_mask` (B, Tw),
        block anchors indexing Tw -> latents (B, sum(sizes), D_r)."""
        B, Tw, _ = w_in.shape
        mask, positions, _ = weaver_layout(w_mask, blocks, self.weaver_lm.get_base_model().dtype)
        queries = self.queries_for(blocks.sizes, self.config.prompt_latents > 0)
        x = torch.cat([w_in, queries.to(w_in.dtype)[None].expand(B, -1, -1)], dim=1)
        out = self.weaver_lm(
            inputs_embeds=x,
            attention_mask=mask,
            position_ids=positions,
            output_hidden_states=True,
            logits_to_keep=1,
        )
        return self.to_latents(out.hidden_states[-1][:, Tw:])

    # ---- training forward ------------------------------------------------------------------------
    def plan(
        self, input_ids: torch.Tensor, labels: torch.Tensor, decisions: list[list[bool]] | None = None
    ) -> InsertionPlan:
        return plan_insertions(
            input_ids, labels, self.is_delimiter, self.config, decisions, self.header_ids
        ).to(input_ids.device)

    def check_window(self, window: int | None, slots: int, what: str) -> None:
        """Refuse a sequence of `slots` slots that does not fit inside a sliding attention `window`.

        MemGen is exact only inside the window, where sliding attention equals full attention: beyond it,
        a window counts slots, and generation's slots (dead latent slots of rows that did not insert,
        interleaved) are not training's (filler at the end), the weaver's block mask has no window at all,
        and the weaver's cache could not drop its query slots (`DynamicCache.crop` fails past the window).
        The sequence must stay strictly shorter than the window, which also keeps that crop possible.
        """
        if window is not None and slots >= window:
            raise LatentMemError(
                f"{what} takes up to {slots} slots (prompt with its padding, latents and new tokens), which "
                f"does not fit in the model's sliding attention window of {window} slots; MemGen is exact "
                "only within the window. Shorten the prompts, lower max_new_tokens, or use fewer latents or "
                "max_inference_insertions"
            )

    def check_generation_window(
        self, prompt_slots: int, batch: int, max_new_tokens: int, memories: int
    ) -> None:
        """Refuse, before any work, a generation that could pass a sliding attention window or the
        positions a model was built for (absolute position embeddings fail past them with an IndexError,
        rotary ones degrade silently).

        `prompt_slots`: the padded prompt length T; `memories`: retrieved memories M the weaver reads.
        Upper bounds of what generation builds: the reasoner's cache gets T + K_p + N slots for the prompt,
        its latents and the new tokens, plus K_i slots for every row at each step where any row inserts
        (at most N - 1 steps, and at most B * max_inference_insertions); the weaver holds M + T + N - 1
        tokens plus one block's queries before dropping them. Positions count only a row's own valid slots,
        so a row's reasoner positions stay below T + K_p + N + K_i * min(N - 1, max_inference_insertions).
        """
        cfg, N = self.config, max_new_tokens
        K_i = cfg.inference_latents if cfg.inserts_during_decoding else 0
        steps = min(N - 1, batch * cfg.max_inference_insertions)
        self.check_window(
            self.reasoner_window,
            prompt_slots + cfg.prompt_latents + N + K_i * steps,
            "generation: the reasoner's sequence",
        )
        self.check_window(
            self.weaver_window,
            memories + prompt_slots + N - 1 + max(cfg.prompt_latents, K_i),
            "generation: the weaver's view",
        )
        inserted = K_i * min(N - 1, cfg.max_inference_insertions)
        for positions, needed, what in (
            (self.reasoner_positions, prompt_slots + cfg.prompt_latents + N + inserted, "reasoner"),
            (self.weaver_positions, memories + prompt_slots + N - 1 + max(cfg.prompt_latents, K_i), "weaver"),
        ):
            if positions is not None and needed > positions:
                raise LatentMemError(
                    f"generation: the prompt ({prompt_slots} tokens with padding), latents and "
                    f"max_new_tokens={N} take up to {needed} positions of the {what}, which was built for "
                    f"{positions}; shorten the prompt, lower max_new_tokens, or use fewer latents"
                )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        plan: InsertionPlan | None = None,
        memory: RetrievedMemory | None = None,
        *,
        temperature: float = 1.0,
        distributions: bool = False,
    ) -> MemGenOutput:
        """Two passes, batched: one weaver pass writes every insertion point's latents, one reasoner pass
        reads the sequence with all latents spliced in. `input_ids`, `attention_mask`, `labels`: (B, T);
        labels are -100 outside the answer. `plan` defaults to the trigger policy's deterministic plan.
        `memory`: retrieved memory vectors the weaver reads before the context (M = W([H; E])).
        `temperature`: token log-probs (and loss) are under softmax(logits / temperature), the distribution
        a rollout sampled at that temperature drew from (GRPO). `distributions`: also return every scored
        token's full log-distribution (`target_logprobs`, for distillation to the plain reasoner)."""
        if not (input_ids.shape == attention_mask.shape == labels.shape):
            raise ValueError(
                f"input_ids, attention_mask, labels must share a shape; got {input_ids.shape}, {attention_mask.shape}, {labels.shape}"
            )
        plan = plan if plan is not None else self.plan(input_ids, labels)
        blocks = Blocks.from_plan(plan, self.config)
        B, T = input_ids.shape
        embed = self.reasoner.get_input_embeddings()
        token_embeds = embed(input_ids)  # (B, T, D_r), frozen
        token_dest, latent_dest, valid = reasoner_layout(attention_mask, blocks)
        L = valid.shape[1]
        self.check_window(self.reasoner_window, L, "training forward: the reasoner's sequence")
        x = embed(torch.full((B, L), self.tokenizer.pad_token_id, device=input_ids.device))
        x = x.scatter(1, token_dest[..., None].expand_as(token_embeds), token_embeds)
        if bool(blocks.valid.any()):
            # no query sees a token after the last anchor, so the weaver reads only up to it
            t_w = int(blocks.anchor.max()) + 1
            w_in, w_mask = self.weaver_inputs(token_embeds[:, :t_w], attention_mask[:, :t_w], memory)
            # generation's weaver holds the tokens up to an anchor plus that block's queries at once
            self.check_window(
                self.weaver_window, w_in.shape[1] + max(blocks.sizes), "training forward: the weaver's view"
            )
            w_blocks = blocks.shifted(w_in.shape[1] - t_w)  # retrieved memories come first
            latents = self.weave_all(w_in, w_mask, w_blocks)  # (B, S, D_r)
            ok = latent_dest >= 0
            rows = torch.arange(B, device=x.device)[:, None].expand_as(latent_dest)
            x = x.index_put((rows[ok], latent_dest[ok]), latents[ok])
        positions = positions_from_valid(valid)
        # token i is predicted at the slot just before it: token i-1, or the last latent spliced after it
        target = (labels != IGNORE) & attention_mask.bool()
        target[:, 0] = False
        rows, cols = target.nonzero(as_tuple=True)
        # The model's own head makes the logits (Gemma2 softcapping, Granite scaling, ...), exactly as in
        # generation, but only at the predicting slots: their union over the batch, (S,) ascending.
        keep, slot = (token_dest[rows, cols] - 1).unique(return_inverse=True)
        cand_slots = None
        if self.trigger.head is not None and plan.candidates.numel():
            cand_slots = token_dest.gather(1, plan.candidates.clamp(min=0))  # (B, C)
        read = None if cand_slots is None else cand_slots[plan.candidates >= 0]  # (C',) real candidates
        split = self._frozen_prefix(x, latent_dest, keep, read)
        with self.reasoner_mode() as reasoner:
            past = None
            if split > 0:
                # Nothing before the first latent depends on a trained parameter, and the loss reads
                # nothing there: that prefix runs without autograd, as a cache the rest attends to.
                past = DynamicCache(config=reasoner.config)
                with torch.no_grad():
                    reasoner(
                        inputs_embeds=x[:, :split],
                        attention_mask=valid[:, :split].long(),
                        position_ids=positions[:, :split],
                        past_key_values=past,
                        use_cache=True,
                        logits_to_keep=1,
                    )
            out = reasoner(
                inputs_embeds=x[:, split:],
                attention_mask=valid.long(),
                position_ids=positions[:, split:],
                past_key_values=past,
                use_cache=past is not None,
                output_hidden_states=True,
                logits_to_keep=keep - split,
            )
        hidden = out.hidden_states[-1]  # (B, L - split, D_r): the slots from `split` on
        # (B, S, V) -> (N, V): each target's own distribution
        logits = out.logits[rows, slot].float() / temperature
        # free the (B, S, V) logits before the (N, V) log-softmax when nothing keeps them for backward
        del out
        log_dist = logits.log_softmax(-1)  # (N, V)
        logp = log_dist.gather(1, input_ids[target][:, None]).squeeze(1)
        token_logprobs = torch.zeros(B, T, device=x.device).masked_scatter(target, logp)
        is_greedy = torch.zeros(B, T, dtype=torch.bool, device=x.device)
        is_greedy[rows, cols] = logits.argmax(-1) == input_ids[rows, cols]
        loss = -logp.mean() if logp.numel() else hidden.sum() * 0.0
        trigger_probs = None
        if cand_slots is not None:
            # (B, C, D_r); a padding candidate (-1) reads slot `split`, and its probability is never used
            hc = hidden[torch.arange(B, device=x.device)[:, None], (cand_slots - split).clamp(min=0)]
            trigger_probs = self.trigger.probs(hc.flatten(0, 1), plan.delimiter_count.flatten()).view(
                cand_slots.shape
            )
        return MemGenOutput(
            loss=loss,
            token_logprobs=token_logprobs,
            target_mask=target,
            token_is_greedy=is_greedy,
            plan=plan,
            trigger_probs=trigger_probs,
            target_logprobs=log_dist if distributions else None,
        )

    def _frozen_prefix(
        self,
        x: torch.Tensor,
        latent_dest: torch.Tensor,
        keep: torch.Tensor,
        cand_slots: torch.Tensor | None,
    ) -> int:
        """How many leading slots of the reasoner's sequence `x` (B, L, D) the training forward may run
        without autograd: those before every row's first latent (`latent_dest` (B, S), -1 = none), where no
        logit is kept (`keep` (S',) slots) and no trigger candidate is read (`cand_slots` (C',)). 0 when
        nothing would backpropagate through the reasoner anyway, or when the model recomputes activations
        (gradient checkpointing turns the cache off)."""
        if not x.requires_grad or any(
            getattr(m, "gradient_checkpointing", False) for m in self.reasoner.modules()
        ):
            return 0
        first = [int(latent_dest[latent_dest >= 0].min())] if bool((latent_dest >= 0).any()) else []
        first += [int(keep.min())] if keep.numel() else []
        first += [int(cand_slots.min())] if cand_slots is not None and cand_slots.numel() else []
        return max(min(first, default=0), 0)

    # ---- generation ------------------------------------------------------------------------------
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, config=None, **kwargs):
        """Batched generation with latent insertion; see `latentmem.memgen.generate.generate`."""
        from latentmem.memgen.generate import generate

        return generate(self, input_ids, attention_mask, config, **kwargs)

    # ---- save / load -----------------------------------------------------------------------------
    def _heads(self) -> list[tuple[str, nn.Module]]:
        heads = [("proj_in", self.proj_in), ("proj_out", self.proj_out), ("trigger", self.trigger)]
        heads += [("latent_norm", self.latent_norm)] if self.latent_norm is not None else []
        return heads + ([("proj_memory", self.proj_memory)] if self.proj_memory is not None else [])

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything that trains, nothing that is frozen: LoRA, queries, projections, trigger head."""
        state = {
            f"lora.{k}": v for k, v in get_peft_model_state_dict(self.weaver_lm, adapter_name=ADAPTER).items()
        }
        for name, module in self._heads():
            state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
        state["prompt_queries"] = self.prompt_queries
        state["inference_queries"] = self.inference_queries
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ModelLoadError(
                f"checkpoint does not fit this MemGen model: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        lora = {k.removeprefix("lora."): v for k, v in state.items() if k.startswith("lora.")}
        result = set_peft_model_state_dict(self.weaver_lm, lora, adapter_name=ADAPTER)
        if getattr(result, "unexpected_keys", None):
            raise ModelLoadError(f"LoRA weights did not load: unexpected keys {result.unexpected_keys[:5]}")
        for name, module in self._heads():
            module.load_state_dict(
                {k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")}
            )
        with torch.no_grad():
            self.prompt_queries.copy_(state["prompt_queries"])
            self.inference_queries.copy_(state["inference_queries"])

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the trainable state (safetensors) and a JSON config with the base model's identity (shapes
        and a weight fingerprint)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "memgen": self.config.to_dict(),
            "base": base_identity(self.reasoner),
            "base_weights": self.base_fingerprint,
        }
        if not self.shared:
            meta["weaver_base"] = base_identity(self.weaver_lm.get_base_model())
            meta["weaver_base_weights"] = self.weaver_fingerprint
        save_file(self.trainable_state_dict(), str(directory / WEIGHTS_FILE))
        self.prompt_gate.save(directory)
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        base: str | PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        weaver_base: PreTrainedModel | None = None,
    ) -> LatentMemoryModel:
        """Restore a saved MemGen model onto `base` (a model name/path, or a loaded reasoner + tokenizer)."""
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise ModelLoadError(
                f"{directory} is not a saved MemGen model (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
            )
        meta = json.loads((directory / CONFIG_FILE).read_text())
        if isinstance(base, str | Path):
            base, tokenizer = load_model(base)
        if tokenizer is None:
            raise ModelLoadError("pass the tokenizer that belongs to `base`")
        check_base(base, meta["base"], meta.get("base_weights"), "base model", directory / CONFIG_FILE)
        model = cls(base, tokenizer, MemGenConfig.from_dict(meta["memgen"]), weaver_base=weaver_base)
        if "weaver_base" in meta:  # a separate weaver LM: its LoRA and projections belong to its weights
            check_base(
                model.weaver_lm.get_base_model(), meta["weaver_base"], meta.get("weaver_base_weights"),
                "weaver model", directory / CONFIG_FILE,
            )  # fmt: skip
        model.load_trainable_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        model.prompt_gate.load(directory)
        return model
