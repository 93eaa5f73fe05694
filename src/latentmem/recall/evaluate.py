"""The seed's evaluation plan: recall memory vs RAG-in-prompt vs LoRA-SFT vs no memory, on fictional facts.

    python scripts/recall_eval.py --config configs/recall/eval_smollm2.yaml

For each method: retrieval recall@1 (memory head for recall memory, MiniLM search for RAG), answer
accuracy on the trained questions and on paraphrases (the answer string in the reply), generation
seconds per answer (batched greedy generation time / answers), context tokens per answer (the prompt the
model reads, retrieved text included for RAG), and retention: accuracy on held-out general questions
(real capitals, small sums) with the method's final weights, against the base model's.
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
from latentmem.recall.data import QA, Fact, general_task, make_facts, split_general
from latentmem.recall.generate import RecallGenerator
from latentmem.recall.memory import RecallMemory
from latentmem.recall.train import LoraSettings, RecallTrainConfig, recall_at_1, train_recall
from latentmem.recall.writer import SentenceEncoder, write_memories
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


def retention(gen: RecallGenerator, general: Sequence[QA], cfg: EvalConfig) -> float:
    return answer(gen, gen.render([q.question for q in general]), [q.answer for q in general], cfg).accuracy


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

    def row(name: str, gen: RecallGenerator, prompts_q, prompts_p, r1: float | None, retain: float) -> None:
        a, p = answer(gen, prompts_q, answers, cfg), answer(gen, prompts_p, answers, cfg)
        results[name] = {
            "recall_at_1": r1,
            "answer_accuracy": a.accuracy,
            "answer_accuracy_paraphrase": p.accuracy,
            "seconds_per_answer": a.seconds_per_answer,
            "context_tokens": a.context_tokens,
            "retention": retain,
            "example_reply": a.replies[0],
            # how often the model chose to recall, and recalled fact i first for question i (ids = indices)
            "recall_rate": sum(bool(r) for r in a.recalled) / len(a.recalled),
            "generation_recall_at_1": sum(bool(r) and r[0] == i for i, r in enumerate(a.recalled))
            / len(a.recalled),
        }

    # no memory, and RAG with MiniLM: both on the base weights
    model, tok = load_model(rc.model, seed=rc.seed)
    encoder = SentenceEncoder()
    gen = _plain_generator(model, tok, encoder.dim)
    base_retention = retention(gen, held_out, cfg)
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
    if "recall" in cfg.methods:
        _recall_rows(cfg, questions, paraphrases, held_out, row, results)
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
        retention(gen, held_out, cfg),
    )
    results["LoRA-SFT on the facts"]["train_loss_first_last"] = (
        (sft_losses[0], sft_losses[-1]) if sft_losses else None
    )


def _recall_rows(cfg, questions, paraphrases, held_out, row, results) -> None:
    """Recall memory after the two-step recipe: once where the model decides to recall by itself, once
    with `<recall>` forced at the start of the reply (isolates decoding from the injected memory)."""
    trained = train_recall(cfg.recall)
    gen = RecallGenerator(trained.model, trained.tokenizer, trained.memory, trained.bank)
    vectors = trained.bank.matrix()[1]
    r1 = recall_at_1(trained.model, trained.tokenizer, trained.memory, vectors, questions)
    r1_p = recall_at_1(trained.model, trained.tokenizer, trained.memory, vectors, paraphrases)
    retain = retention(gen, held_out, cfg)
    for name, forced in (("recall memory (model decides)", False), ("recall memory (<recall> forced)", True)):
        row(
            name,
            gen,
            gen.render(questions, recall_first=forced),
            gen.render(paraphrases, recall_first=forced),
            r1,
            retain,
        )
        results[name]["recall_at_1_paraphrase"] = r1_p
    results["recall memory (model decides)"]["training"] = trained.metrics


def markdown(results: dict[str, dict]) -> str:
    def fmt(v):
        return "–" if v is None else f"{v:.2f}"

    lines = [
        "| method | recall@1 (q / paraphrase) | recalled in generation (rate / right) "
        "| answer acc (q / paraphrase) | s per answer | context tokens | retention |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
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
