"""Training the `rl` manager policy: a LoRA on the chat model, GRPO on the answer agent's exact match.
`latentmem train memory-manager --config configs/agent_memory/manager.yaml`.

Rows (`decision_rows`): the generated benchmark's episodes (their own seed, apart from the bench's) run
through a reference manager (`heuristic`); before each fact, the scope's memories are snapshot. A row is a
fact whose turn is evidence of some question, with the prompt the manager sees (`manager_prompt` over the
snapshot's top-k) and the questions answerable at that point (all their evidence stated by then).

Rollouts: G operations per row, sampled at `grpo.temperature` under `constraint.OperationConstraint` (ADD,
NOOP, UPDATE id, DELETE id over the ids the row shows), the decoding the `rl` policy uses at inference.

Reward (outcome-driven, as Memory-R1): for each of G sampled operations, the snapshot is copied into a
fresh scope of a scratch store, the operation parsed (`operations.py`: malformed -> NOOP) and applied,
and the answer agent answers the row's questions from it; the reward is its mean exact match. The
questions cover other memories too, so an operation that wrecks one (an UPDATE of the wrong id) loses
reward. The answer agent is the extractive one by default (`data.answerer`; `model` uses the frozen chat
model, the adapter off, at a model call per question and rollout). Either is deterministic, so a row's
reward depends only on the operation applied: each (row, operation) is scored once, then cached (a row
has at most 2 + 2 * manager_k operations).

Update: group-relative advantages (`training.rollout.group_advantages`) and one policy-gradient update per
rollout batch, L = -1/N_global sum_i A_i * mean_t log pi(o_it), log-probs of softmax(z / temperature) over
the tokens the constraint allows, the distribution the rollouts were drawn from. With one update per
batch the GRPO ratio is 1, so its clipped objective has exactly this gradient. The optimisation loop (accumulation, processes, checkpoints, resume,
run folder, metrics.jsonl) is the shared `training.loop.Trainer`; the adapter is `training.lora.LoRAModel`,
saved to `<output_dir>/model` where `latentmem bench agent-memory --policies rl --manager DIR` reads it.
"""

from __future__ import annotations

import functools
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from peft import LoraConfig, get_peft_model

from latentmem.agent_memory.answer import AnswerAgent, answer_match
from latentmem.agent_memory.bench import scope_of
from latentmem.agent_memory.bench_data import generate_benchmark
from latentmem.agent_memory.constraint import OperationConstraint
from latentmem.agent_memory.episodes import Episode, Question
from latentmem.agent_memory.generation import ChatGenerator
from latentmem.agent_memory.loaders import longmemeval_episodes
from latentmem.agent_memory.manager import HeuristicPolicy, MemoryManager, manager_prompt, shown_ids
from latentmem.agent_memory.operations import Parsed, apply_operations, parse_operation
from latentmem.config import Config, require
from latentmem.memory.base import MemoryRecord, Scope
from latentmem.memory.vector import VectorMemory
from latentmem.models import load_model
from latentmem.seeding import seed_everything
from latentmem.training.config import TrainConfig
from latentmem.training.loop import Metrics, StepContext, Trainer, launch
from latentmem.training.lora import LoRAModel
from latentmem.training.rollout import group_advantages


@dataclass
class ManagerData(Config):
    """The training episodes (generated; `seed` apart from the bench's 0) and how rewards are scored."""

    users: int = 16
    eval_users: int = 4  # episodes of seed + 1, scored greedily at the start and the end
    seed: int = 1000
    manager_k: int = 5  # related memories in the prompt
    answer_k: int = 20  # memories the answer agent retrieves
    answerer: Literal["extractive", "model"] = "extractive"
    answer_min_score: float = 0.5  # the extractive agent's least similarity to keep a memory (MiniLM's scale)
    embedder: str = "minilm"

    def validate(self) -> None:
        require(self.users >= 1, "data.users", f"must be >= 1, got {self.users}")
        require(self.eval_users >= 0, "data.eval_users", f"must be >= 0, got {self.eval_users}")
        require(self.manager_k >= 1, "data.manager_k", f"must be >= 1, got {self.manager_k}")
        require(self.answer_k >= 1, "data.answer_k", f"must be >= 1, got {self.answer_k}")


@dataclass
class ManagerGRPO(Config):
    num_generations: int = 4  # G
    temperature: float = 1.0

    def validate(self) -> None:
        require(
            self.num_generations >= 2, "grpo.num_generations", "must be >= 2 (advantages compare a group)"
        )
        require(self.temperature > 0, "grpo.temperature", f"must be > 0, got {self.temperature}")


@dataclass
class ManagerLoRA(Config):
    r: int = 8
    alpha: int = 16
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def validate(self) -> None:
        require(self.r >= 1, "lora.r", f"must be >= 1, got {self.r}")
        require(bool(self.targets), "lora.targets", "name at least one module, e.g. [q_proj, v_proj]")

    def peft_config(self) -> LoraConfig:
        """PEFT's config, without dropout: the loop trains in eval mode."""
        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, target_modules=list(self.targets), lora_dropout=0.0
        )


@dataclass
class MemoryManagerConfig(Config):
    """`latentmem train memory-manager`. `train.batch_size` counts completions: batch_size / G rows a step."""

    model: str = "smollm2-135m-instruct"
    seed: int = 0
    output_dir: str = "runs/memory-manager"
    data: ManagerData = field(default_factory=ManagerData)
    grpo: ManagerGRPO = field(default_factory=ManagerGRPO)
    lora: ManagerLoRA = field(default_factory=ManagerLoRA)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(bool(self.output_dir), "output_dir", "give a run folder, e.g. runs/memory-manager")
        g = self.grpo.num_generations
        require(
            self.train.batch_size % (g * self.train.grad_accum) == 0,
            "grpo.num_generations",
            f"G={g} times train.grad_accum={self.train.grad_accum} must divide train.batch_size="
            f"{self.train.batch_size} (the batch counts completions, G per row); change one of them",
        )


@dataclass(frozen=True)
class DecisionRow:
    """One fact to decide on: the memories before it, the prompt over its top-k, the questions scored.
    `key` (episode and turn) names the row, e.g. in the reward cache."""

    key: str
    fact: str
    source: str  # the turn's key, the written memory's metadata
    snapshot: tuple[MemoryRecord, ...]  # the scope's memories before the fact, oldest first
    shown_ids: frozenset[int]
    prompt: str
    questions: tuple[Question, ...]


def decision_rows(episodes: Sequence[Episode], store: VectorMemory, manager_k: int) -> list[DecisionRow]:
    """The rows of `episodes` (module docstring), their facts managed by `heuristic` in `store`."""
    manager = MemoryManager(store, HeuristicPolicy(), k=manager_k)
    rows = []
    for ep in episodes:
        scope = scope_of(ep)
        order = {turn.key: i for i, (_, turn) in enumerate(ep.fact_turns())}
        for i, (_, turn) in enumerate(ep.fact_turns()):
            asked = tuple(  # answerable now: every evidence turn stated by this fact
                q for q in ep.questions if q.evidence and all(order.get(e, i + 1) <= i for e in q.evidence)
            )
            request = manager.request(turn.fact, scope)
            if any(turn.key in q.evidence for q in asked):
                rows.append(
                    DecisionRow(
                        f"{ep.id}/{turn.key}",
                        turn.fact,
                        turn.key,
                        tuple(store.list(scope)),
                        shown_ids(request),
                        manager_prompt(turn.fact, request.related),
                        asked,
                    )
                )
            manager.observe(turn.fact, scope, metadata={"source": turn.key})
    return rows


class RewardScorer:
    """Scores operations on rows: each in a fresh scope of a scratch store, once per (row, operation)
    (module docstring)."""

    def __init__(
        self, store: VectorMemory, answerer: ChatGenerator | None, answer_k: int, min_score: float = 0.5
    ) -> None:
        self.store, self.answerer, self.answer_k, self.min_score = store, answerer, answer_k, min_score
        self._scopes = 0
        self._cache: dict[tuple[str, str], float] = {}

    def __call__(self, row: DecisionRow, output: str) -> float:
        parsed = parse_operation(output, row.fact, row.shown_ids, max_chars=self.store.config.max_chars)
        key = (row.key, parsed.operation.format())
        if key not in self._cache:
            self._cache[key] = self._score(row, parsed)
        return self._cache[key]

    def _score(self, row: DecisionRow, parsed: Parsed) -> float:
        self._scopes += 1
        scope = Scope(user=f"rollout-{self._scopes}")
        try:
            added = self.store.add_many(
                [r.text for r in row.snapshot],
                scope,
                metadatas=[r.metadata for r in row.snapshot],
                vectors=np.stack([r.vector for r in row.snapshot]) if row.snapshot else None,
            )
            id_map = {r.id: a.id for r, a in zip(row.snapshot, added, strict=True)}
            apply_operations(
                self.store, [parsed.operation], scope, metadata={"source": row.source}, id_map=id_map
            )
            agent = AnswerAgent(self.store, self.answerer, k=self.answer_k, min_score=self.min_score)
            answers = agent.answer_many([(q.question, scope) for q in row.questions])
            return sum(
                answer_match(a.text, q.answer) for a, q in zip(answers, row.questions, strict=True)
            ) / len(row.questions)
        finally:
            self.store.delete_all(scope)


def completion_mask(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, N) bool: the completion tokens up to and including the first EOS (padding after it is EOS too
    for tokenizers whose pad is EOS, so it cannot be told apart by value)."""
    is_eos = ids == eos_id
    before = is_eos.long().cumsum(1) - is_eos.long()  # EOS tokens strictly before each position
    return before == 0


def completion_logprobs(
    model: LoRAModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion: torch.Tensor,
    temperature: float,
    constraint: OperationConstraint,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) log-probs of the completion tokens under softmax(z / temperature) over the tokens
    `constraint` allows (the rollout's distribution), 0 after EOS; and their (B, N) mask."""
    mask = completion_mask(completion, model.tokenizer.eos_token_id)
    ids = torch.cat([prompt_ids, completion], 1)
    attn = torch.cat([prompt_mask, mask.long()], 1)
    logits = model(ids, attn)[:, prompt_ids.shape[1] - 1 : -1]
    return constraint.logprobs(logits, completion, temperature).masked_fill(~mask, 0.0), mask


def build_manager_model(cfg: MemoryManagerConfig, device: torch.device, lora: LoraConfig) -> LoRAModel:
    """`cfg.model` with a fresh adapter (B = 0: it starts as the base model), seeded."""
    model, tokenizer = load_model(cfg.model, device=device, seed=cfg.seed)
    seed_everything(cfg.seed)
    return LoRAModel(get_peft_model(model, lora), tokenizer)


def train_memory_manager(cfg: MemoryManagerConfig) -> Path:
    """Run the recipe (module docstring); return the run folder."""
    d, s = cfg.data, cfg.grpo
    G = s.num_generations
    with tempfile.TemporaryDirectory(prefix="latentmem-manager-") as tmp:
        store = VectorMemory.open(Path(tmp) / "store", embedder=d.embedder)
        train_eps = longmemeval_episodes(generate_benchmark(d.users, d.seed), "train")
        eval_eps = (
            longmemeval_episodes(generate_benchmark(d.eval_users, d.seed + 1), "eval") if d.eval_users else []
        )
        train_rows = decision_rows(train_eps, store, d.manager_k)
        eval_rows = decision_rows(eval_eps, store, d.manager_k)
        job = launch(
            cfg,
            cfg.train.batch_size // G,
            functools.partial(build_manager_model, lora=cfg.lora.peft_config()),
        )
        model, device = job.model, job.dist.device
        generator = ChatGenerator(model.peft, model.tokenizer)
        score = RewardScorer(
            store, generator if d.answerer == "model" else None, d.answer_k, d.answer_min_score
        )
        trainer = Trainer(job, n_rows=len(train_rows))

        def rewards(rows: Sequence[DecisionRow], outputs: Sequence[str]) -> torch.Tensor:
            # the answer agent is the frozen base model: the adapter being trained is off while it answers
            with model.peft.disable_adapter():
                return torch.tensor([score(r, o) for r, o in zip(rows, outputs, strict=True)], device=device)

        def micro_step(ctx: StepContext) -> Metrics:
            rows = [train_rows[i] for i in ctx.indices for _ in range(G)]
            ids, mask = generator.encode([r.prompt for r in rows])
            constraint = OperationConstraint(model.tokenizer, [r.shown_ids for r in rows])
            torch.manual_seed(ctx.generator(torch.device("cpu")).initial_seed())  # HF sampling: global RNG
            completion = generator.generate_ids(
                ids, mask, constraint.max_new_tokens, temperature=s.temperature, constraint=constraint
            )
            outputs = generator.decode(completion)
            r = rewards(rows, outputs)
            adv = group_advantages(r, G)
            logp, cmask = completion_logprobs(model, ids, mask, completion, s.temperature, constraint)
            per_seq = logp.sum(1) / cmask.sum(1).clamp(min=1)
            n_global = len(ctx.step_indices) * G
            loss = -(adv * per_seq).sum() / n_global
            loss.backward()
            kinds = Counter(o.partition(" ")[0] for o in outputs)  # constrained: always an operation
            return {"loss": loss.item(), "reward": float(r.sum()) / n_global} | {
                f"share_{kind}": kinds[kind.upper()] / n_global
                for kind in ("add", "update", "delete", "noop")
            }

        def evaluate(indices: list[int]) -> Metrics:
            rows = [eval_rows[i] for i in indices]
            outputs = generator.operations([r.prompt for r in rows], [r.shown_ids for r in rows])
            total = float(rewards(rows, outputs).sum()) if rows else 0.0
            return {"eval_reward": total / len(eval_rows)}

        trainer.fit(micro_step, evaluate if eval_rows else None, len(eval_rows), postfix="reward")
        store.close()
    return job.run.path


def run(config_path: str, overrides: list[str]) -> Path:
    """CLI entry: `latentmem train memory-manager --config FILE [key.sub=value ...]`."""
    return train_memory_manager(MemoryManagerConfig.from_yaml(config_path, overrides))
