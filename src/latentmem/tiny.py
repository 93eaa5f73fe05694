"""Tiny random models for tests: three architecture families, built offline in well under a second.

`tiny-qwen2` (rotary positions, grouped-query attention, tied embeddings), `tiny-llama` (rotary positions,
untied embeddings) and `tiny-gpt2` (learned absolute position embeddings). They share one byte-level BPE
tokenizer trained here with the `tokenizers` library on a small embedded corpus, with ChatML special tokens.
Everything is deterministic under a seed, and nothing touches a model hub. Weights are drawn with a
large initializer range (0.2) so that greedy decoding is varied and its argmax robust to rounding.
"""

from __future__ import annotations

import functools
import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from latentmem.chat import CHATML_TEMPLATE
from latentmem.errors import ModelLoadError

TINY_MODELS = ("tiny-qwen2", "tiny-llama", "tiny-gpt2")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
VOCAB_SIZE = 512
HIDDEN = 64

_WORDS = (
    "the a of to and in is it that was for on are with as at be this have from or one had by word but not "
    "what all were we when your can said there use an each which she do how their if will up other about "
    "out many then them these so some her would make like him into time has look two more write go see "
    "number no way could people my than first water been call who oil its now find long down day did get "
    "come made may part answer question capital france paris city river memory recall think step so total "
    "user assistant system hello yes plus minus equals apple orange red blue green sum result because"
).split()


def _corpus(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = [
        " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))) + rng.choice(".,\n!?")
        for _ in range(600)
    ]
    lines += [f"{a} + {b} = {a + b}. {a} * {b} = {a * b}," for a in range(0, 60, 3) for b in range(0, 40, 7)]
    lines += [f"#### {n}\n\\boxed{{{n}}}" for n in range(0, 1000, 37)]
    lines += ["def f(x):\n    return x + 1\n", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"]
    return lines


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh copy of the shared tiny tokenizer (trained once per process, ~0.1 s)."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        bos_token=None,
        unk_token=None,
        padding_side="left",
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_config(name: str, tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
    """The config of tiny model `name`, sized to `tokenizer`."""
    ids = {
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    }
    if name == "tiny-qwen2":
        return Qwen2Config(
            hidden_size=HIDDEN,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            initializer_range=0.2,
            **ids,
        )
    if name == "tiny-llama":
        return LlamaConfig(
            hidden_size=HIDDEN,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=1024,
            tie_word_embeddings=False,
            initializer_range=0.2,
            **ids,
        )
    if name == "tiny-gpt2":
        return GPT2Config(n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=1024, initializer_range=0.2, **ids)
    raise ModelLoadError(f"unknown tiny model {name!r}; choose one of {', '.join(TINY_MODELS)}")


def build_tiny(name: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Build tiny model `name` with random weights drawn under `seed` (global RNG state untouched)."""
    tokenizer = tiny_tokenizer()
    config = tiny_config(name, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer
