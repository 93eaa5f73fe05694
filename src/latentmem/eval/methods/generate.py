"""Greedy completion of a task's prompts, shared by every method: with a Hugging Face model's own
`generate` (the frozen and LoRA methods) or with a `LatentMemoryModel` (the MemGen methods)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentmem.chat import render_chat
from latentmem.eval.method import Completions
from latentmem.eval.task import Task
from latentmem.memgen import GenerationConfig, LatentMemoryModel, RetrievedMemory


def batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _encode_prompts(tok: PreTrainedTokenizerBase, prompts: list[str], system: str | None):
    texts = [render_chat(tok, p, system=system) for p in prompts]
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


@torch.no_grad()
def complete_with_memgen(
    mm: LatentMemoryModel,
    prompts: list[str],
    task: Task,
    batch_size: int,
    memory_for: Callable[[list[str]], RetrievedMemory] | None = None,
) -> Completions:
    """Greedy completions with a LatentMemoryModel; `memory_for(prompts)` gives the retrieved memories its
    weaver reads, when it reads any. With a fitted prompt gate, `served` says which prompts it served."""
    tok, texts, n_new, n_prompt, start = mm.tokenizer, [], 0, 0, time.perf_counter()
    served: list[bool] = []
    cfg = GenerationConfig(max_new_tokens=task.max_new_tokens)
    for batch in tqdm(batches(prompts, batch_size), desc=f"generate ({len(prompts)})", leave=False):
        enc = _encode_prompts(tok, batch, task.system)
        memory = memory_for(batch) if memory_for else None
        res = mm.generate(enc["input_ids"], enc["attention_mask"], cfg, memory=memory)
        n_prompt += int(enc["attention_mask"].sum())
        keep = res.completion_mask()
        texts += tok.batch_decode(
            res.sequences.masked_fill(~keep, tok.pad_token_id), skip_special_tokens=True
        )
        n_new += int(keep.sum())
        served += res.served.tolist()
    gated = mm.prompt_gate.active
    return Completions(texts, time.perf_counter() - start, n_new, n_prompt, served=served if gated else None)


@torch.no_grad()
def complete_with_hf(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str], task: Task, batch_size: int
) -> Completions:
    """Greedy completions with a plain (or PEFT) Hugging Face model's own `generate`."""
    texts, n_new, n_prompt, start = [], 0, 0, time.perf_counter()
    for batch in tqdm(batches(prompts, batch_size), desc=f"generate ({len(prompts)})", leave=False):
        enc = _encode_prompts(tok, batch, task.system).to(model.device)
        n_prompt += int(enc["attention_mask"].sum())
        out = model.generate(
            **enc, max_new_tokens=task.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
        new = out[:, enc["input_ids"].shape[1] :]
        stop = torch.tensor([tok.eos_token_id, tok.pad_token_id], device=new.device)
        keep = torch.cumsum(torch.isin(new, stop), 1) == 0
        texts += tok.batch_decode(new.masked_fill(~keep, tok.pad_token_id), skip_special_tokens=True)
        n_new += int(keep.sum()) + int((~keep).any(1).sum())  # count the EOS that ended a row
    return Completions(texts, time.perf_counter() - start, n_new, n_prompt)
