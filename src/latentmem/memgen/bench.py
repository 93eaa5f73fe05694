"""Benchmarks of the MemGen core, each timing latentmem against its baseline in one run.

`latentmem bench generate`: plain HF `generate` vs our cached generation with insertions vs the re-prefill
strategy of the reference implementation. `latentmem bench train-step`: one weaver training step vs one
plain LoRA-SFT step on the same batch.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from peft import LoraConfig, get_peft_model

from latentmem.chat import render_chat
from latentmem.decoding import IGNORE, KVDecoder, left_padded, pad_rows, positions_from_valid
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


def register(subparsers: argparse._SubParsersAction) -> None:
    g = subparsers.add_parser("generate", help="MemGen generation vs plain generate vs re-prefill")
    g.add_argument("--model", default="tiny-qwen2")
    g.add_argument("--batch", type=int, default=8)
    g.add_argument("--new-tokens", type=int, default=256)
    g.add_argument("--insertions", type=int, default=5)
    g.add_argument("--latents", type=int, default=8)
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadiest timings on small models)"
    )
    g.add_argument("--json", action="store_true")
    g.set_defaults(
        func=lambda a: (
            _set_threads(a)
            or _emit(
                bench_generate(a.model, a.batch, a.new_tokens, a.insertions, a.latents, a.repeats, a.seed),
                a.json,
            )
        )
    )
    t = subparsers.add_parser("train-step", help="a weaver training step vs a plain LoRA-SFT step")
    t.add_argument("--model", default="tiny-qwen2")
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--answer-words", type=int, default=48)
    t.add_argument("--repeats", type=int, default=5)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadiest timings on small models)"
    )
    t.add_argument("--json", action="store_true")
    t.set_defaults(
        func=lambda a: (
            _set_threads(a)
            or _emit(bench_train_step(a.model, a.batch, a.answer_words, a.repeats, a.seed), a.json)
        )
    )
