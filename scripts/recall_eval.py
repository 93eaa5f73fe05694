"""Recall memory vs RAG vs LoRA-SFT vs no memory on fictional facts (see latentmem.recall.evaluate).

python scripts/recall_eval.py --config configs/recall/eval_smollm2.yaml
"""

import sys

from latentmem.recall.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
