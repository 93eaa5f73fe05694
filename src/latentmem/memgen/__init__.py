"""Generative latent memory (MemGen): weaver, trigger and latent insertion on any HF causal LM."""

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
