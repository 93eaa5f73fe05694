"""Training the `rl` manager policy: a LoRA on the chat model, GRPO on the answer agent's exact match.
`latentmem train memory-manager --config configs/agent_memory/manager.yaml`.

Rows (`decision_rows`): the generated benchmark's episodes (their own seed, apart from the bench's) run
through a reference manager (`heuristic`); before each fact, the scope's memories are snapshot. A row is a
fact whose turn is evidence of some question, with the prompt the manager sees (`manager_prompt` over the
snapshot's top-k) and the questions answerable at that point (all their evidence stated by then). With
`reward.probes`, every fact is a row and its questions include a probe of every slot stated so far, as it
stands then (`slot_probes`), so that overwriting a memory whose question comes only later still costs
reward.

Rollouts: `option_logprobs` scores every operation `constraint.OperationConstraint` allows the row (ADD,
NOOP, UPDATE id, DELETE id over the ids it shows; at most 2 + 2 * manager_k) under token-by-token
softmax(z / temperature) over the allowed tokens, the decoding the `rl` policy uses at inference, from one
prefill of the prompt whose KV cache the options share; the G rollouts are drawn from that exact
distribution (`grpo.objective: grpo`), or every option is scored (`best`). So a step costs one prefill per
row, not one per sampled completion, and the entropy of each row's operation distribution is exact
(`grpo.entropy_coef` weighs a bonus on it).

Reward (outcome-driven, as Memory-R1): for each operation scored, the snapshot is copied into a
fresh scope of a scratch store, the operation parsed (`operations.py`: malformed -> NOOP) and applied,
and the answer agent answers the row's questions from it; the reward is its mean exact match. The
questions cover other memories too, so an operation that wrecks one (an UPDATE of the wrong id) loses
reward. With `reward.stale_penalty` > 0 (a shaped term: the generated benchmark knows which values are
outdated), a question also loses that much when the answer agent selected a stale memory for it, so
keeping the old value beside the new one costs reward even when the new one happens to rank first; 0 is
the pure outcome reward. The answer agent is the extractive one by default (`data.answerer`; `model` uses
the frozen chat model, the adapter off, at a model call per question and rollout). Either is
deterministic, so a row's reward depends only on the operation applied: each (row, operation) is scored
once, then cached.

Update (`grpo.objective`): `grpo`, group-relative advantages (`training.rollout.group_advantages`) and one
policy-gradient update per rollout batch, L = -1/N_global sum_i A_i * mean_t log pi(o_it) - entropy_coef *
mean_rows H(pi(. | row)), log-probs of the distribution the rollouts were drawn from; with one update per
batch the GRPO ratio is 1, so its clipped objective has exactly this gradient. `best`, every allowed
operation of the row is scored and L = -mean_rows log sum_{o best} pi(o) (minus the same entropy term): an
exhaustive best-of-N (expert iteration) step, still driven by the reward alone (rows whose operations
all tie give no gradient). The optimisation loop (accumulation, processes, checkpoints, resume, run
folder, metrics.jsonl) is the shared `training.loop.Trainer`; the adapter is `training.lora.LoRAModel`,
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
from latentmem.agent_memory.bench_data import SLOT_QUESTIONS, generate_benchmark
from latentmem.agent_memory.constraint import OperationConstraint, option_logprobs
from latentmem.agent_memory.episodes import ABSTAIN, Episode, Question, Turn
from latentmem.agent_memory.generation import ChatGenerator
from latentmem.agent_memory.loaders import longmemeval_episodes
from latentmem.agent_memory.manager import (
    HeuristicPolicy,
    MemoryManager,
    manager_prompt,
    prompt_numbers,
    store_line,
)
from latentmem.agent_memory.operations import Parsed, apply_operations, parse_operation
from latentmem.agent_memory.store_audit import SlotState
from latentmem.config import Config, require
from latentmem.memory.base import MemoryRecord, Scope
from latentmem.memory.vector import VectorMemory
from latentmem.models import load_model
from latentmem.seeding import seed_everything
from latentmem.training.checkpoint import RESUMABLE_FIELDS
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
class ManagerReward(Config):
    """What a rollout is scored on (module docstring). `stale_penalty`: taken off a question's exact
    match when the answer agent selected a stale memory for it (0: the pure outcome reward); `probes`:
    every fact is a row, also scored on the slots' questions as they stand then (`slot_probes`)."""

    stale_penalty: float = 0.0
    probes: bool = False

    def validate(self) -> None:
        require(self.stale_penalty >= 0, "reward.stale_penalty", f"must be >= 0, got {self.stale_penalty}")


PRESERVATION = ("ADD", "NOOP", "UPDATE", "DELETE")  # operation kinds, from the least destructive


def least_destructive(lines: Sequence[str], best: torch.Tensor) -> torch.Tensor:
    """(M,) bool: of the options `best` marks (`lines[j]`, the same (M,) order), those of the first kind in
    `PRESERVATION` that any of them has (`ManagerGRPO.keep_on_tie`)."""
    kinds = [line.partition(" ")[0] for line in lines]
    first = min(PRESERVATION.index(k) for k, b in zip(kinds, best.tolist(), strict=True) if b)
    keep = torch.tensor([k == PRESERVATION[first] for k in kinds], device=best.device)
    return best & keep


@dataclass
class ManagerGRPO(Config):
    """`objective`: `grpo`, G rollouts per row drawn at `temperature`, group-relative advantages; `best`,
    every operation the row allows is scored (at most 2 + 2 * manager_k, each (row, operation) once) and
    the loss is -log pi(the best-scoring ones), an exhaustive best-of-N step (expert iteration). Why
    `best`: under `grpo` the policy fell to all-ADD within 10 steps (README), since ADD is the best
    operation on most rows, and on the rest it only beats the average of the UPDATE / DELETE samples while
    the id is still a guess; the best-of-all target names the right id. `keep_on_tie` (with `best`): when
    operations tie for the best reward, the target is those that destroy least, the first kind present in
    `PRESERVATION` (ADD, NOOP, UPDATE, DELETE). Why: a row's questions cannot cover every memory (a memory
    asked about only through a later fact, the employer before its city is stated), so on about a fifth
    of the training rows an UPDATE or DELETE of an unrelated, still-true memory tied with ADD, and the
    policy learnt to overwrite (the destroyed memories were never stale ones: README). `entropy_coef`
    weighs a bonus on the entropy of each row's operation distribution (exact)."""

    num_generations: int = 4  # G
    temperature: float = 1.0
    entropy_coef: float = 0.0
    objective: Literal["grpo", "best"] = "grpo"
    keep_on_tie: bool = True

    def validate(self) -> None:
        require(
            self.num_generations >= 2, "grpo.num_generations", "must be >= 2 (advantages compare a group)"
        )
        require(self.temperature > 0, "grpo.temperature", f"must be > 0, got {self.temperature}")
        require(self.entropy_coef >= 0, "grpo.entropy_coef", f"must be >= 0, got {self.entropy_coef}")
        require(
            self.objective in ("grpo", "best"),
            "grpo.objective",
            f"must be grpo or best, got {self.objective!r}",
        )


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
    reward: ManagerReward = field(default_factory=ManagerReward)
    grpo: ManagerGRPO = field(default_factory=ManagerGRPO)
    lora: ManagerLoRA = field(default_factory=ManagerLoRA)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def resumable_fields(self) -> frozenset[str]:
        return RESUMABLE_FIELDS

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
    related: tuple[int, ...]  # the store ids of the memories the prompt shows, numbered 1..n there
    prompt: str
    questions: tuple[Question, ...]
    slots: SlotState  # the slots as of this fact (included): what is stale once it is applied

    @property
    def shown_ids(self) -> frozenset[int]:
        return frozenset(self.related)

    @property
    def numbers(self) -> frozenset[int]:
        """The ids the policy's operations name: `manager_prompt`'s numbers (`store_line` maps them)."""
        return prompt_numbers(len(self.related))


def slot_probes(turns: Sequence[Turn], asked: Sequence[Question]) -> tuple[Question, ...]:
    """Questions on the generated benchmark's slots as `turns` (the facts so far, in order) leave them,
    unless `asked` asks it already: for a changeable slot its own question (`SLOT_QUESTIONS`), gold the
    current value ("unknown" once retracted); for any other slot (employer, a company's city, an event's
    date) its latest fact with the value cut out ("The user works at what?"), gold the value. Without
    them a fact's reward covers only the questions answerable by then, so overwriting a memory whose
    question comes only later (an UPDATE of the wrong id) would cost nothing, and overwriting the employer
    memory paid: the extractive answer agent answers "What does the user work as?" from "The user works
    at Corvid." when both are stored (README)."""
    texts = {q.question for q in asked}
    latest = {turn.slot: turn for turn in turns if turn.slot is not None}
    out = []
    for slot, turn in latest.items():
        if slot in SLOT_QUESTIONS:
            question, gold = SLOT_QUESTIONS[slot], turn.value or ABSTAIN
        elif turn.value and turn.fact and turn.value in turn.fact:
            question, gold = turn.fact.replace(turn.value, "what").rstrip(".") + "?", turn.value
        else:
            continue
        if question not in texts:
            out.append(Question(f"probe/{slot}", "probe", question, gold))
    return tuple(out)


def decision_rows(
    episodes: Sequence[Episode], store: VectorMemory, manager_k: int, probes: bool = False
) -> list[DecisionRow]:
    """The rows of `episodes` (module docstring), their facts managed by `heuristic` in `store`; with
    `probes`, every fact is a row, scored on `slot_probes` too."""
    manager = MemoryManager(store, HeuristicPolicy(), k=manager_k)
    rows = []
    for ep in episodes:
        scope = scope_of(ep)
        turns = [turn for _, turn in ep.fact_turns()]
        order = {turn.key: i for i, turn in enumerate(turns)}
        for i, turn in enumerate(turns):
            asked = tuple(  # answerable now: every evidence turn stated by this fact
                q for q in ep.questions if q.evidence and all(order.get(e, i + 1) <= i for e in q.evidence)
            )
            slots = SlotState.of(turns[: i + 1])
            questions = asked + (slot_probes(turns[: i + 1], asked) if probes else ())
            request = manager.request(turn.fact, scope)
            if any(turn.key in q.evidence for q in asked) or (probes and questions):
                rows.append(
                    DecisionRow(
                        f"{ep.id}/{turn.key}",
                        turn.fact,
                        turn.key,
                        tuple(store.list(scope)),
                        tuple(h.record.id for h in request.related),
                        manager_prompt(turn.fact, request.related),
                        questions,
                        slots,
                    )
                )
            manager.observe(turn.fact, scope, metadata={"source": turn.key})
    return rows


class RewardScorer:
    """Scores operations on rows: each in a fresh scope of a scratch store, once per (row, operation)
    (module docstring). `stale_penalty` (reward.stale_penalty) is taken off a question's exact match
    when a stale memory is among those the answer agent selected for it (0: the pure outcome reward)."""

    def __init__(
        self,
        store: VectorMemory,
        answerer: ChatGenerator | None,
        answer_k: int,
        min_score: float = 0.5,
        stale_penalty: float = 0.0,
    ) -> None:
        self.store, self.answerer, self.answer_k, self.min_score = store, answerer, answer_k, min_score
        self.stale_penalty = stale_penalty
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
                answer_match(a.text, q.answer)
                - self.stale_penalty * any(row.slots.is_stale(h.record.text) for h in a.selected)
                for a, q in zip(answers, row.questions, strict=True)
            ) / len(row.questions)
        finally:
            self.store.delete_all(scope)


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
        train_rows = decision_rows(train_eps, store, d.manager_k, cfg.reward.probes)
        eval_rows = decision_rows(eval_eps, store, d.manager_k, cfg.reward.probes)
        job = launch(
            cfg,
            cfg.train.batch_size // G,
            functools.partial(build_manager_model, lora=cfg.lora.peft_config()),
        )
        model, device = job.model, job.dist.device
        generator = ChatGenerator(model.peft, model.tokenizer)
        score = RewardScorer(
            store,
            generator if d.answerer == "model" else None,
            d.answer_k,
            d.answer_min_score,
            cfg.reward.stale_penalty,
        )
        trainer = Trainer(job, n_rows=len(train_rows))

        def rewards(rows: Sequence[DecisionRow], outputs: Sequence[str]) -> torch.Tensor:
            """The reward of each output, an operation over its row's prompt numbers."""
            # the answer agent is the frozen base model: the adapter being trained is off while it answers
            with model.peft.disable_adapter():
                scores = [score(r, store_line(o, r.related)) for r, o in zip(rows, outputs, strict=True)]
            return torch.tensor(scores, device=device)

        def micro_step(ctx: StepContext) -> Metrics:
            rows = [train_rows[i] for i in ctx.indices]
            ids, mask = generator.encode([r.prompt for r in rows])
            constraint = OperationConstraint(model.tokenizer, [r.numbers for r in rows])
            scores = option_logprobs(model.peft, ids, mask, constraint, s.temperature)
            rng = ctx.generator(torch.device("cpu"))
            n_rows = len(ctx.step_indices)
            loss = torch.zeros((), device=device)
            metrics = Counter({"entropy": 0.0, "reward": 0.0, "tied_groups": 0.0})
            for b, row in enumerate(rows):
                idx, probs = scores.of_row(b)
                logp = scores.logp[idx]
                entropy = -(logp.exp() * logp).sum()
                if s.objective == "best":  # every operation scored; the target: the best of them
                    lines = [scores.lines[j] for j in idx]
                    r = rewards([row] * len(idx), lines)
                    weights = probs.to(device)
                    best = r == r.max()
                    if s.keep_on_tie:
                        best = least_destructive(lines, best)
                    term = torch.logsumexp(logp[best], 0)  # log pi(a best operation)
                else:  # G rollouts drawn from the row's exact operation distribution
                    picks = torch.multinomial(probs.cpu(), G, replacement=True, generator=rng).tolist()
                    members = [idx[j] for j in picks]
                    lines = [scores.lines[j] for j in members]
                    r = rewards([row] * G, lines)
                    weights = torch.full((G,), 1 / G, device=device)
                    adv = group_advantages(r, G)
                    term = (adv * scores.logp[members] / scores.tokens[members]).mean()  # mean_t log pi
                loss = loss - (term + s.entropy_coef * entropy) / n_rows
                metrics["entropy"] += entropy.item() / n_rows
                metrics["reward"] += float((weights * r).sum()) / n_rows
                metrics["tied_groups"] += float(r.std() == 0) / n_rows
                for line, w in zip(lines, weights.tolist(), strict=True):
                    metrics[f"share_{line.partition(' ')[0].lower()}"] += w / n_rows
            loss.backward()
            return (
                {"loss": loss.item()}
                | {k: metrics[k] for k in ("entropy", "reward", "tied_groups")}
                | {f"share_{kind}": metrics[f"share_{kind}"] for kind in ("add", "update", "delete", "noop")}
            )

        def evaluate(indices: list[int]) -> Metrics:
            rows = [eval_rows[i] for i in indices]
            outputs = generator.operations([r.prompt for r in rows], [r.numbers for r in rows])
            total = float(rewards(rows, outputs).sum()) if rows else 0.0
            return {"eval_reward": total / len(eval_rows)}

        trainer.fit(micro_step, evaluate if eval_rows else None, len(eval_rows), postfix="reward")
        store.close()
    return job.run.path


def run(config_path: str, overrides: list[str]) -> Path:
    """CLI entry: `latentmem train memory-manager --config FILE [key.sub=value ...]`."""
    return train_memory_manager(MemoryManagerConfig.from_yaml(config_path, overrides))
