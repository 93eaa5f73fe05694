"""The memory methods that store the training examples as memories and read one back as a vector: recall
memory (`recall`: the model emits `<recall>`, its memory head picks the memory, the projected vector is
injected as `<|memory_pad|>`; `latentmem.recall`) and xRAG-style injection (`xrag`: the retriever's top-1
memory projected into one embedding in the prompt; `latentmem.recall.xrag`).

The memories are the training examples: an example's `statement` column when the task has one (the
`facts` task, and fact files read by it), else its prompt followed by its target. Both methods answer the
test prompts from the bank of these memories, so on a fact task they score by finding the fact a
paraphrased question asks about and saying its answer.

Budget. `budget.steps` optimiser steps of `budget.batch_size` rows at `budget.lr`, as every trained method:
for xrag, steps of its projector; for recall, step 2 (decoding from the injected memory, the step that
runs the reasoner forward and backward), after a step 1 of as many steps that fits the memory head alone on
frozen hidden states (no backward through the reasoner; `training()` reports both). `method_args` of the
comparison (`method_args.recall.step2.retention_kl=0`) override the recall or xRAG config.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from latentmem.eval.method import Completions, Context, Method
from latentmem.eval.methods.generate import batches
from latentmem.eval.task import Example

if TYPE_CHECKING:  # the recall package imports torch and transformers: imported when a method runs
    from latentmem.recall.generate import RecallOutput

# recall memory's recipe in `latentmem compare` (configs/recall/eval_smollm2.yaml's settings, at the budget)
RECALL_DEFAULTS: dict[str, Any] = {
    "encoder": "hidden",
    "num_general": 16,
    "num_val_general": 0,
    "step1": {"objective": "contrastive", "train_model": False, "lr": 3e-3},
    "step2": {"epochs": 1, "mix": [1.0, 2.0, 1.0], "retention_kl": 1.0},
    "lora": {"r": 8, "alpha": 16, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
}


def memory_text(ctx: Context, example: Example) -> str:
    """What an example stores: its `statement` when it has one, else its prompt and target."""
    statement = example.columns.get("statement")
    return (
        statement
        if isinstance(statement, str) and statement
        else f"{example.prompt} {ctx.task.target(example)}"
    )


def answer_text(example: Example) -> str:
    """The answer string a recall reply states: the gold answer, or its first alias."""
    answer = example.answer
    return str(answer[0] if isinstance(answer, list | tuple) and answer else answer)


def _merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """The layers deep-merged, later ones winning (defaults, then the run's settings, then `method_args`)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = (
                _merged(out[key], value)
                if isinstance(value, dict) and isinstance(out.get(key), dict)
                else value
            )
    return out


def _completions(
    prompts: list[str],
    batch_size: int,
    answer: Callable[[list[str]], tuple[RecallOutput, list[list[str]]]],
) -> Completions:
    """`answer` over `prompts` in batches of `batch_size`, as `Completions`; `answer` returns the batch's
    output and, per prompt, the texts of the memories read for it."""
    texts, seconds, new_tokens, prompt_tokens, read = [], 0.0, 0, 0, []
    for batch in tqdm(batches(prompts, batch_size), desc=f"generate ({len(prompts)})", leave=False):
        out, batch_read = answer(batch)
        texts += out.texts
        seconds += out.seconds
        new_tokens += sum(len(ids) for ids in out.token_ids)
        prompt_tokens += sum(out.prompt_tokens)
        read += batch_read
    return Completions(texts, seconds, new_tokens, prompt_tokens, read)


class RecallMemoryMethod(Method):
    """Recall memory trained on the training examples as facts (`recall.train.train_recall`)."""

    name = "recall"

    def fit(self) -> None:
        from latentmem.recall.config import RecallTrainConfig
        from latentmem.recall.data import Fact
        from latentmem.recall.train import train_recall

        ctx, b = self.ctx, self.ctx.budget
        facts = [Fact(memory_text(ctx, ex), ex.prompt, ex.prompt, answer_text(ex)) for ex in ctx.train]
        out = ctx.workdir / self.name
        shutil.rmtree(out, ignore_errors=True)  # every arm starts fresh (see `recipes.recipe_dict`)
        base = {
            "model": ctx.model,
            "seed": ctx.seed,
            "output_dir": str(out),
            "num_facts": len(facts),
            "eval_max_new_tokens": ctx.task.max_new_tokens,
            "step1": {"steps": b.steps, "batch_size": b.batch_size},
            "step2": {"samples_per_epoch": b.steps * b.batch_size, "batch_size": b.batch_size, "lr": b.lr},
        }
        self.config = RecallTrainConfig.from_dict(_merged(RECALL_DEFAULTS, base, ctx.extra))
        start = time.perf_counter()
        self.trained = train_recall(self.config, facts)
        self.train_seconds = time.perf_counter() - start

    def add_memories(self, examples: list[Example]) -> None:
        """Encoded as the trained bank was (`recall.evaluate.writer`: the base model's hidden state, or
        MiniLM), without training."""
        from latentmem.recall.evaluate import writer
        from latentmem.recall.writer import write_memories

        texts = [memory_text(self.ctx, ex) for ex in examples]
        write_memories(
            self.trained.bank, writer(self.config), texts, [{"answer": answer_text(ex)} for ex in examples]
        )

    def complete(self, prompts: list[str]) -> Completions:
        from latentmem.chat import render_chat
        from latentmem.recall.generate import RecallGenerator

        t, task = self.trained, self.ctx.task
        gen = RecallGenerator(t.model, t.tokenizer, t.memory, t.bank)

        def answer(batch: list[str]) -> tuple[RecallOutput, list[list[str]]]:
            rendered = [render_chat(t.tokenizer, p, system=task.system) for p in batch]
            out = gen.generate(rendered, max_new_tokens=task.max_new_tokens)
            return out, [[event.text for event in events] for events in out.recalls]

        return _completions(prompts, self.ctx.eval_batch_size, answer)

    @property
    def trainable_params(self) -> int:
        return self.trained.trainable_params

    def training(self) -> dict[str, Any]:
        c, m = self.config, self.trained.metrics
        return {
            "algorithm": "recall memory: step 1 (memory head, InfoNCE) then step 2 (decoding from the memory)",
            "loss_type": "step 2: token-mean NLL + head InfoNCE + retention KL (weight "
            f"{c.step2.retention_kl})",
            "schedule": "constant",
            "lr": c.step2.lr,
            "steps": c.step2.steps,
            "step1_steps": c.step1.steps,
            "rows_per_step": c.step2.batch_size,
            "rows_seen": c.step2.steps * c.step2.batch_size,
            "start": "base model + fresh recall memory (recall rows, head, projector, LoRA r="
            f"{c.lora.r}), base weights frozen",
            "recall_at_1_train_questions": m.get("recall_at_1"),
            "fact_recall_rate": m.get("fact_recall_rate"),
            "general_recall_rate": m.get("general_recall_rate"),
            "step2_loss_first_last": [m.get("step2_loss_first"), m.get("step2_loss_last")],
            "run": str(self.trained.run),
        }


class XRAGMethod(Method):
    """xRAG-style injection: the top-1 memory by MiniLM, projected into one prompt embedding
    (`recall.xrag.train_xrag`)."""

    name = "xrag"

    def fit(self) -> None:
        from latentmem.recall.xrag import XRAGConfig, XRAGRow, train_xrag

        ctx, b = self.ctx, self.ctx.budget
        texts = [memory_text(ctx, ex) for ex in ctx.train]
        rows = [XRAGRow(i, texts[i], ex.prompt, ctx.task.target(ex)) for i, ex in enumerate(ctx.train)]
        out = ctx.workdir / self.name
        shutil.rmtree(out, ignore_errors=True)
        base = {
            "model": ctx.model,
            "seed": ctx.seed,
            "output_dir": str(out),
            "steps": b.steps,
            "batch_size": b.batch_size,
            "lr": b.lr,
        }
        self.config = XRAGConfig.from_dict(_merged(base, ctx.extra))
        start = time.perf_counter()
        self.trained = train_xrag(self.config, texts, rows)
        self.train_seconds = time.perf_counter() - start

    def add_memories(self, examples: list[Example]) -> None:
        from latentmem.recall.writer import write_memories

        t = self.trained
        write_memories(t.bank, t.encoder, [memory_text(self.ctx, ex) for ex in examples])

    def complete(self, prompts: list[str]) -> Completions:
        task = self.ctx.task

        def answer(batch: list[str]) -> tuple[RecallOutput, list[list[str]]]:
            t = self.trained
            out, ids = t.answer(batch, max_new_tokens=task.max_new_tokens, system=task.system)
            return out, [[t.bank.text(i)] for i in ids]

        return _completions(prompts, self.ctx.eval_batch_size, answer)

    @property
    def trainable_params(self) -> int:
        return self.trained.trainable_params

    def training(self) -> dict[str, Any]:
        c, losses = self.config, self.trained.losses
        return {
            "algorithm": "xRAG-style projector training (restate + answer rows), reasoner frozen",
            "loss_type": "token-mean NLL of the target",
            "schedule": "constant",
            "lr": c.lr,
            "steps": len(losses),
            "rows_per_step": c.batch_size,
            "rows_seen": len(losses) * c.batch_size,
            "start": f"base model + fresh projector (LoRA r={c.lora.r}), base weights frozen",
            "restate_share": c.restate_share,
            "extra_memories": c.extra_memories,
            "loss_first_last": [losses[0], losses[-1]] if losses else None,
            "run": str(self.trained.run),
        }
