"""`latentmem generate`: chat-format a prompt and generate with a model."""

from __future__ import annotations

import argparse
import math

from latentmem.cli.common import add_model_args, example
from latentmem.config import require


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate a reply to a prompt",
        epilog=example('latentmem generate --model tiny-qwen2 --max-new-tokens 16 "What is 2+3?"'),
    )
    add_model_args(p)
    p.add_argument("prompt", nargs="+", help="one or more prompts (batched)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="reply length in tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from latentmem.models import load_model
    from latentmem.seeding import seed_everything

    # checked before the model loads, and as one line rather than a transformers traceback; inf would
    # sample uniformly at random, so only finite temperatures are accepted
    require(args.max_new_tokens >= 1, "--max-new-tokens", f"must be >= 1, got {args.max_new_tokens}")
    require(
        math.isfinite(args.temperature) and args.temperature >= 0,
        "--temperature",
        f"must be a finite number >= 0 (0 = greedy), got {args.temperature}",
    )
    seed_everything(args.seed)
    model, tok = load_model(args.model, dtype=args.dtype, seed=args.seed)
    for prompt, reply in zip(args.prompt, generate_replies(model, tok, args.prompt, args), strict=True):
        print(f"> {prompt}\n{reply}\n")
    return 0


def generate_replies(model, tok, prompts: list[str], args: argparse.Namespace) -> list[str]:
    """The decoded reply to each of `prompts` (chat-formatted), greedy at temperature 0."""
    import torch

    from latentmem.chat import render_chat

    enc = tok(
        [render_chat(tok, p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False
    )
    sample = args.temperature > 0
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=args.max_new_tokens,
            do_sample=sample,
            temperature=args.temperature if sample else None,
            top_p=None,
            top_k=None,
        )
    return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
