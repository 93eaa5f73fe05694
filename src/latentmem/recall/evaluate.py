"""The seed's evaluation plan: recall memory vs RAG-in-prompt vs LoRA-SFT vs no memory, on fictional facts.

    python scripts/recall_eval.py --config configs/recall/eval_smollm2.yaml

For each method: retrieval recall@1 (memory head for recall memory, MiniLM search for RAG), answer
accuracy on the trained questions and on paraphrases (the answer string in the reply), generation
seconds per answer (batched greedy generation time / answers), context tokens per answer (the prompt the
model reads, retrieved text included for RAG), and retention: accuracy on held-out general questions
(real capitals, small sums) with the method's final weights, against the base model's.

For recall memory also: the `<recall>` decision itself (`recall_decision`: fact questions are the
positives, the held-out general questions the negatives), and new memories written after training
(`new_facts`: set B, `make_facts(num_facts + new_facts)[num_facts:]`, added to the trained bank with the
same encoder and no training) against the trained facts A, in the same bank A + B.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentmem.chat import render_chat
from latentmem.config import Config, require
from latentmem.models import load_model
from latentmem.recall.bank import MemoryBank
from latentmem.recall.config import LoraSettings, RecallTrainConfig
from latentmem.recall.data import (
    NEW_FACT_RESERVE,
    QA,
    Fact,
    general_task,
    make_facts,
    split_general,
)
from latentmem.recall.generate import RecallGenerator
from latentmem.recall.memory import RecallMemory
from latentmem.recall.train import recall_at_1, train_recall
from latentmem.recall.writer import HiddenStateEncoder, MemoryEncoder, SentenceEncoder, write_memories
from latentmem.runs import RunDir
from latentmem.seeding import seed_everything
from latentmem.training.config import SFTConfig
from latentmem.training.lora import train_lora_sft

RAG_TEMPLATE = "Fact: {fact}\nQuestion: {question}"
METHODS = ("none", "rag", "sft", "recall")


@dataclass
class EvalConfig(Config):
    recall: RecallTrainConfig = field(default_factory=RecallTrainConfig)
    sft_steps: int = 30
    sft_batch_size: int = 8  # facts per step (all of them when there are fewer)
    sft_lr: float = 2e-3
    sft_lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=8, alpha=16))
    max_new_tokens: int = 40
    batch_size: int = 16
    output_dir: str = "runs/recall-eval"
    methods: list[str] = field(default_factory=lambda: list(METHODS))  # a subset runs faster
    new_facts: int = 0  # facts of set B, written into the bank after training (0: no such rows)

    def validate(self) -> None:
        require(self.sft_steps >= 1, "sft_steps", f"must be >= 1, got {self.sft_steps}")
        require(self.sft_batch_size > 0, "sft_batch_size", "must be > 0")
        require(self.sft_lr > 0, "sft_lr", "must be > 0")
        require(self.sft_lora.r > 0, "sft_lora.r", "the LoRA-SFT baseline needs r > 0")
        unknown = sorted(set(self.methods) - set(METHODS))
        require(not unknown, "methods", f"unknown {unknown}; choose from {', '.join(METHODS)}")
        require(
            self.max_new_tokens > 0 and self.batch_size > 0, "max_new_tokens", "and batch_size must be > 0"
        )
        require(
            0 <= self.new_facts <= NEW_FACT_RESERVE,
            "new_facts",
            f"must be in [0, {NEW_FACT_RESERVE}] (beyond, set B would meet step1.extra_facts), got "
            f"{self.new_facts}",
        )


@dataclass
class Answers:
    accuracy: float
    seconds_per_answer: float
    context_tokens: float
    replies: list[str]
    recalled: list[list[int]]  # per question, the memory ids recalled during generation


def answer(gen: RecallGenerator, prompts: Sequence[str], answers: Sequence[str], cfg: EvalConfig) -> Answers:
    """Greedy replies to chat-rendered `prompts`; correct when the answer string appears in the reply."""
    replies, seconds, tokens, recalled = [], 0.0, [], []
    for s in range(0, len(prompts), cfg.batch_size):
        out = gen.generate(prompts[s : s + cfg.batch_size], max_new_tokens=cfg.max_new_tokens)
        replies += out.texts
        recalled += [[e.memory_id for e in events] for events in out.recalls]
        seconds += out.seconds
        tokens += out.prompt_tokens
    hits = [a.lower() in r.lower() for a, r in zip(answers, replies, strict=True)]
    return Answers(
        sum(hits) / len(hits), seconds / len(prompts), sum(tokens) / len(tokens), replies, recalled
    )


def _plain_generator(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, memory_dim: int
) -> RecallGenerator:
    """A generator that never recalls: the baselines share the same decoding loop and stopping rule."""
    return RecallGenerator(model, tok, RecallMemory.attach(model, tok, memory_dim), recall="never")


def retention(gen: RecallGenerator, general: Sequence[QA], cfg: EvalConfig) -> Answers:
    """Replies to the held-out general questions (`.accuracy` is the retention)."""
    return answer(gen, gen.render([q.question for q in general]), [q.answer for q in general], cfg)


def recall_decision(on_facts: Sequence[bool], on_general: Sequence[bool]) -> dict[str, float | None]:
    """Precision / recall of the `<recall>` decision: whether each reply recalled at all, on fact questions
    (the positives: they need a memory) and on general questions (the negatives: they do not).

    precision = recalls on facts / all recalls (None when nothing recalled); recall = recalls on facts /
    fact questions; general_no_recall = general questions answered without a recall (the specificity).
    """
    tp, fp = sum(on_facts), sum(on_general)
    return {
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / len(on_facts) if on_facts else None,
        "general_no_recall": 1 - fp / len(on_general) if on_general else None,
    }


def fact_sft(
    facts: Sequence[Fact], cfg: EvalConfig
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, list[float]]:
    """The LoRA-SFT baseline: the token-mean next-token loss on `question -> memory text + answer`, trained
    by `training.lora` (the shared loop, in the run folder `<output_dir>/lora-sft`, beside the rows it
    trains on). Returns the merged model, its tokenizer and the per-step losses."""
    run = Path(cfg.output_dir) / "lora-sft"
    run.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f.question, "answer": f"{f.text} The answer is {f.answer}."} for f in facts]
    data = run / "facts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = SFTConfig.from_dict(
        {
            "model": cfg.recall.model,
            "seed": cfg.recall.seed,
            "output_dir": str(run),
            "data": {"path": str(data)},
            "train": {
                "steps": cfg.sft_steps,
                "batch_size": min(cfg.sft_batch_size, len(facts)),
                "lr": cfg.sft_lr,
                # as the recall steps train: a constant rate, no clipping, no weight decay
                "schedule": "constant_with_warmup",
                "max_grad_norm": 0.0,
                # the rows are rewritten from the recall config on every evaluation: a checkpoint left by
                # an earlier one may have trained on other facts
                "resume": False,
            },
        }
    )
    path, trained = train_lora_sft(recipe, cfg.sft_lora.peft_config())
    losses = [m["loss"] for m in RunDir(path).metrics() if "loss" in m]
    return trained.peft.merge_and_unload().eval(), trained.tokenizer, losses


def evaluate(cfg: EvalConfig) -> dict[str, dict[str, float]]:
    """Run all four methods; returns {method: metrics}."""
    rc = cfg.recall
    seed_everything(rc.seed)
    facts = make_facts(rc.num_facts, seed=rc.seed)
    held_out = split_general(general_task(rc.num_general, seed=rc.seed))[1]  # never trained on
    questions, paraphrases = [f.question for f in facts], [f.paraphrase for f in facts]
    answers = [f.answer for f in facts]
    results: dict[str, dict[str, float]] = {}

    def row(
        name: str,
        gen: RecallGenerator,
        prompts_q: Sequence[str],
        prompts_p: Sequence[str],
        r1: float | None,
        retain: float,
        gold: Sequence[str] = answers,
        first_id: int = 0,
    ) -> tuple[Answers, Answers]:
        """Score `gen` on the questions and paraphrases of facts whose answers are `gold` and whose bank
        ids start at `first_id`; returns the two sets of answers."""
        a, p = answer(gen, prompts_q, gold, cfg), answer(gen, prompts_p, gold, cfg)
        results[name] = {
            "recall_at_1": r1,
            "answer_accuracy": a.accuracy,
            "answer_accuracy_paraphrase": p.accuracy,
            "seconds_per_answer": a.seconds_per_answer,
            "context_tokens": a.context_tokens,
            "retention": retain,
            # every reply, in question order: what a wrong answer said is the first thing to look at
            "replies": a.replies,
            "replies_paraphrase": p.replies,
            # how often the model chose to recall, and recalled fact i first for question i (ids = indices)
            "recall_rate": sum(bool(r) for r in a.recalled) / len(a.recalled),
            "generation_recall_at_1": sum(bool(r) and r[0] == first_id + i for i, r in enumerate(a.recalled))
            / len(a.recalled),
        }
        return a, p

    # no memory, and RAG with MiniLM: both on the base weights
    model, tok = load_model(rc.model, seed=rc.seed)
    encoder = SentenceEncoder()
    gen = _plain_generator(model, tok, encoder.dim)
    base_retention = retention(gen, held_out, cfg).accuracy
    if "none" in cfg.methods:
        row("no memory", gen, gen.render(questions), gen.render(paraphrases), None, base_retention)
    bank = MemoryBank(encoder.dim)
    write_memories(bank, encoder, [f.text for f in facts])
    rag = {}
    for name, qs in (("q", questions), ("p", paraphrases)) if "rag" in cfg.methods else ():
        _, ids = bank.search(encoder.encode(qs), 1)
        rag[name] = (
            [
                render_chat(tok, RAG_TEMPLATE.format(fact=bank.text(int(i)), question=q))
                for i, q in zip(ids[:, 0], qs, strict=True)
            ],
            float((torch.from_numpy(ids[:, 0]) == torch.arange(len(qs))).float().mean()),
        )
    if rag:
        row("RAG (MiniLM top-1 in prompt)", gen, rag["q"][0], rag["p"][0], rag["q"][1], base_retention)
        results["RAG (MiniLM top-1 in prompt)"]["recall_at_1_paraphrase"] = rag["p"][1]
    if "sft" in cfg.methods:
        _sft_row(cfg, facts, questions, paraphrases, held_out, encoder.dim, row, results)
    if "rag" in cfg.methods and cfg.new_facts:  # RAG on set B, from a bank holding A and B
        new = make_facts(rc.num_facts + cfg.new_facts, seed=rc.seed)[rc.num_facts :]
        write_memories(bank, encoder, [f.text for f in new])
        prompts, hits = {}, {}
        for name, qs in (("q", [f.question for f in new]), ("p", [f.paraphrase for f in new])):
            _, ids = bank.search(encoder.encode(qs), 1)
            prompts[name] = [
                render_chat(tok, RAG_TEMPLATE.format(fact=bank.text(int(i)), question=q))
                for i, q in zip(ids[:, 0], qs, strict=True)
            ]
            hits[name] = float((ids[:, 0] == len(facts) + torch.arange(len(qs)).numpy()).mean())
        name = "RAG, new facts B"
        row(name, gen, prompts["q"], prompts["p"], hits["q"], base_retention, [f.answer for f in new])
        results[name]["recall_at_1_paraphrase"] = hits["p"]
    if "recall" in cfg.methods:
        _recall_rows(cfg, questions, paraphrases, held_out, row, results, base_retention)
    return results


def _sft_row(cfg, facts, questions, paraphrases, held_out, memory_dim, row, results) -> None:
    sft_model, tok, sft_losses = fact_sft(facts, cfg)
    gen = _plain_generator(sft_model, tok, memory_dim)
    row(
        "LoRA-SFT on the facts",
        gen,
        gen.render(questions),
        gen.render(paraphrases),
        None,
        retention(gen, held_out, cfg).accuracy,
    )
    results["LoRA-SFT on the facts"]["train_loss_first_last"] = (
        (sft_losses[0], sft_losses[-1]) if sft_losses else None
    )


def writer(cfg: RecallTrainConfig) -> MemoryEncoder:
    """The encoder that wrote the trained bank, to write new memories into the same vector space: MiniLM,
    or the hidden state of a fresh *base* model (training wrote with the base weights, before any LoRA)."""
    if cfg.encoder == "minilm":
        return SentenceEncoder()
    model, tok = load_model(cfg.model, seed=cfg.seed)
    return HiddenStateEncoder(model, tok)


def _recall_rows(cfg, questions, paraphrases, held_out, row, results, base_retention) -> None:
    """Recall memory after the two-step recipe: once where the model decides to recall by itself, once
    with `<recall>` forced at the start of the reply (isolates decoding from the injected memory); then,
    with `cfg.new_facts`, the same two on facts B written into the bank after training."""
    rc = cfg.recall
    trained = train_recall(rc)
    tok, memory = trained.tokenizer, trained.memory
    gen = RecallGenerator(trained.model, tok, memory, trained.bank)
    vectors = trained.bank.matrix()[1]
    r1 = recall_at_1(trained.model, tok, memory, vectors, questions)
    r1_p = recall_at_1(trained.model, tok, memory, vectors, paraphrases)
    general = retention(gen, held_out, cfg)
    decided: list[bool] = []
    for name, forced in (("recall memory (model decides)", False), ("recall memory (<recall> forced)", True)):
        a, p = row(
            name,
            gen,
            gen.render(questions, recall_first=forced),
            gen.render(paraphrases, recall_first=forced),
            r1,
            general.accuracy,
        )
        results[name]["recall_at_1_paraphrase"] = r1_p
        if not forced:
            decided = [bool(r) for r in a.recalled + p.recalled]
    results["recall memory (model decides)"]["training"] = trained.metrics
    # the base model's retention on the same questions, in the row even when the baselines are not run
    results["recall memory (model decides)"]["base_retention"] = base_retention
    results["recall memory (model decides)"]["recall_decision"] = recall_decision(
        decided, [bool(r) for r in general.recalled]
    )
    if not cfg.new_facts:
        return
    # set B: written into the trained bank now, never trained on; the head scores A and B together
    new = make_facts(rc.num_facts + cfg.new_facts, seed=rc.seed)[rc.num_facts :]
    ids = write_memories(trained.bank, writer(rc), [f.text for f in new], [{"answer": f.answer} for f in new])
    first = ids[0]  # ids are given in order: B's ids, and rows of the bank matrix, follow A's
    vectors = trained.bank.matrix()[1]
    new_q, new_p = [f.question for f in new], [f.paraphrase for f in new]
    nr1 = recall_at_1(trained.model, tok, memory, vectors, new_q, first=first)
    nr1_p = recall_at_1(trained.model, tok, memory, vectors, new_p, first=first)
    for name, forced in (("model decides", False), ("<recall> forced", True)):
        name = f"recall memory, new facts B ({name})"
        row(
            name,
            gen,
            gen.render(new_q, recall_first=forced),
            gen.render(new_p, recall_first=forced),
            nr1,
            general.accuracy,
            [f.answer for f in new],
            first,
        )
        results[name]["recall_at_1_paraphrase"] = nr1_p
    # facts A again, now among A + B: do the new memories disturb the trained ones?
    results["recall memory (model decides)"]["recall_at_1_in_bank_a_b"] = (
        recall_at_1(trained.model, tok, memory, vectors, questions),
        recall_at_1(trained.model, tok, memory, vectors, paraphrases),
    )


def markdown(results: dict[str, dict]) -> str:
    def fmt(v):
        return "–" if v is None else f"{v:.2f}"

    lines = [
        "| method | recall@1 (q / paraphrase) | recalled in generation (rate / right) "
        "| answer acc (q / paraphrase) | s per answer | context tokens | retention |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "recall_decision" in r:
            decision = ", ".join(f"{k} {fmt(v)}" for k, v in r["recall_decision"].items())
            name = f"{name} [decision: {decision}]"
        lines.append(
            f"| {name} | {fmt(r['recall_at_1'])} / {fmt(r.get('recall_at_1_paraphrase'))} "
            f"| {r['recall_rate']:.2f} / {r['generation_recall_at_1']:.2f} "
            f"| {r['answer_accuracy']:.2f} / {r['answer_accuracy_paraphrase']:.2f} "
            f"| {r['seconds_per_answer']:.3f} | {r['context_tokens']:.1f} | {r['retention']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = p.parse_args(argv)
    cfg = EvalConfig.from_yaml(args.config, args.overrides)
    run = RunDir.create(Path(cfg.output_dir), cfg, cfg.recall.seed)
    results = evaluate(cfg)
    (run.path / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (run.path / "results.md").write_text(table + "\n")
    print(table)
    print(run.path)
    return 0
