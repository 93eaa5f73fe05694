"""MemGen on architectures whose attention or output head differ from the tiny families: eager attention
(additive masks), Gemma2 (final-logit softcapping, eager only), Granite (logit scaling) and sliding-window
reasoners (Mistral). Each reasoner is built tiny from its config, offline, like `latentmem.tiny`."""

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GraniteConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

from latentmem.errors import LatentMemError
from latentmem.memgen import GenerationConfig, LatentMemoryModel, MemGenConfig
from latentmem.memgen.insertion import delimiter_table
from latentmem.memgen.model import attention_window
from latentmem.sampling import SamplingConfig
from latentmem.tiny import tiny_tokenizer
from latentmem.training.rollout import as_training_batch
from test_memgen_core import PROMPTS, _batch

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    initializer_range=0.2,
)

CONFIGS = {
    "llama": (LlamaConfig, {}),
    # small softcap, so that capping changes every logit noticeably; Gemma2 attention needs eager
    "gemma2": (Gemma2Config, {"head_dim": 16, "final_logit_softcapping": 5.0, "query_pre_attn_scalar": 16}),
    "granite": (GraniteConfig, {"logits_scaling": 4.0}),
    "mistral": (MistralConfig, {"sliding_window": 16}),
}


def _tiny(family, attn="sdpa", seed=0, delimiter_bias=4.0, eos_bias=2.0):
    """A tiny random `family` model on the tiny tokenizer, with an output bias towards delimiters and EOS
    (as conftest.steer) so that generation inserts latents and rows finish at different steps."""
    tok = tiny_tokenizer()
    cls, extra = CONFIGS[family]
    config = cls(
        vocab_size=len(tok),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        tie_word_embeddings=False,
        **COMMON,
        **extra,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()
        old = model.get_output_embeddings()
        head = nn.Linear(old.in_features, old.out_features, bias=True)
        with torch.no_grad():
            head.weight.copy_(old.weight)
            head.bias.zero_()
            # Granite divides the head's output by logits_scaling: scale the bias so it steers as much
            scale = getattr(config, "logits_scaling", 1.0)
            head.bias[delimiter_table(tok, (",", ".", "\n"), old.out_features)] = delimiter_bias * scale
            head.bias[tok.eos_token_id] = eos_bias * scale
        model.set_output_embeddings(head)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def _memgen(model, tok, **cfg):
    torch.manual_seed(0)
    return LatentMemoryModel(model, tok, MemGenConfig(**cfg))


def _train_vs_generation(mm, tok, ids, mask, max_new_tokens=24, sample=False):
    """Generate, replay the result through the training forward; return (generation, forward, keep)."""
    res = mm.generate(
        ids,
        mask,
        GenerationConfig(max_new_tokens=max_new_tokens, sampling=SamplingConfig(do_sample=sample)),
        generator=torch.Generator().manual_seed(1),
    )
    full, full_mask, labels = as_training_batch(ids, mask, res, tok.pad_token_id)
    out = mm(full, full_mask, labels, plan=res.plan)
    return res, out, res.completion_mask()


def _assert_train_equals_generation(res, out, keep, T, atol=1e-4):
    torch.testing.assert_close(out.token_logprobs[:, T:][keep], res.logprobs[keep], atol=atol, rtol=atol)


# ---- 1. the weaver's block mask under eager attention ----------------------------------------------------


@pytest.mark.parametrize("sample", [False, True])
def test_eager_attention_training_forward_matches_generation(sample):
    model, tok = _tiny("llama", attn="eager")
    mm = _memgen(model, tok, prompt_latents=4, inference_latents=3, max_inference_insertions=3)
    ids, mask = _batch(tok)
    res, out, keep = _train_vs_generation(mm, tok, ids, mask, sample=sample)
    assert sum(len(r) for r in res.insertions) >= 2  # inference latents really are woven
    _assert_train_equals_generation(res, out, keep, ids.shape[1])


def test_eager_weaver_never_sees_later_tokens():
    """The prompt latents are woven before the answer exists: no later answer token may change them, so
    the first answer token's log-probability (which reads the prompt latents) stays put."""
    model, tok = _tiny("llama", attn="eager")
    mm = _memgen(model, tok, prompt_latents=4, inference_latents=3, max_inference_insertions=3)
    ids, mask = _batch(tok)
    res = mm.generate(ids, mask, GenerationConfig(max_new_tokens=24))
    full, full_mask, labels = as_training_batch(ids, mask, res, tok.pad_token_id)
    T = ids.shape[1]
    # a row with an inference insertion after its third token: the weaver pass then reads that far
    row = next(r for r, ins in enumerate(res.insertions) if ins and ins[-1] >= 2)
    changed = full.clone()
    changed[row, T + 1] = (changed[row, T + 1] + 1) % 100 + 10  # an ordinary token, never special
    a = mm(full, full_mask, labels, plan=res.plan).token_logprobs
    b = mm(changed, full_mask, labels, plan=res.plan).token_logprobs
    torch.testing.assert_close(a[row, T], b[row, T], atol=1e-6, rtol=0)
    assert not torch.allclose(a[row, T + 1], b[row, T + 1])  # the changed token itself is scored anew


def test_attention_without_4d_masks_is_refused():
    model, tok = _tiny("llama")
    for impl in ("flash_attention_2", "flash_attention_3", "flex_attention"):
        model.config._attn_implementation = impl
        with pytest.raises(LatentMemError, match=f'attn_implementation.*{impl}.*"sdpa" or "eager"'):
            LatentMemoryModel(model, tok, MemGenConfig())


# ---- 2. training logits come from the model's own head ------------------------------------------------


@pytest.mark.parametrize(("family", "attn"), [("gemma2", "eager"), ("granite", "sdpa"), ("granite", "eager")])
def test_training_logits_use_the_model_head(family, attn):
    model, tok = _tiny(family, attn=attn)
    mm = _memgen(model, tok, prompt_latents=4, inference_latents=3, max_inference_insertions=3)
    ids, mask = _batch(tok)
    res, out, keep = _train_vs_generation(mm, tok, ids, mask, sample=True)
    assert sum(len(r) for r in res.insertions) >= 2
    assert len(set(res.lengths.tolist())) > 1
    _assert_train_equals_generation(res, out, keep, ids.shape[1])
    torch.testing.assert_close(out.loss, -res.logprobs[keep].mean(), atol=1e-4, rtol=1e-4)


# ---- 3. sliding-window reasoners ----------------------------------------------------------------------


def test_attention_window_is_read_from_the_layer_types():
    assert attention_window(Qwen2Config(num_hidden_layers=2)) is None  # use_sliding_window=False
    # Qwen2 slides only in the layers from max_window_layers on
    qwen2 = dict(num_hidden_layers=2, use_sliding_window=True, sliding_window=16)
    assert attention_window(Qwen2Config(**qwen2)) is None
    assert attention_window(Qwen2Config(**qwen2, max_window_layers=1)) == 16
    assert attention_window(MistralConfig(num_hidden_layers=2, sliding_window=16)) == 16
    assert attention_window(MistralConfig(num_hidden_layers=2, sliding_window=None)) is None
    assert attention_window(Gemma2Config(num_hidden_layers=2, sliding_window=64)) == 64
    assert attention_window(LlamaConfig(num_hidden_layers=2)) is None


SHORT = ["hi", "yes", "the"]  # no chat template: a few tokens each, so that a generation fits in 16 slots


def _short_batch(tok):
    enc = tok(SHORT, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_sliding_window_generation_within_the_window_matches_training():
    model, tok = _tiny("mistral", delimiter_bias=6.0)
    mm = _memgen(model, tok, prompt_latents=2, inference_latents=1, max_inference_insertions=2)
    ids, mask = _short_batch(tok)
    # prompt T + K_p + N + K_i * min(N - 1, B * max_insertions) slots: shorter than the window of 16
    assert ids.shape[1] + 2 + 6 + 1 * 5 < 16
    res, out, keep = _train_vs_generation(mm, tok, ids, mask, max_new_tokens=6)
    assert sum(len(r) for r in res.insertions) >= 1
    _assert_train_equals_generation(res, out, keep, ids.shape[1])


def test_sliding_window_overflow_is_a_clear_error():
    model, tok = _tiny("mistral", delimiter_bias=6.0)
    mm = _memgen(model, tok, prompt_latents=2, inference_latents=1, max_inference_insertions=2)
    ids, mask = _short_batch(tok)
    # would run past the window only late in decoding (silently inexact there, before this check)
    with pytest.raises(LatentMemError, match="sliding attention window of 16.*max_new_tokens"):
        mm.generate(ids, mask, GenerationConfig(max_new_tokens=20))
    # a prompt longer than the window (before this check: a RuntimeError from DynamicCache.crop)
    long_ids, long_mask = _batch(tok, PROMPTS[:2])
    assert long_ids.shape[1] > 16
    with pytest.raises(LatentMemError, match="sliding attention window of 16"):
        mm.generate(long_ids, long_mask, GenerationConfig(max_new_tokens=2))
    # a training batch longer than the window is refused as well
    labels = long_ids.masked_fill(torch.arange(long_ids.shape[1]) < long_ids.shape[1] - 3, -100)
    with pytest.raises(LatentMemError, match="sliding attention window of 16"):
        mm(long_ids, long_mask, labels)
