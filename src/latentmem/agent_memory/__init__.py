"""Agent memory managed by operations (Memory-R1): a `MemoryManager` that chooses ADD / UPDATE / DELETE /
NOOP for each new fact with a policy (add-only, heuristic, prompted, or a GRPO-trained LoRA), an
`AnswerAgent` that distils what it retrieves before answering, loaders of LoCoMo and LongMemEval, a
generated benchmark in LongMemEval's schema and `latentmem bench agent-memory`.

    from latentmem.agent_memory import HeuristicPolicy, MemoryManager
    manager = MemoryManager(VectorMemory.open("store"), HeuristicPolicy())
    manager.observe("The user lives in Porto.", {"user": "ana"})
    manager.observe("The user lives in Lyon.", {"user": "ana"})   # UPDATE: Porto stays in the history
"""

from latentmem.agent_memory.answer import Answer, AnswerAgent, answer_match
from latentmem.agent_memory.bench_data import generate_benchmark
from latentmem.agent_memory.episodes import Episode, Question, Session, Turn
from latentmem.agent_memory.errors import AgentMemoryError, BenchmarkSchemaError
from latentmem.agent_memory.loaders import load_locomo, load_longmemeval, longmemeval_episodes
from latentmem.agent_memory.manager import (
    POLICIES,
    AddOnlyPolicy,
    HeuristicPolicy,
    MemoryManager,
    ModelPolicy,
    Policy,
    make_policy,
)
from latentmem.agent_memory.operations import Operation, apply_operations, parse_operation

__all__ = [
    "POLICIES",
    "AddOnlyPolicy",
    "AgentMemoryError",
    "Answer",
    "AnswerAgent",
    "BenchmarkSchemaError",
    "Episode",
    "HeuristicPolicy",
    "MemoryManager",
    "ModelPolicy",
    "Operation",
    "Policy",
    "Question",
    "Session",
    "Turn",
    "answer_match",
    "apply_operations",
    "generate_benchmark",
    "load_locomo",
    "load_longmemeval",
    "longmemeval_episodes",
    "make_policy",
    "parse_operation",
]
