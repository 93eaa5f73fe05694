"""Text memory for agents: one interface (add, search, get, update, delete, list), scoped by user, agent and
session; vector memory (embedded SQLite + FAISS, or Qdrant) and conversation memory.

    from latentmem.memory import VectorMemory
    mem = VectorMemory.open("store_dir")
    mem.add("Alice prefers green tea", user="alice")
    mem.search("what does alice drink?", user="alice", k=3)
"""

from latentmem.memory.base import (
    AddResult,
    Memory,
    MemoryInputError,
    MemoryNotFoundError,
    MemoryRecord,
    MemoryStoreError,
    MemoryVersion,
    Scope,
    ScopeError,
    SearchHit,
)
from latentmem.memory.config import VectorMemoryConfig
from latentmem.memory.conversation import (
    ConversationMemory,
    ConversationStore,
    FullBuffer,
    LastTurns,
    ModelSummarizer,
    TokenBudget,
    Turn,
)
from latentmem.memory.embedders import (
    Embedder,
    HashingEmbedder,
    HiddenStateEmbedder,
    SentenceTransformerEmbedder,
    load_embedder,
)
from latentmem.memory.vector import Retrieved, VectorMemory

__all__ = [
    "AddResult",
    "ConversationMemory",
    "ConversationStore",
    "Embedder",
    "FullBuffer",
    "HashingEmbedder",
    "HiddenStateEmbedder",
    "LastTurns",
    "Memory",
    "MemoryInputError",
    "MemoryNotFoundError",
    "MemoryRecord",
    "MemoryStoreError",
    "MemoryVersion",
    "ModelSummarizer",
    "Retrieved",
    "Scope",
    "ScopeError",
    "SearchHit",
    "SentenceTransformerEmbedder",
    "TokenBudget",
    "Turn",
    "VectorMemory",
    "VectorMemoryConfig",
    "load_embedder",
]
