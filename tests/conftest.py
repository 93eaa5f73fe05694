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


# (delimiter bias, EOS bias) per tiny family, chosen so that rows insert several times and stop at
# different steps under greedy decoding
STEER_BIAS = {"tiny-qwen2": (4.0, 2.0), "tiny-llama": (3.0, 3.0), "tiny-gpt2": (3.0, 3.0)}


def steer(model, tokenizer):
    """Give a tiny random model an output bias towards delimiters and EOS, so that greedy decoding hits
    insertion points and finishes at different steps (random weights alone rarely do either)."""
    from torch import nn

    from latentmem.memgen.insertion import delimiter_table

    delimiter_bias, eos_bias = STEER_BIAS[_family(model)]

    old = model.get_output_embeddings()
    new = nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        new.weight.copy_(old.weight)
        new.bias.zero_()
        new.bias[delimiter_table(tokenizer, (",", ".", "\n"), old.out_features)] = delimiter_bias
        new.bias[tokenizer.eos_token_id] = eos_bias
    model.set_output_embeddings(new)
    model.config.tie_word_embeddings = False
    return model


def _family(model) -> str:
    return {"qwen2": "tiny-qwen2", "llama": "tiny-llama", "gpt2": "tiny-gpt2"}[model.config.model_type]
