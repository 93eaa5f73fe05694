"""Shared fixtures. Everything runs offline: no model hub is reachable, and none is needed."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from latentmem.models import load_model
from latentmem.tiny import TINY_MODELS

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(params=TINY_MODELS)
def tiny(request):
    """(name, model, tokenizer) for each tiny architecture family."""
    model, tok = load_model(request.param, seed=0)
    return request.param, model, tok


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (converted once into the cache, then ~0.2 s a load)."""
    return load_model("smollm2-135m-instruct")
