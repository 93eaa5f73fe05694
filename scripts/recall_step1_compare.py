"""Step 1 objectives compared: contrastive (InfoNCE over the bank) vs the seed's MSE, by recall@1.

    .venv/bin/python scripts/recall_step1_compare.py --model smollm2-135m-instruct --facts 64

Same model, facts, bank, initial head and steps for both; reports memory-head recall@1 on the trained
questions and on held-out paraphrases, as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json

from latentmem.models import load_model
from latentmem.recall.bank import MemoryBank
from latentmem.recall.data import make_facts
from latentmem.recall.memory import RecallMemory
from latentmem.recall.tokens import NewRowTraining
from latentmem.recall.train import RecallTrainConfig, Step1Config, encoder_for, recall_at_1, train_step1
from latentmem.recall.writer import write_memories
from latentmem.seeding import seed_everything


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--encoder", default="minilm", choices=["minilm", "hidden"])
    p.add_argument("--facts", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    seed_everything(args.seed)
    cfg = RecallTrainConfig(model=args.model, encoder=args.encoder, num_facts=args.facts, seed=args.seed)
    model, tok = load_model(cfg.model, seed=cfg.seed)
    facts = make_facts(cfg.num_facts, seed=cfg.seed)
    encoder = encoder_for(cfg, model, tok)
    bank = MemoryBank(encoder.dim)
    write_memories(bank, encoder, [f.text for f in facts])
    vectors = bank.matrix()[1]
    memory = RecallMemory.attach(model, tok, encoder.dim, seed=cfg.seed)
    for p_ in model.parameters():
        p_.requires_grad_(False)
    rows = NewRowTraining(model, memory.tokens)
    start = copy.deepcopy(memory.head.state_dict())
    questions, paraphrases = [f.question for f in facts], [f.paraphrase for f in facts]
    out = {"model": args.model, "encoder": args.encoder, "facts": args.facts, "steps": args.steps}
    out["before"] = recall_at_1(model, tok, memory, vectors, questions)
    for objective in ("contrastive", "mse"):
        memory.head.load_state_dict(start)
        step = Step1Config(
            objective=objective, steps=args.steps, batch_size=32, lr=args.lr, train_model=False
        )
        losses = train_step1(model, tok, memory, vectors, facts, step, rows, [], seed=cfg.seed)
        out[objective] = {
            "recall_at_1": recall_at_1(model, tok, memory, vectors, questions),
            "recall_at_1_paraphrase": recall_at_1(model, tok, memory, vectors, paraphrases),
            "loss_first": losses[0],
            "loss_last": losses[-1],
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
