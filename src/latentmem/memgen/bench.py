"""Benchmarks of the MemGen core, each timing latentmem against its baseline in one run.

`latentmem bench generate`: plain HF `generate` vs our cached generation with insertions vs the re-prefill
strategy of the reference implementation; `--shape eval` instead times the shape evaluations have (a batch
of 32 ragged prompts, answers of different lengths, insertions at different steps in every row), where
dead KV-cache slots pile up unless compacted. `latentmem bench train-step`: one weaver training step vs one
plain LoRA-SFT step on the same batch.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable

import torch
from peft import LoraConfig, get_peft_model

from latentmem.chat import render_chat
from latentmem.decoding import (
    COMPACT_THRESHOLD,
    IGNORE,
    KVDecoder,
    left_padded,
    pad_rows,
    positions_from_valid,
)
from latentmem.errors import LatentMemError
from latentmem.memgen.config import MemGenConfig, TriggerConfig
from latentmem.memgen.generate import GenerationConfig
from latentmem.memgen.model import LatentMemoryModel
from latentmem.memgen.trigger import rule_decides
from latentmem.models import load_model
from latentmem.seeding import seed_everything

PROMPTS = [
    "Explain, step by step, how to add two numbers.",
    "Write a short story about a river.",
    "What is memory?",
    "List three colours, then describe each.",
]


def _timed(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` runs after one warm-up (best-of: least disturbed by other load)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _every_token_is_a_delimiter(tokenizer) -> tuple[str, ...]:
    """Delimiters that make every token an insertion candidate, so that `every_n` places exactly the
    requested number of insertions at evenly spaced steps whatever the (random) model generates."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return tuple(sorted({t[-1] for t in texts if t}))


@torch.no_grad()
def reprefill_generate(mm: LatentMemoryModel, input_ids, attention_mask, max_new_tokens: int) -> torch.Tensor:
    """The reference implementation's decoding loop, greedy: while any row may still insert, every step
    re-runs the reasoner over the whole prefix (prompt, latents, tokens so far) without a KV cache, and
    each insertion re-runs the weaver over the whole prefix; rows that do not insert are left-padded to
    the new length. Once every row has spent its insertion budget, the rest is decoded with a cache."""
    cfg = mm.config
    B = input_ids.shape[0]
    emb = mm.reasoner.get_input_embeddings()
    tok_embeds, tok_mask = emb(input_ids), attention_mask.bool()
    stream, stream_mask = tok_embeds, tok_mask

    def weave(queries):
        x = torch.cat([mm.proj_in(tok_embeds), queries[None].expand(B, -1, -1).to(tok_embeds.dtype)], 1)
        mask = torch.cat([tok_mask, torch.ones(B, len(queries), dtype=torch.bool)], 1)
        pos = positions_from_valid(mask)
        out = mm.weaver_lm(
            inputs_embeds=x, attention_mask=mask.long(), position_ids=pos, output_hidden_states=True
        )
        return mm.to_latents(out.hidden_states[-1][:, -len(queries) :])

    def reason(x, mask):
        pos = positions_from_valid(mask)
        with mm.reasoner_mode() as r:
            # as in the reference: a plain forward, logits for every position, the last one used
            return r(inputs_embeds=x, attention_mask=mask.long(), position_ids=pos).logits[:, -1]

    if cfg.prompt_latents:
        lat = weave(mm.prompt_queries)
        stream = torch.cat([stream, lat], 1)
        stream_mask = torch.cat([stream_mask, torch.ones(B, lat.shape[1], dtype=torch.bool)], 1)
    inserted, n_delims, out = torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long), []
    logits = reason(stream, stream_mask)
    for step in range(max_new_tokens):
        tok = logits.argmax(-1)
        out.append(tok)
        if step == max_new_tokens - 1:
            break
        e = emb(tok[:, None])
        tok_embeds, tok_mask = (
            torch.cat([tok_embeds, e], 1),
            torch.cat([tok_mask, torch.ones(B, 1, dtype=torch.bool)], 1),
        )
        stream, stream_mask = (
            torch.cat([stream, e], 1),
            torch.cat([stream_mask, torch.ones(B, 1, dtype=torch.bool)], 1),
        )
        if bool((inserted >= cfg.max_inference_insertions).all()):
            break
        is_delim = mm.is_delimiter[tok]
        n_delims += is_delim
        ins = is_delim & (inserted < cfg.max_inference_insertions) & rule_decides(cfg.trigger, n_delims)
        if bool(ins.any()):
            lat = weave(mm.inference_queries)
            K = lat.shape[1]
            pad = torch.zeros(B, K, dtype=torch.bool)
            # inserting rows get the latents at the end; the others K masked slots on the left
            stream = torch.where(
                ins[:, None, None], torch.cat([stream, lat], 1), torch.cat([torch.zeros_like(lat), stream], 1)
            )
            stream_mask = torch.where(
                ins[:, None], torch.cat([stream_mask, ~pad], 1), torch.cat([pad, stream_mask], 1)
            )
            inserted += ins
        logits = reason(stream, stream_mask)
    remaining = max_new_tokens - len(out)
    if remaining > 0:  # the reference hands the rest to a cached decode
        dec = KVDecoder(mm.reasoner)
        with mm.reasoner_mode():
            logits = dec.prefill(stream, stream_mask.long()).logits[:, -1]
            for _ in range(remaining):
                tok = logits.argmax(-1)
                out.append(tok)
                logits = dec.extend(emb(tok[:, None])).logits[:, -1]
    return torch.stack(out, 1)


def bench_generate(
    model: str, batch: int, new_tokens: int, insertions: int, latents: int, repeats: int, seed: int
) -> dict:
    seed_everything(seed)
    reasoner, tok = load_model(model, seed=seed)
    plain, _ = load_model(model, seed=seed)
    cfg = MemGenConfig(
        prompt_latents=latents,
        inference_latents=latents,
        max_inference_insertions=insertions,
        delimiters=_every_token_is_a_delimiter(tok),
        trigger=TriggerConfig(policy="every_n", every_n=max(1, new_tokens // (insertions + 1))),
    )
    mm = LatentMemoryModel(reasoner, tok, cfg).eval()
    enc = tok(
        [render_chat(tok, PROMPTS[i % len(PROMPTS)]) for i in range(batch)], return_tensors="pt", padding=True
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    gen_cfg = GenerationConfig(max_new_tokens=new_tokens, stop_on_eos=False)
    res = mm.generate(ids, mask, gen_cfg)
    done = [len(r) for r in res.insertions]
    times = {
        "vanilla_s": _timed(
            lambda: plain.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
            ),
            repeats,
        ),
        "latentmem_s": _timed(lambda: mm.generate(ids, mask, gen_cfg), repeats),
        "reprefill_s": _timed(lambda: reprefill_generate(mm, ids, mask, new_tokens), repeats),
    }
    return {
        "model": model,
        "batch": batch,
        "new_tokens": new_tokens,
        "insertions_per_sequence": min(done),
        "latents": latents,
        **{k: round(v, 4) for k, v in times.items()},
        "ratio_vs_vanilla": round(times["latentmem_s"] / times["vanilla_s"], 3),
        "speedup_vs_reprefill": round(times["reprefill_s"] / times["latentmem_s"], 2),
        "threads": torch.get_num_threads(),
    }


class _AnswerScript:
    """Forces one answer shape on plain `generate` and on MemGen alike, so both decode the same number of
    tokens per row and MemGen inserts at the same (ragged) steps: row r's token i is EOS when
    i == lengths[r] - 1, a delimiter when i is in delimiter_steps[r], and otherwise the model's own greedy
    pick with every delimiter and EOS masked out.

    The step is read from the input embedding layer (a (B, T > 1) call is a prompt, each (B, 1) call feeds
    one generated token), the forcing is applied to the output head's logits, so the script follows plain
    `generate`, MemGen's token steps and its latent blocks (which feed no token) without touching either.
    A latent block runs for the inserting rows only: with the trigger policy "always" and a budget of at
    least the forced delimiters, those are the rows whose token just fed is a forced delimiter.
    """

    def __init__(
        self, lengths: list[int], delimiter_steps: list[list[int]], is_delimiter: torch.Tensor, eos: int
    ) -> None:
        self.force = torch.full((len(lengths), max(lengths)), -1, dtype=torch.long)  # (B, N) forced ids
        self.delimiter = int(is_delimiter.nonzero()[0])
        for r, (n, steps) in enumerate(zip(lengths, delimiter_steps, strict=True)):
            self.force[r, [s for s in steps if s < n - 1]] = self.delimiter
            self.force[r, n - 1] = eos
        self.banned = is_delimiter.clone()
        self.banned[eos] = True
        self.step = 0

    def _on_embed(self, _module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.step = 0 if args[0].shape[1] > 1 else self.step + 1

    def _on_logits(self, _module: torch.nn.Module, _args: object, logits: torch.Tensor) -> torch.Tensor:
        """(B, t, V) logits (or (R, t, V) for the rows of a latent block) -> the same with this step's forcing."""
        step = min(self.step, self.force.shape[1] - 1)
        forced = self.force[:, step]
        if logits.shape[0] != len(forced):
            inserting = (self.force[:, step - 1] == self.delimiter).nonzero().squeeze(-1)
            if step == 0 or len(inserting) != logits.shape[0]:
                return logits  # not a block this script placed; the final check reports any deviation
            forced = forced[inserting]
        logits = logits.masked_fill(self.banned.to(logits.device), -1e4)
        rows = (forced >= 0).nonzero().squeeze(-1)
        logits[rows, :, forced[rows]] = 1e4
        return logits

    def attach(self, model: torch.nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        return [
            model.get_input_embeddings().register_forward_pre_hook(self._on_embed),
            model.get_output_embeddings().register_forward_hook(self._on_logits),
        ]


class _DeadSlots:
    """The mean share of invalid (masked) slots in the attention masks a model's forward calls receive."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.shares: list[float] = []
        self.handle = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, _module: torch.nn.Module, _args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.ndim == 2:
            self.shares.append(1.0 - float(mask.float().mean()))

    def mean(self) -> float:
        return sum(self.shares) / max(len(self.shares), 1)


def _eval_prompts(tok, batch: int, rng: random.Random) -> list[str]:
    """Chat prompts of ragged lengths (5 to 100 words), like an evaluation task's questions."""
    words = "the river carries water from the hills to the sea and every town along it".split()
    return [
        render_chat(tok, " ".join(rng.choice(words) for _ in range(rng.randint(5, 100))) + "?")
        for _ in range(batch)
    ]


def bench_generate_eval(
    model: str,
    batch: int,
    new_tokens: int,
    insertions: int,
    latents: int,
    repeats: int,
    seed: int,
    compact: float | None,
) -> dict:
    """The evaluation shape: ragged prompts, answers of 1/8 to all of `new_tokens` tokens, and up to
    `insertions` insertions per row at random steps (different in every row). Plain `generate` and MemGen
    decode the same tokens per row (`_AnswerScript`)."""
    seed_everything(seed)
    rng = random.Random(seed)
    reasoner, tok = load_model(model, seed=seed)
    plain, _ = load_model(model, seed=seed)
    cfg = MemGenConfig(
        prompt_latents=latents,
        inference_latents=latents,
        max_inference_insertions=insertions,
        delimiters=(".",),
        trigger=TriggerConfig(policy="always"),
    )
    mm = LatentMemoryModel(reasoner, tok, cfg).eval()
    lengths = [rng.randint(max(1, new_tokens // 8), new_tokens) for _ in range(batch)]
    steps = [sorted(rng.sample(range(max(n - 1, 1)), min(insertions, n - 1))) for n in lengths]
    script = _AnswerScript(lengths, steps, mm.is_delimiter.cpu(), tok.eos_token_id)
    handles = script.attach(reasoner) + script.attach(plain)
    enc = tok(_eval_prompts(tok, batch, rng), return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    gen_cfg = GenerationConfig(max_new_tokens=max(lengths), compact_threshold=compact)
    no_compact = GenerationConfig(max_new_tokens=max(lengths), compact_threshold=None)
    dead = _DeadSlots(mm.reasoner)
    res = mm.generate(ids, mask, gen_cfg)
    dead_share = dead.mean()
    dead.shares.clear()
    mm.generate(ids, mask, no_compact)
    dead_uncompacted = dead.mean()
    dead.handle.remove()
    if res.lengths.tolist() != lengths or [len(r) for r in res.insertions] != [len(s) for s in steps]:
        raise LatentMemError("bench generate --shape eval: the answer script was not followed")
    times = {
        "vanilla_s": _timed(
            lambda: plain.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max(lengths), do_sample=False
            ),
            repeats,
        ),
        "latentmem_s": _timed(lambda: mm.generate(ids, mask, gen_cfg), repeats),
        "latentmem_uncompacted_s": _timed(lambda: mm.generate(ids, mask, no_compact), repeats),
    }
    for h in handles:
        h.remove()
    return {
        "model": model,
        "shape": "eval",
        "batch": batch,
        "prompt_tokens": [int(mask.sum(1).min()), int(mask.sum(1).max())],
        "new_tokens": [min(lengths), max(lengths)],
        "insertions_total": sum(len(r) for r in res.insertions),
        "latents": latents,
        **{k: round(v, 4) for k, v in times.items()},
        "ratio_vs_vanilla": round(times["latentmem_s"] / times["vanilla_s"], 3),
        "ratio_uncompacted_vs_vanilla": round(times["latentmem_uncompacted_s"] / times["vanilla_s"], 3),
        "dead_slot_share": round(dead_share, 3),
        "dead_slot_share_uncompacted": round(dead_uncompacted, 3),
        "threads": torch.get_num_threads(),
    }


def _train_batch(tok, batch: int, answer_words: int):
    prompts = [render_chat(tok, PROMPTS[i % len(PROMPTS)]) for i in range(batch)]
    words = "we add the numbers, then carry the tens. the result is clear, so we stop.".split()
    answers = [
        " ".join(words[(i + j) % len(words)] for j in range(answer_words)) + tok.eos_token
        for i in range(batch)
    ]
    p = [tok(x, add_special_tokens=False)["input_ids"] for x in prompts]
    a = [tok(x, add_special_tokens=False)["input_ids"] for x in answers]
    ids, mask = left_padded([x + y for x, y in zip(p, a, strict=True)], tok.pad_token_id)
    labels = pad_rows([[IGNORE] * len(x) + y for x, y in zip(p, a, strict=True)], IGNORE, left=True)
    return ids, mask, labels


def bench_train_step(model: str, batch: int, answer_words: int, repeats: int, seed: int) -> dict:
    seed_everything(seed)
    reasoner, tok = load_model(model, seed=seed)
    mm = LatentMemoryModel(reasoner, tok, MemGenConfig()).train()
    base, _ = load_model(model, seed=seed)
    cfg = mm.config
    lora = get_peft_model(
        base,
        LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            target_modules=list(mm.weaver_lm.peft_config["weaver"].target_modules),
        ),
    ).train()
    ids, mask, labels = _train_batch(tok, batch, answer_words)
    opt_m = torch.optim.AdamW(mm.trainable_parameters(), lr=1e-4)
    opt_l = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4)

    def memgen_step():
        opt_m.zero_grad()
        mm(ids, mask, labels).loss.backward()
        opt_m.step()

    def lora_step():
        opt_l.zero_grad()
        lora(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt_l.step()

    plan = mm.plan(ids, labels)
    t_m, t_l = _timed(memgen_step, repeats), _timed(lora_step, repeats)
    return {
        "model": model,
        "batch": batch,
        "seq_len": ids.shape[1],
        "insertion_points_per_sequence": round(
            float(plan.decisions.sum(-1).float().mean()) + (cfg.prompt_latents > 0), 2
        ),
        "memgen_step_s": round(t_m, 4),
        "lora_sft_step_s": round(t_l, 4),
        "ratio_vs_lora_sft": round(t_m / t_l, 3),
        "threads": torch.get_num_threads(),
    }


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>32}: {v}")


def _set_threads(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)


def _run_generate(a: argparse.Namespace) -> None:
    _set_threads(a)
    if a.shape == "eval":
        result = bench_generate_eval(
            a.model,
            a.batch or 32,
            a.new_tokens or 128,
            a.insertions,
            a.latents,
            a.repeats,
            a.seed,
            a.compact_threshold,
        )
    else:
        result = bench_generate(
            a.model, a.batch or 8, a.new_tokens or 256, a.insertions, a.latents, a.repeats, a.seed
        )
    _emit(result, a.json)


def register(subparsers: argparse._SubParsersAction) -> None:
    g = subparsers.add_parser("generate", help="MemGen generation vs plain generate vs re-prefill")
    g.add_argument("--model", default="tiny-qwen2", help="the reasoner: a model name or HF dir")
    g.add_argument(
        "--shape",
        choices=("default", "eval"),
        default="default",
        help="default: aligned insertions, every row the same length; eval: the evaluation shape",
    )
    g.add_argument("--batch", type=int, default=None, help="prompts per batch (default 8; eval 32)")
    g.add_argument(
        "--new-tokens",
        type=int,
        default=None,
        help="tokens generated per prompt (default 256; eval: the longest answer, 128)",
    )
    g.add_argument(
        "--compact-threshold",
        type=float,
        default=COMPACT_THRESHOLD,
        help="eval: compact a KV cache once that frees more than this share of it",
    )
    g.add_argument("--insertions", type=int, default=5, help="latent insertions per answer (0: none)")
    g.add_argument("--latents", type=int, default=8, help="latents per insertion")
    g.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up; the best counts")
    g.add_argument("--seed", type=int, default=0, help="weights seed of the tiny models")
    g.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadiest timings on small models)"
    )
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.set_defaults(func=_run_generate)
    t = subparsers.add_parser("train-step", help="a weaver training step vs a plain LoRA-SFT step")
    t.add_argument("--model", default="tiny-qwen2", help="the reasoner: a model name or HF dir")
    t.add_argument("--batch", type=int, default=8, help="prompts per batch")
    t.add_argument("--answer-words", type=int, default=48, help="words in each training answer")
    t.add_argument("--repeats", type=int, default=5, help="timed runs after a warm-up; the best counts")
    t.add_argument("--seed", type=int, default=0, help="weights seed of the tiny models")
    t.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadiest timings on small models)"
    )
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.set_defaults(
        func=lambda a: (
            _set_threads(a)
            or _emit(bench_train_step(a.model, a.batch, a.answer_words, a.repeats, a.seed), a.json)
        )
    )
