"""Generative latent memory (MemGen): weaver, trigger and latent insertion on any HF causal LM."""

from __future__ import annotations

from typing import TYPE_CHECKING

from latentmem._lazy import lazy_package

# Imported on first use (`latentmem._lazy`): these modules import torch, which `latentmem --help` should not wait for.
if TYPE_CHECKING:
    from latentmem.memgen.config import MemGenConfig, TriggerConfig
    from latentmem.memgen.generate import GenerationConfig, GenerationResult, LatentHook, generate
    from latentmem.memgen.insertion import InsertionPlan
    from latentmem.memgen.model import LatentMemoryModel, MemGenOutput, RetrievedMemory

__all__ = [
    "GenerationConfig",
    "GenerationResult",
    "InsertionPlan",
    "LatentHook",
    "LatentMemoryModel",
    "MemGenConfig",
    "MemGenOutput",
    "RetrievedMemory",
    "TriggerConfig",
    "generate",
]

lazy_package(__name__)
