"""Recall@1 against bank size: the trained facts among up to 100k distractor memories (issue 14, item 5).

    .venv/bin/python scripts/recall_bank_scale.py --model smollm2-135m-instruct --facts 100

Trains the memory head (step 1 alone, on the model's frozen hidden states, as `configs/recall/` does),
then writes banks of growing size: the trained facts A, the new facts B (written after training, never
trained on), and distractors. Distractors are facts of the same four kinds with other invented subjects
(`make_facts(..., syllables=(4, 5))`, none asking an A or B question): the hardest kind of neighbour, the
same template with another name. Per bank size, the memory head's recall@1 on A's trained questions, A's
held-out paraphrases, and B's questions and paraphrases, through `MemoryHead.score_bank` (the path
generation takes: exact below 4,097 entries, the bank's index above), and through an exact scan of the
whole bank (what the index costs).

Encoding a memory from the model's hidden state costs a forward pass (about 500 a minute for SmolLM2 on
two CPU cores), so only `--real-distractors` are encoded; larger banks are filled with vectors drawn
from a Gaussian with the mean and covariance of the real distractors' vectors, normalised
(`synthetic_like`), and the output says how many of each. `--rag` adds the RAG baseline: MiniLM over the
same texts (real distractor texts to every size: MiniLM is cheap), top-1 by cosine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from latentmem.recall.bank import MemoryBank
from latentmem.recall.config import RecallTrainConfig
from latentmem.recall.data import Fact, make_facts
from latentmem.recall.errors import RecallError
from latentmem.recall.head import MemoryHead
from latentmem.recall.train import TrainedRecall, recall_hidden, train_recall
from latentmem.recall.writer import HiddenStateEncoder, MemoryEncoder, SentenceEncoder

# the four query sets, each (facts, which question)
QUERY_SETS = (("A", "question"), ("A", "paraphrase"), ("B", "question"), ("B", "paraphrase"))


def distractor_facts(n: int, taken: Sequence[Fact], seed: int = 0) -> list[Fact]:
    """`n` facts of the same kinds as `taken`, with 4-5 syllable subjects, none asking a question of
    `taken` (a distractor that did would be a second right answer)."""
    asked = {q for f in taken for q in (f.question, f.paraphrase)}
    out: list[Fact] = []
    k = n
    while len(out) < n:  # a collision is rare; draw a little more until there are n
        out = [f for f in make_facts(k, seed=seed + 1, syllables=(4, 5)) if f.question not in asked][:n]
        k += n - len(out)
    return out


def synthetic_like(vectors: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """`n` unit vectors from a Gaussian with the mean and covariance of `vectors` (N, D): (n, D) float32.
    Hidden-state memories share a large common direction; an isotropic draw would be far easier to tell
    apart from them than real memories are."""
    rng = np.random.default_rng(seed)
    mean = vectors.mean(0)
    cov = np.cov(vectors, rowvar=False)
    draw = rng.multivariate_normal(mean, cov, size=n, method="eigh")  # eigh: cov may be singular
    return (draw / np.linalg.norm(draw, axis=1, keepdims=True)).astype(np.float32)


def _hits(best: torch.Tensor, expected: Sequence[int]) -> float:
    return int((best.cpu() == torch.as_tensor(expected)).sum()) / len(expected)


def head_recall(
    head: MemoryHead, hidden: torch.Tensor, bank: MemoryBank, expected: Sequence[int]
) -> tuple[float, float]:
    """Recall@1 of `hidden` (Q, D) whose right memories are the bank ids `expected` (Q,): through
    `score_bank` (generation's path) and through an exact scan of the whole bank."""
    with torch.no_grad():
        logits, ids = head.score_bank(hidden, bank)
        served = ids.gather(1, logits.argmax(-1, keepdim=True))[:, 0]
        all_ids, vectors = bank.matrix()
        exact = all_ids[head.logits(hidden, vectors.to(hidden.device)).argmax(-1).cpu()]
    return _hits(served, expected), _hits(exact, expected)


def _bank(texts: Sequence[str], vectors: np.ndarray) -> MemoryBank:
    bank = MemoryBank(vectors.shape[1])
    bank.add(list(texts), vectors)
    return bank


def measure(
    trained: TrainedRecall,
    new_facts: Sequence[Fact],
    distractors: Sequence[Fact],
    sizes: Sequence[int],
    *,
    synthetic_seed: int = 0,
    rag: MemoryEncoder | None = None,
    encode_batch: int = 32,
) -> dict:
    """Rows of recall@1 per bank size (ids in order: A, B, real distractors, then `synthetic_like`
    vectors; a query set is measured where its facts are all in the bank), with the encoding's cost."""
    tok, head = trained.tokenizer, trained.memory.head
    groups = {"A": list(trained.facts), "B": list(new_facts)}
    first = {"A": 0, "B": len(groups["A"])}
    known = [*groups["A"], *groups["B"]]
    texts = [f.text for f in [*known, *distractors]]
    encoder = HiddenStateEncoder(trained.model, tok, batch_size=encode_batch)
    t0 = time.perf_counter()
    chunks = range(0, len(texts), 1024)
    vectors = torch.cat(
        [encoder.encode(texts[s : s + 1024]) for s in tqdm(chunks, desc="writing memories", unit="k")]
    ).numpy()
    encode_s = time.perf_counter() - t0
    written = trained.bank.matrix()[1].numpy()
    if not np.allclose(vectors[: len(written)], written, atol=1e-4):
        raise RecallError("re-encoded trained facts differ from the trained bank's vectors: not one encoder")
    n_synthetic = max(max(sizes) - len(texts), 0)
    if n_synthetic:
        vectors = np.concatenate(
            [vectors, synthetic_like(vectors[len(known) :], n_synthetic, synthetic_seed)]
        )
        texts += [f"(synthetic {i})" for i in range(n_synthetic)]
    queries = {(g, kind): [getattr(f, kind) for f in groups[g]] for g, kind in QUERY_SETS if groups[g]}
    hidden = {
        key: torch.cat([recall_hidden(trained.model, tok, qs[s : s + 32]) for s in range(0, len(qs), 32)])
        for key, qs in queries.items()
    }
    real = len(texts) - n_synthetic
    rag_texts = rag_queries = None
    if rag is not None:
        rag_texts = rag.encode(texts[:real]).numpy()
        rag_queries = {key: rag.encode(qs).numpy() for key, qs in queries.items()}
    rows = []
    for n in sizes:
        bank = _bank(texts[:n], vectors[:n])
        row: dict = {
            "bank_size": len(bank),
            "real_distractors": max(min(n, real) - len(known), 0),
            "synthetic_distractors": max(n - real, 0),
            "index": bank.index.backend,
        }
        rag_bank = _bank(texts[:n], rag_texts[:n]) if rag_texts is not None and n <= real else None
        for (g, kind), h in hidden.items():
            expected = list(range(first[g], first[g] + len(groups[g])))
            if expected[-1] >= n:
                continue
            t = time.perf_counter()
            served, exact = head_recall(head, h, bank, expected)
            cell = {"recall_at_1": served, "exact_scan": exact}
            cell["ms_per_query"] = round(1000 * (time.perf_counter() - t) / len(expected), 2)
            if rag_bank is not None and rag_queries is not None:
                ids = rag_bank.search(rag_queries[g, kind], 1)[1][:, 0]
                cell["rag_recall_at_1"] = _hits(torch.from_numpy(ids), expected)
            row[f"{g}_{kind}"] = cell
        rows.append(row)
    return {"rows": rows, "encoded": real, "encode_seconds": round(encode_s, 1)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--facts", type=int, default=100, help="trained facts A (100)")
    p.add_argument("--new-facts", type=int, default=100, help="facts B written after training (100)")
    p.add_argument("--extra-facts", type=int, default=300, help="step1.extra_facts (300)")
    p.add_argument("--steps", type=int, default=300, help="step-1 steps (300)")
    p.add_argument("--sizes", default="100,200,1000,10000,100000", help="bank sizes")
    p.add_argument("--real-distractors", type=int, default=9800, help="distractors encoded by the model")
    p.add_argument("--rag", action="store_true", help="also MiniLM top-1 over the same texts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = p.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="latentmem-recall-scale-") as run:
        cfg = RecallTrainConfig.from_dict(
            {
                "model": args.model,
                "encoder": "hidden",
                "num_facts": args.facts,
                "seed": args.seed,
                "output_dir": run,
                "step1": {
                    "steps": args.steps,
                    "batch_size": 64,
                    "lr": 0.003,
                    "train_model": False,
                    "extra_facts": args.extra_facts,
                },
                "step2": {"epochs": 0},
                "lora": {"r": 0},
            }
        )
        trained = train_recall(cfg)
    new = make_facts(args.facts + args.new_facts, seed=args.seed)[args.facts :]
    n_real = min(args.real_distractors, max(max(sizes) - args.facts - args.new_facts, 0))
    distractors = distractor_facts(n_real, [*trained.facts, *new], seed=args.seed)
    rag = SentenceEncoder() if args.rag else None
    result = measure(trained, new, distractors, sizes, synthetic_seed=args.seed, rag=rag)
    out = {"config": vars(args) | {"out": str(args.out)}, "train": trained.metrics, **result}
    text = json.dumps(out, indent=2, default=float)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0
