"""Errors of the agent-memory package."""

from __future__ import annotations

from latentmem.errors import LatentMemError


class AgentMemoryError(LatentMemError):
    """An agent-memory component cannot run as asked (an unknown policy, a missing manager folder...)."""


class BenchmarkSchemaError(AgentMemoryError, ValueError):
    """A benchmark file does not follow its public schema; the message names the field, e.g.
    `locomo10.json[0].qa[2].question: missing`."""
