"""Is a fact's value readable from its memory vector? A linear probe, on subjects it never saw.

    .venv/bin/python scripts/recall_vector_probe.py --model smollm2-135m-instruct --encoder hidden

Writes `--train` + `--test` generated facts (`recall.data.make_facts`, seed `--seed`, kept off the
training stream's seed 0) with the encoder recall training uses, fits scikit-learn's logistic regression
from the vector to the first token of the fact's value on the first `--train`, and reports its accuracy on
the other `--test` (new subjects, and for invented city names new values), per kind of fact, as JSON. An
upper bound of sorts for what a decoder can read from one vector with a linear map; a year's first token
is its first digit (SmolLM2 splits numbers into digits), so that kind's score says little.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from sklearn.linear_model import LogisticRegression

from latentmem.models import load_model
from latentmem.recall.data import make_facts
from latentmem.recall.writer import HiddenStateEncoder, SentenceEncoder

KINDS = ("city", "object", "colour", "year")  # make_facts cycles through its templates in this order


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--encoder", default="hidden", choices=["minilm", "hidden"])
    p.add_argument("--train", type=int, default=1400)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    model, tok = load_model(args.model)
    encoder = SentenceEncoder() if args.encoder == "minilm" else HiddenStateEncoder(model.eval(), tok)
    facts = make_facts(args.train + args.test, seed=args.seed)
    x = encoder.encode([f.text for f in facts]).numpy()
    y = [tok(" " + f.answer, add_special_tokens=False).input_ids[0] for f in facts]
    n = args.train
    probe = LogisticRegression(max_iter=2000, C=10.0).fit(x[:n], y[:n])
    hits = probe.predict(x[n:]) == y[n:]
    kinds: dict[str, list[bool]] = defaultdict(list)
    for i, hit in enumerate(hits, start=n):
        kinds[KINDS[i % len(KINDS)]].append(bool(hit))
    out = {"model": args.model, "encoder": args.encoder, "train": n, "test": args.test}
    out["accuracy"] = round(float(hits.mean()), 3)
    out["by_kind"] = {k: round(sum(v) / len(v), 3) for k, v in kinds.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
