"""Errors of recall memory. Each one says what is wrong and how to fix it."""

from __future__ import annotations

from latentmem.errors import LatentMemError


class RecallError(LatentMemError):
    """Base class of recall-memory errors."""


class NoBankError(RecallError):
    """A sequence emitted `<recall>` but no memory bank is attached to the generator."""


class EmptyBankError(RecallError):
    """A recall was asked of a memory bank that holds no entries."""


class BankDimensionError(RecallError, ValueError):
    """A vector or bank does not have the dimension the memory head / projector expects."""


class BankInputError(RecallError, ValueError):
    """A bad argument to a memory bank: mismatched lengths, reused or negative ids, non-JSON metadata."""


class BankEntryNotFoundError(RecallError, KeyError):
    """No entry of the memory bank has this id."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class BankStorageError(RecallError):
    """A memory bank's store is missing, holds no bank, or holds one that does not fit (embedder, entries)."""


class RecallTokenError(RecallError):
    """The recall special tokens are missing from a tokenizer or model."""
