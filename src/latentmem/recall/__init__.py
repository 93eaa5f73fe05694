"""Autoregressive recall memory: a `<recall>` token, a memory head, injected memory vectors (DESIGN.md §2)."""

from latentmem.recall.bank import BANK_SCOPE, BankEntry, MemoryBank
from latentmem.recall.errors import (
    BankDimensionError,
    BankEntryNotFoundError,
    BankInputError,
    BankStorageError,
    EmptyBankError,
    NoBankError,
    RecallError,
    RecallTokenError,
)
from latentmem.recall.generate import RecallEvent, RecallGenerator, RecallOutput
from latentmem.recall.head import MemoryHead
from latentmem.recall.inject import MemoryProjector, inject
from latentmem.recall.memory import RecallMemory
from latentmem.recall.tokens import MEMORY_PAD, RECALL, RECALL_END, RecallTokens, add_recall_tokens
from latentmem.recall.writer import HiddenStateEncoder, SentenceEncoder, write_memories

__all__ = [
    "BANK_SCOPE",
    "MEMORY_PAD",
    "RECALL",
    "RECALL_END",
    "BankDimensionError",
    "BankEntry",
    "BankEntryNotFoundError",
    "BankInputError",
    "BankStorageError",
    "EmptyBankError",
    "HiddenStateEncoder",
    "MemoryBank",
    "MemoryHead",
    "MemoryProjector",
    "NoBankError",
    "RecallError",
    "RecallEvent",
    "RecallGenerator",
    "RecallMemory",
    "RecallOutput",
    "RecallTokenError",
    "RecallTokens",
    "SentenceEncoder",
    "add_recall_tokens",
    "inject",
    "write_memories",
]
