"""Recall@1 against bank size, the trained facts among distractors (see latentmem.recall.scale).

.venv/bin/python scripts/recall_bank_scale.py --model smollm2-135m-instruct --facts 100 --rag
"""

import sys

from latentmem.recall.scale import main

if __name__ == "__main__":
    sys.exit(main())
