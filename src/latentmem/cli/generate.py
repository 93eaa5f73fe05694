"""`latentmem generate`: chat-format a prompt and generate with a model."""

from __future__ import annotations

import argparse

import torch

from latentmem.chat import render_chat
from latentmem.cli.common import add_model_args
from latentmem.config import require
from latentmem.models import load_model
from latentmem.seeding import seed_everything


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="generate a reply to a prompt")
    add_model_args(p)
    p.add_argument("prompt", nargs="+", help="one or more prompts (batched)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # checked before the model loads, and as one line rather than a transformers traceback
    require(args.max_new_tokens >= 1, "--max-new-tokens", f"must be >= 1, got {args.max_new_tokens}")
    require(args.temperature >= 0, "--temperature", f"must be >= 0 (0 = greedy), got {args.temperature}")
    seed_everything(args.seed)
    model, tok = load_model(args.model, dtype=args.dtype, seed=args.seed)
    for prompt, reply in zip(args.prompt, generate_replies(model, tok, args.prompt, args), strict=True):
        print(f"> {prompt}\n{reply}\n")
    return 0


@torch.no_grad()
def generate_replies(model, tok, prompts: list[str], args: argparse.Namespace) -> list[str]:
    enc = tok(
        [render_chat(tok, p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False
    )
    sample = args.temperature > 0
    out = model.generate(
        **enc,
        max_new_tokens=args.max_new_tokens,
        do_sample=sample,
        temperature=args.temperature if sample else None,
        top_p=None,
        top_k=None,
    )
    return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
