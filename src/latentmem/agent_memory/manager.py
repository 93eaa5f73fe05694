"""`MemoryManager`: for each new fact, show a policy the fact and the top-k related memories (ids and
texts), read back one operation (`operations.py`) and apply it to the store in one transaction.

Policies, one interface (`Policy.decide`: a batch of requests -> one operation line each, parsed by the
same validating parser whoever wrote it):

- `add-only`: always ADD (mem0 v3's behaviour; the store still drops exact duplicates).
- `heuristic`: exact duplicate -> NOOP; a retraction ("no longer", "anymore", ...) -> DELETE the closest
  memory; the same subject and slot with a new value (the texts differ only in their last words, e.g.
  "The user lives in Porto." -> "... Lyon.") or a near-duplicate embedding -> UPDATE (recency wins);
  otherwise ADD.
- `prompted`: the chat model on `manager_prompt`: the most probable of the operations over the memories
  shown (`constraint.py`), which the prompt numbers 1..n (`store_line` maps them back to store ids).
- `rl`: the same prompt and decoding through a LoRA trained with GRPO (`agent_memory.train`).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentmem.agent_memory.errors import AgentMemoryError
from latentmem.agent_memory.generation import ChatGenerator
from latentmem.agent_memory.operations import Applied, Parsed, apply_operations, parse_operation
from latentmem.memory.base import ScopeLike, SearchHit, normalize_text
from latentmem.memory.vector import VectorMemory

POLICIES = ("add-only", "heuristic", "prompted", "rl")
_RETRACTION = re.compile(
    r"\b(no longer|not anymore|any ?more|stopped|gave up|got rid of|sold (my|their|his|her))\b", re.I
)
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Request:
    """One decision: the new fact and the related memories shown (best first)."""

    fact: str
    related: tuple[SearchHit, ...]


def manager_prompt(fact: str, related: Sequence[SearchHit]) -> str:
    """The prompt of the model policies (and of their GRPO training): the fact and the memories, numbered
    1..n in the order shown (`prompt_numbers`), not by their store ids. Why: store ids are arbitrary
    (global across users, several digits) and share prefixes ("4" and "44"); a policy trained on one
    user's consecutive ids then named "UPDATE 44" for memory 4 of another store. Numbered, the prompt
    reads the same in every store; `store_line` maps the answer back."""
    shown = "\n".join(f"[{i}] {h.record.text}" for i, h in enumerate(related, 1)) or "(none)"
    return (
        "You manage a user's memory. Decide what to do with a new fact.\n"
        f"Stored memories:\n{shown}\n"
        f"New fact: {fact}\n"
        "Reply with one operation:\n"
        "ADD - the fact is new information\n"
        "UPDATE <id> - the fact replaces memory <id> (a changed value)\n"
        "DELETE <id> - the fact says memory <id> is no longer true\n"
        "NOOP - the fact is already stored\n"
        "Operation:"
    )


class Policy(abc.ABC):
    """Chooses one operation line per request (`operations.py`'s format)."""

    name: str

    @abc.abstractmethod
    def decide(self, requests: Sequence[Request]) -> list[str]: ...


class AddOnlyPolicy(Policy):
    name = "add-only"

    def decide(self, requests: Sequence[Request]) -> list[str]:
        return ["ADD" for _ in requests]


def _words(text: str) -> list[str]:
    return _WORD.findall(normalize_text(text))


def same_slot(a: str, b: str, tail: int = 2) -> bool:
    """Whether two different texts state the same subject and slot: they agree on every word but their
    last `tail` at most, and on at least three ("the user lives in ..." with another city)."""
    wa, wb = _words(a), _words(b)
    if wa == wb:
        return False
    prefix = 0
    for x, y in zip(wa, wb, strict=False):
        if x != y:
            break
        prefix += 1
    return prefix >= 3 and prefix >= max(len(wa), len(wb)) - tail


@dataclass
class HeuristicPolicy(Policy):
    """Exact/near-duplicate merge and recency (module docstring). `near_duplicate`: cosine at or above
    which a memory is the same statement reworded (UPDATE); `retract_min`: the least similarity a memory
    must have to be the one a retraction removes."""

    near_duplicate: float = 0.92
    retract_min: float = 0.3
    name: str = "heuristic"

    def decide(self, requests: Sequence[Request]) -> list[str]:
        return [self._one(r) for r in requests]

    def _one(self, r: Request) -> str:
        key = normalize_text(r.fact)
        if any(normalize_text(h.record.text) == key for h in r.related):
            return "NOOP"
        if _RETRACTION.search(r.fact):
            best = next((h for h in r.related if h.score >= self.retract_min), None)
            return f"DELETE {best.record.id}" if best else "NOOP"
        for h in r.related:
            if same_slot(r.fact, h.record.text) or h.score >= self.near_duplicate:
                return f"UPDATE {h.record.id}"
        return "ADD"


@dataclass
class ModelPolicy(Policy):
    """The chat model's most probable operation on `manager_prompt` (`prompted`; with a trained LoRA,
    `rl`) among those `constraint.OperationConstraint` allows over the prompt's numbers (the mode of the
    distribution GRPO trains), returned over store ids (`store_line`)."""

    generator: ChatGenerator
    name: str = "prompted"

    def decide(self, requests: Sequence[Request]) -> list[str]:
        prompts = [manager_prompt(r.fact, r.related) for r in requests]
        lines = self.generator.operations(prompts, [prompt_numbers(len(r.related)) for r in requests])
        return [
            store_line(line, [h.record.id for h in r.related])
            for line, r in zip(lines, requests, strict=True)
        ]


def prompt_numbers(n: int) -> frozenset[int]:
    """The numbers `manager_prompt` gives n memories: the only ids a model policy's operation may name."""
    return frozenset(range(1, n + 1))


def store_line(line: str, ids: Sequence[int]) -> str:
    """An operation line over `manager_prompt`'s numbers as the same line over store ids, `ids` the store
    ids of the memories in the order shown (number i is `ids[i - 1]`); a number outside them, or a
    malformed line, is returned as it is, for `parse_operation` to reject."""
    kind, _, rest = line.partition(" ")
    number = rest.split(" ", 1)[0]
    if not number.isdigit() or not 1 <= int(number) <= len(ids):
        return line
    return f"{kind} {ids[int(number) - 1]}{rest[len(number) :]}"


def shown_ids(request: Request) -> frozenset[int]:
    """The ids of the memories `request` shows: the only ones its operation may name."""
    return frozenset(h.record.id for h in request.related)


def load_rl_generator(model: str, manager_dir: str | Path, batch_size: int = 8) -> ChatGenerator:
    """A fresh copy of `model` with the LoRA of a `latentmem train memory-manager` run (its folder or its
    `model/`). A copy: PEFT writes the adapter into the model it wraps, which must not reach the
    `prompted` policy or the answer agent."""
    from peft import PeftModel

    from latentmem.models import load_model

    path = Path(manager_dir)
    if (path / "model" / "adapter_config.json").is_file():
        path = path / "model"
    if not (path / "adapter_config.json").is_file():
        raise AgentMemoryError(
            f"--manager {manager_dir}: no LoRA adapter there; give the folder of a `latentmem train "
            "memory-manager` run (it holds model/adapter_config.json)"
        )
    base, tokenizer = load_model(model)
    return ChatGenerator(PeftModel.from_pretrained(base, str(path)).eval(), tokenizer, batch_size)


def make_policy(
    name: str,
    generator: ChatGenerator | None = None,
    manager_dir: str | Path | None = None,
    model: str | None = None,
) -> Policy:
    """The policy called `name` (one of `POLICIES`); `prompted` needs `generator`, `rl` the `model` name
    and the trained `manager_dir`."""
    if name == "add-only":
        return AddOnlyPolicy()
    if name == "heuristic":
        return HeuristicPolicy()
    if name == "prompted":
        if generator is None:
            raise AgentMemoryError("policy 'prompted' needs a model (--model)")
        return ModelPolicy(generator)
    if name != "rl":
        raise AgentMemoryError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    if manager_dir is None or model is None:
        raise AgentMemoryError(
            "policy 'rl' needs the model and the trained manager: --model M --manager RUN_DIR"
        )
    return ModelPolicy(load_rl_generator(model, manager_dir), name="rl")


@dataclass
class Decision:
    """One fact's outcome: what was shown, the policy's raw output, its parse and what was applied."""

    request: Request
    parsed: Parsed
    applied: list[Applied]


class MemoryManager:
    """Keeps a `VectorMemory` current, one fact at a time, with a `Policy` (module docstring)."""

    def __init__(self, store: VectorMemory, policy: Policy, *, k: int = 5) -> None:
        self.store, self.policy, self.k = store, policy, k

    def request(self, fact: str, scope: ScopeLike) -> Request:
        """The decision to make for `fact`: its top-k related memories in `scope`."""
        return Request(fact, tuple(self.store.search(fact, scope, k=self.k)))

    def observe(self, fact: str, scope: ScopeLike, *, metadata: Mapping[str, Any] | None = None) -> Decision:
        """Decide and apply one operation for `fact`."""
        return self.observe_many([(fact, scope, metadata)])[0]

    def observe_many(
        self, items: Sequence[tuple[str, ScopeLike, Mapping[str, Any] | None]]
    ) -> list[Decision]:
        """One fact for each of several scopes (e.g. users), decided in one batch: the facts must be
        independent, so at most one per scope."""
        requests = [self.request(fact, scope) for fact, scope, _ in items]
        raws = self.policy.decide(requests)
        out = []
        for (fact, scope, metadata), req, raw in zip(items, requests, raws, strict=True):
            parsed = parse_operation(raw, fact, shown_ids(req), max_chars=self.store.config.max_chars)
            applied = apply_operations(self.store, [parsed.operation], scope, metadata=metadata)
            out.append(Decision(req, parsed, applied))
        return out
