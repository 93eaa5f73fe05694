"""Step 1 objectives compared: contrastive (InfoNCE over the bank) vs the seed's MSE, by recall@1.

    .venv/bin/python scripts/recall_step1_compare.py --model smollm2-135m-instruct --facts 64

Same model, facts, bank, initial head and steps for both (step 1 alone, head only, through
`recall.train.train_recall`); reports memory-head recall@1 on the trained questions and on held-out
paraphrases, as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from latentmem.recall.config import RecallTrainConfig
from latentmem.recall.train import train_recall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--encoder", default="minilm", choices=["minilm", "hidden"])
    p.add_argument("--facts", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = {"model": args.model, "encoder": args.encoder, "facts": args.facts, "steps": args.steps}
    with tempfile.TemporaryDirectory() as runs:
        for objective in ("contrastive", "mse"):
            cfg = RecallTrainConfig.from_dict(
                {
                    "model": args.model,
                    "encoder": args.encoder,
                    "num_facts": args.facts,
                    "seed": args.seed,
                    "output_dir": str(Path(runs) / objective),
                    "step1": {
                        "objective": objective,
                        "steps": args.steps,
                        "batch_size": 32,
                        "lr": args.lr,
                        "train_model": False,
                    },
                    "step2": {"epochs": 0},
                }
            )
            m = train_recall(cfg).metrics
            out["before"] = m["recall_at_1_before"]
            out[objective] = {
                "recall_at_1": m["step1_recall_at_1"],
                "recall_at_1_paraphrase": m["step1_recall_at_1_paraphrase"],
                "loss_first": m["step1_loss_first"],
                "loss_last": m["step1_loss_last"],
            }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
