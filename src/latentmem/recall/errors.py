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


class BankStorageError(RecallError):
    """A memory bank directory is missing, incomplete or inconsistent."""


class RecallTokenError(RecallError):
    """The recall special tokens are missing from a tokenizer or model."""
