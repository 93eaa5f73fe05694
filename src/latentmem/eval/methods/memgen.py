"""The MemGen methods: a fresh weaver trained with the reasoner frozen, by SFT (memgen-sft), by GRPO on the
task's reward (memgen-grpo), or by SFT while it also reads the retrieved solved examples' vectors
(memgen-rag)."""

from __future__ import annotations

import time
from abc import abstractmethod
from pathlib import Path
from typing import Any

from latentmem.eval.method import Completions, Method, write_rows
from latentmem.eval.methods.frozen import SOLVED, solved_examples_store
from latentmem.eval.methods.generate import complete_with_memgen
from latentmem.eval.methods.recipes import grpo_recipe, recipe_dict, recipe_training, sft_training
from latentmem.memgen import LatentMemoryModel, RetrievedMemory
from latentmem.models import load_model


def _grpo_training(s: Any) -> dict[str, Any]:
    """The sampling and objective settings a GRPO arm records beside `recipe_training`'s."""
    return {
        "completions_per_prompt": s.num_generations,
        "temperature": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "beta": s.beta,
        "epsilon": s.epsilon,
        "updates_per_batch": 1,
    }


class _MemGenMethod(Method):
    """Shared by the MemGen methods: train with a recipe into `workdir/<name>` (from `ctx.init_from`'s
    weaver when set), load its `model/`."""

    continues = True

    @abstractmethod
    def recipe_config(self, rows: Path) -> Any:
        """The recipe's typed config for training rows at `rows`."""

    @abstractmethod
    def train(self, cfg: Any) -> Path:
        """Run the recipe; return its run folder (with `model/`)."""

    def fit(self) -> None:
        rows = write_rows(
            self.ctx.workdir / "train.jsonl", self.ctx.task, self.ctx.train, self.extra_columns()
        )
        self.recipe = self.recipe_config(rows)
        start = time.perf_counter()
        self.run_dir = self.train(self.recipe)
        self.train_seconds = time.perf_counter() - start
        base, tok = load_model(self.ctx.model, seed=self.ctx.seed)
        self.mm = LatentMemoryModel.from_pretrained(self.run_dir / "model", base, tok).eval()

    def extra_columns(self) -> list[dict[str, Any]] | None:
        """Extra training columns per example (None: the task's own columns only)."""
        return None

    def _common(self, rows: Path) -> dict[str, Any]:
        return recipe_dict(self.ctx, rows, self.name)

    def complete(self, prompts: list[str]) -> Completions:
        return complete_with_memgen(self.mm, prompts, self.ctx.task, self.ctx.eval_batch_size)

    @property
    def trainable_params(self) -> int:
        return self.mm.num_trainable()

    @property
    def state_dir(self) -> Path:
        return self.run_dir / "model"

    def start(self) -> str:
        """Where training started, for `training()`."""
        if self.ctx.init_from:
            return f"weaver of {self.ctx.init_from}, reasoner frozen"
        return "fresh weaver, reasoner frozen"

    def training(self) -> dict[str, Any]:
        return sft_training(self.recipe, self.run_dir, self.start())


class MemGenSFT(_MemGenMethod):
    name = "memgen-sft"

    def recipe_config(self, rows: Path):
        from latentmem.training.config import SFTConfig

        return SFTConfig.from_dict(self._common(rows))

    def train(self, cfg) -> Path:
        from latentmem.training.sft import train_sft

        return train_sft(cfg)


class MemGenGRPO(_MemGenMethod):
    name = "memgen-grpo"

    def recipe_config(self, rows: Path):
        return grpo_recipe(self.ctx, rows, self.name)

    def train(self, cfg) -> Path:
        from latentmem.training.grpo import train_grpo

        return train_grpo(cfg)

    def training(self) -> dict[str, Any]:
        return {
            **recipe_training(
                self.recipe,
                self.run_dir,
                algorithm="GRPO (latentmem Trainer)",
                loss_type="grpo",
                start=self.start(),
                rows_per_step=self.recipe.train.batch_size // self.recipe.grpo.num_generations,
            ),
            **_grpo_training(self.recipe.grpo),
        }


class MemGenRAG(MemGenSFT):
    """MemGen-SFT whose weaver also reads the MiniLM vectors of the `retrieval_k` most similar solved
    training examples (M = W([H; E])). In training an example never retrieves itself."""

    name = "memgen-rag"
    continues = False  # its store holds one task's solved examples

    def fit(self) -> None:
        self.store = solved_examples_store(self.ctx)
        super().fit()

    def extra_columns(self) -> list[dict[str, Any]]:
        k = self.ctx.retrieval_k
        columns = []
        for i, ex in enumerate(self.ctx.train):
            hits = self.store.search(ex.prompt, agent=SOLVED, k=k + 1)
            vectors = [h.record.vector.tolist() for h in hits if h.record.metadata["index"] != i][:k]
            columns.append({"memory": vectors})
        return columns

    def _common(self, rows: Path) -> dict[str, Any]:
        cfg = super()._common(rows)
        cfg["memgen"]["memory_dim"] = self.store.dim
        cfg["data"]["memory_column"] = "memory"
        return cfg

    def memory_for(self, prompts: list[str]) -> RetrievedMemory:
        found = [self.store.retrieve(p, agent=SOLVED, k=self.ctx.retrieval_k) for p in prompts]
        return RetrievedMemory.stack([f.vectors for f in found], self.store.dim)

    def complete(self, prompts: list[str]) -> Completions:
        return complete_with_memgen(
            self.mm, prompts, self.ctx.task, self.ctx.eval_batch_size, self.memory_for
        )
