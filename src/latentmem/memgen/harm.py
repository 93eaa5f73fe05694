"""How much a weaver that has not learned the task harms the reasoner: `latentmem bench init-harm`.

Issue 13 measured, on SmolLM2 at initialisation, a gold-answer NLL of 0.73 for the plain reasoner against
1.14 with prompt latents only, 1.43 with inference latents only and 2.02 with both (latent norm ~34 against
~3 for token embeddings), while a LoRA starts exactly at the plain model. This module measures the same on a
fixed held-out set of generic prompts (the arithmetic and facts tasks' test targets and general QA pairs;
none of them is in the warm-up data of `latentmem.training.warmup`), for a fresh weaver of any
`MemGenConfig` or a saved one (`--init-from`, e.g. a warm-up run's `model/`):

    latentmem bench init-harm --model smollm2-135m-instruct --set latent_norm=rms --seeds 0,1,2 --json

Per mode (plain, prompt latents only, inference latents only, both, and `deployed`: what the config
inserts) it reports the token-mean answer NLL, its rise over plain, and the token-mean KL(plain || mode) of
the next-token distributions; plus the latents' mean L2 norm against the token embeddings'.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from latentmem.config import apply_overrides
from latentmem.decoding import IGNORE, positions_from_valid
from latentmem.eval.task import get_task
from latentmem.memgen.config import MemGenConfig
from latentmem.memgen.model import LatentMemoryModel
from latentmem.models import load_model
from latentmem.seeding import seed_everything
from latentmem.training.config import DataConfig
from latentmem.training.data import Encoded, collate, encode

# General questions with one-sentence answers (delimiters inside, so inference latents are exercised).
GENERAL_QA: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What colour is the sky on a clear day?", "The sky is blue on a clear day."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What do bees make?", "Bees make honey, and they also make wax."),
    ("Which planet do we live on?", "We live on Earth, the third planet from the Sun."),
    ("What is water made of?", "Water is made of hydrogen and oxygen."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Name a fruit that is yellow.", "A banana is a yellow fruit."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What do you call a baby cat?", "A baby cat is called a kitten."),
    ("What season comes after winter?", "Spring comes after winter."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("Which animal is known as the king of the jungle?", "The lion is known as the king of the jungle."),
    ("What do plants need to grow?", "Plants need water, light and air to grow."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth."),
)
MODES = ("prompt", "inference", "both")


def heldout_rows(per_task: int = 24) -> list[dict[str, str]]:
    """The fixed held-out set: `per_task` test targets of the arithmetic and facts tasks, then GENERAL_QA;
    rows {"prompt", "target", "source"}."""
    rows = []
    for name in ("arithmetic", "facts"):
        task = get_task(name)
        for ex in task.split("test", limit=per_task):
            rows.append({"prompt": ex.prompt, "target": task.target(ex), "source": name})
    rows += [{"prompt": q, "target": a, "source": "general"} for q, a in GENERAL_QA]
    return rows


def encode_heldout(tokenizer: Any, rows: Sequence[dict[str, str]]) -> list[Encoded]:
    return encode(rows, tokenizer, DataConfig(prompt_column="prompt", answer_column="target"))


@contextlib.contextmanager
def insertions(mm: LatentMemoryModel, mode: str) -> Iterator[None]:
    """Run `mm` with only its prompt latents ("prompt"), only its inference latents ("inference"), both
    ("both", as configured), or none ("plain"), with the same weights: the insertion counts are read from
    `mm.config`, which is swapped for the duration."""
    cfg = mm.config
    changes: dict[str, Any] = {
        "plain": {"prompt_latents": 0, "max_inference_insertions": 0},
        "prompt": {"max_inference_insertions": 0},
        "inference": {"prompt_latents": 0},
        "both": {},
    }[mode]
    mm.config = dataclasses.replace(cfg, **changes)
    try:
        yield
    finally:
        mm.config = cfg


def scored(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool, the tokens `LatentMemoryModel.forward` scores: answer tokens after the first slot."""
    target = (labels != IGNORE) & mask.bool()
    target[:, 0] = False
    return target


def plain_logprobs(
    mm: LatentMemoryModel, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """(N, V) the plain reasoner's next-token log-distributions at the answer tokens of a left-padded batch
    (B, T), in the order of `MemGenOutput.target_logprobs` (row-major over the scored tokens)."""
    rows, cols = scored(labels, mask).nonzero(as_tuple=True)
    # the head runs only at the predicting slots (their union over the batch), as in the training forward
    keep, slot = (cols - 1).unique(return_inverse=True)
    with mm.reasoner_mode() as reasoner:
        logits = reasoner(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions_from_valid(mask.bool()),
            logits_to_keep=keep,
        ).logits
    return logits[rows, slot].float().log_softmax(-1)


def kl_to_plain(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """(N,) KL(teacher || student) per token from log-distributions (N, V)."""
    return (teacher.exp() * (teacher - student)).sum(-1)


@torch.no_grad()
def measure(mm: LatentMemoryModel, items: Sequence[Encoded], batch_size: int = 16) -> dict[str, Any]:
    """NLL (token mean), its rise over plain, KL to plain per mode, and latent norms, for one weaver."""
    mm.eval()
    pad = mm.tokenizer.pad_token_id
    nll = {m: 0.0 for m in ("plain", *MODES)}
    kl = {m: 0.0 for m in MODES}
    tokens, norms = 0, []
    to_latents = mm.to_latents

    def recording(hidden: torch.Tensor) -> torch.Tensor:
        latents = to_latents(hidden)
        norms.append(latents.float().norm(dim=-1).flatten())
        return latents

    mm.to_latents = recording  # an instance attribute shadows the method while measuring
    try:
        for start in range(0, len(items), batch_size):
            ids, mask, labels = (t.to(mm.device) for t in collate(items[start : start + batch_size], pad))
            teacher = plain_logprobs(mm, ids, mask, labels)
            targets = ids[scored(labels, mask)]
            nll["plain"] -= float(teacher.gather(1, targets[:, None]).sum())
            tokens += len(targets)
            for mode in MODES:
                with insertions(mm, mode):
                    out = mm(ids, mask, labels, distributions=True)
                nll[mode] -= float(out.token_logprobs[out.target_mask].sum())
                kl[mode] += float(kl_to_plain(teacher, out.target_logprobs).sum())
    finally:
        del mm.to_latents
    result: dict[str, Any] = {f"nll_{m}": v / tokens for m, v in nll.items()}
    result.update({f"kl_{m}": v / tokens for m, v in kl.items()})
    for m in MODES:
        result[f"rise_{m}"] = result[f"nll_{m}"] / result["nll_plain"] - 1
    cfg = mm.config
    deployed = (
        "both"
        if cfg.prompt_latents and cfg.inserts_during_decoding
        else "prompt"
        if cfg.prompt_latents
        else "inference"
        if cfg.inserts_during_decoding
        else None
    )
    result["deployed"] = deployed
    result["rise_deployed"] = result[f"rise_{deployed}"] if deployed else 0.0
    result["latent_norm"] = float(torch.cat(norms).mean()) if norms else 0.0
    emb = mm.reasoner.get_input_embeddings().weight.float()
    result["token_embedding_norm"] = float(emb.norm(dim=-1).mean())
    result["answer_tokens"] = tokens
    return result


def bench_init_harm(
    model: str,
    overrides: Sequence[str] = (),
    seeds: Sequence[int] = (0,),
    init_from: str | None = None,
    per_task: int = 24,
) -> dict[str, Any]:
    """`measure` for a weaver of `MemGenConfig` with `overrides` ("key=value"), fresh under each seed (or
    loaded from `init_from`, a `save_pretrained` folder whose own config then applies); the numbers are
    means over seeds, with each seed's `rise_deployed` listed."""
    runs = []
    for seed in seeds:
        reasoner, tok = load_model(model, seed=0)
        seed_everything(seed)
        if init_from:
            mm = LatentMemoryModel.from_pretrained(init_from, reasoner, tok)
        else:
            cfg = MemGenConfig.from_dict(apply_overrides(MemGenConfig().to_dict(), overrides))
            mm = LatentMemoryModel(reasoner, tok, cfg)
        runs.append(measure(mm, encode_heldout(tok, heldout_rows(per_task))))
    numeric = [k for k, v in runs[0].items() if isinstance(v, float)]
    out: dict[str, Any] = {k: sum(r[k] for r in runs) / len(runs) for k in numeric}
    out["rise_deployed_per_seed"] = [r["rise_deployed"] for r in runs]
    out.update(
        model=model,
        seeds=list(seeds),
        deployed=runs[0]["deployed"],
        answer_tokens=runs[0]["answer_tokens"],
        memgen=mm.config.to_dict(),
        init_from=init_from,
    )
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("init-harm", help="answer NLL of the plain reasoner vs a fresh/warmed weaver")
    p.add_argument("--model", default="tiny-qwen2", help="the reasoner: a model name or HF dir")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], help="MemGenConfig key=value (repeatable)"
    )
    p.add_argument("--seeds", default="0", help="weaver init seeds, comma-separated")
    p.add_argument("--init-from", default=None, help="a saved MemGen model folder (e.g. a warm-up's model/)")
    p.add_argument("--per-task", type=int, default=24, help="held-out rows per generated task")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    def run(a: argparse.Namespace) -> int:
        seeds = [int(s) for s in a.seeds.split(",")]
        result = bench_init_harm(a.model, a.overrides, seeds, a.init_from, a.per_task)
        if a.json:
            print(json.dumps(result, indent=2))
        else:
            for k, v in result.items():
                print(f"{k:>24}: {v}")
        return 0

    p.set_defaults(func=run)
