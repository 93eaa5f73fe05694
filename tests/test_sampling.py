"""Shared selection: transformers' processors on token and memory logits, greedy or sampled, with the
token history for the repetition penalty, and generation recording the distribution it drew from."""

import pytest
import torch

from conftest import steer
from latentmem.errors import ConfigError
from latentmem.memgen import GenerationConfig, LatentMemoryModel, MemGenConfig
from latentmem.models import load_model
from latentmem.recall import RecallGenerator, RecallMemory
from latentmem.sampling import MissingHistoryError, SamplingConfig, process_logits, select_next


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [5.0, 0.0, 4.9]])
    assert select_next(logits, SamplingConfig()).tolist() == [1, 0]


def test_top_k_and_top_p_filter():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    k2 = process_logits(logits, SamplingConfig(do_sample=True, top_k=2))
    assert torch.isinf(k2[0, 2:]).all() and torch.isfinite(k2[0, :2]).all()
    p = process_logits(logits, SamplingConfig(do_sample=True, top_p=0.7))
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all()  # 0.5 < 0.7 needs the second
    p_small = process_logits(logits, SamplingConfig(do_sample=True, top_p=0.01))
    assert torch.isfinite(p_small[0, 0]) and torch.isinf(p_small[0, 1:]).all()


def test_sampling_follows_temperature_and_generator():
    logits = torch.tensor([[1.0, 0.0]]).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    hot = select_next(logits, SamplingConfig(do_sample=True, temperature=100.0), g).float().mean()
    cold = select_next(logits, SamplingConfig(do_sample=True, temperature=0.05), g).float().mean()
    assert 0.4 < hot < 0.6 and cold < 0.01
    a = select_next(logits[:50], SamplingConfig(do_sample=True), torch.Generator().manual_seed(3))
    b = select_next(logits[:50], SamplingConfig(do_sample=True), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_bad_config():
    with pytest.raises(ConfigError, match="top_p: must be in"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ConfigError, match="temperature: must be > 0"):
        SamplingConfig(temperature=0.0)


def test_top_k_beyond_the_number_of_items_keeps_them_all():
    """transformers' TopK clamps k to the width: a bank of 3 memories with top_k=20 is just sampled."""
    memory_logits = torch.tensor([[0.3, -1.0, 2.0], [1.0, 1.0, 1.0]])  # (B, N_memories)
    kept = process_logits(memory_logits, SamplingConfig(do_sample=True, top_k=20))
    torch.testing.assert_close(kept, memory_logits)
    picks = select_next(
        memory_logits, SamplingConfig(do_sample=True, top_k=20), torch.Generator().manual_seed(0)
    )
    assert picks.shape == (2,) and bool((picks < 3).all())


def test_min_p_keeps_items_with_a_fraction_of_the_top_probability():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = process_logits(logits, SamplingConfig(do_sample=True, min_p=0.5))  # threshold 0.25
    assert torch.isfinite(kept[0, :2]).all() and torch.isinf(kept[0, 2:]).all()
    kept = process_logits(logits, SamplingConfig(do_sample=True, min_p=0.2))  # threshold 0.1
    assert torch.isfinite(kept[0, :3]).all() and torch.isinf(kept[0, 3])
    # greedy ignores the warpers, as `generate` does
    torch.testing.assert_close(process_logits(logits, SamplingConfig(min_p=0.9)), logits)


def test_repetition_penalty_reads_the_history_and_skips_its_padding():
    logits = torch.tensor([[2.0, -1.0, 1.0, 0.5], [2.0, -1.0, 1.0, 0.5]])
    history = torch.tensor([[3, 0, 1], [0, 0, 1]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])  # row 1: a left pad (id 0) that is not a real token 0
    cfg = SamplingConfig(repetition_penalty=2.0)  # applies when greedy too, as in `generate`
    out = process_logits(logits, cfg, history)
    # CTRL's penalty: seen tokens' positive logits are halved, negative ones doubled
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0, 1.0, 0.25], [1.0, -2.0, 1.0, 0.5]]))
    out = process_logits(logits, cfg, history, mask)
    torch.testing.assert_close(out[1], torch.tensor([1.0, -2.0, 1.0, 0.5]))  # token 0 is also real there
    padded_only = process_logits(logits[:1], cfg, torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    torch.testing.assert_close(padded_only, torch.tensor([[2.0, -2.0, 1.0, 0.5]]))
    # greedy picks among the penalised logits: token 0 falls from 2.0 to 0.5, below token 2's 1.0
    assert (
        select_next(logits[:1], SamplingConfig(repetition_penalty=4.0), None, torch.tensor([[0]])).item() == 2
    )
    with pytest.raises(MissingHistoryError, match="repetition_penalty=2.0 needs the token history"):
        process_logits(logits, cfg)  # e.g. memory logits: there is no history to read


def test_bad_min_p_and_repetition_penalty():
    with pytest.raises(ConfigError, match="min_p: must be in"):
        SamplingConfig(min_p=1.5)
    with pytest.raises(ConfigError, match="repetition_penalty: must be > 0"):
        SamplingConfig(repetition_penalty=0.0)


def test_generate_records_the_logprob_of_the_processed_distribution():
    """With top_k=1 the processed distribution is a point mass on the argmax: the sequence is greedy's
    and every recorded log-prob is 0 (the unprocessed log softmax would be well below 0)."""
    model, tok = load_model("tiny-qwen2")
    steer(model, tok)
    torch.manual_seed(0)
    mm = LatentMemoryModel(model, tok, MemGenConfig(prompt_latents=2, inference_latents=2))
    enc = tok(["one, two. three", "a"], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    greedy = mm.generate(ids, mask, GenerationConfig(max_new_tokens=12))
    sampling = SamplingConfig(do_sample=True, temperature=0.7, top_k=1)
    res = mm.generate(ids, mask, GenerationConfig(max_new_tokens=12, sampling=sampling, trigger_sample=False))
    assert torch.equal(res.sequences, greedy.sequences)
    assert torch.equal(res.logprobs, torch.zeros_like(res.logprobs))
    assert (greedy.logprobs[greedy.completion_mask()] < -1e-3).any()


def test_generate_records_the_tempered_logprob_it_sampled_from():
    """Sampled at T = 0.7, each recorded log-prob is log softmax(z / 0.7) of the token, z from an
    independent copy of the reasoner on the plain sequence (no latents here), not log softmax(z)."""
    model, tok = load_model("tiny-qwen2")
    steer(model, tok)
    mm = LatentMemoryModel(model, tok, MemGenConfig(prompt_latents=0, trigger={"policy": "never"}))
    enc = tok(["one, two. three", "a"], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    sampling = SamplingConfig(do_sample=True, temperature=0.7)
    res = mm.generate(
        ids,
        mask,
        GenerationConfig(max_new_tokens=12, sampling=sampling),
        generator=torch.Generator().manual_seed(0),
    )
    keep = res.completion_mask()
    full = torch.cat([ids, res.sequences], 1)
    full_mask = torch.cat([mask, keep.long()], 1)
    plain, _ = load_model("tiny-qwen2")
    steer(plain, tok)
    with torch.no_grad():
        z = plain(
            input_ids=full, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)
        )
    z = z.logits[
        :, ids.shape[1] - 1 : -1
    ].float()  # (B, N, V): the logits each generated token was drawn from
    tempered = (z / 0.7).log_softmax(-1).gather(2, res.sequences[..., None]).squeeze(2)
    untempered = z.log_softmax(-1).gather(2, res.sequences[..., None]).squeeze(2)
    torch.testing.assert_close(res.logprobs[keep], tempered[keep], atol=1e-4, rtol=1e-4)
    assert (res.logprobs[keep] - untempered[keep]).abs().max() > 0.05


def test_generate_threads_the_history_into_the_repetition_penalty():
    """A huge penalty makes greedy decoding avoid every token already in the prompt or the output."""
    model, tok = load_model("tiny-qwen2")
    steer(model, tok)  # biased towards delimiters and EOS, so plain greedy decoding repeats them
    torch.manual_seed(0)
    mm = LatentMemoryModel(model, tok, MemGenConfig(prompt_latents=0, trigger={"policy": "never"}))
    enc = tok(["one two three four", "a"], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    cfg = GenerationConfig(
        max_new_tokens=16, sampling=SamplingConfig(repetition_penalty=1e6), stop_on_eos=False
    )
    res = mm.generate(ids, mask, cfg)
    for row in range(2):
        prompt = ids[row][mask[row].bool()].tolist()
        out = res.sequences[row].tolist()
        assert len(set(out)) == len(out) and not set(out) & set(prompt)
    plain = mm.generate(ids, mask, GenerationConfig(max_new_tokens=16, stop_on_eos=False)).sequences
    assert any(len(set(r)) < len(r) for r in plain.tolist())  # without it the steered model repeats itself


def test_recall_refuses_a_repetition_penalty_on_memory_logits():
    model, tok = load_model("tiny-qwen2")
    memory = RecallMemory.attach(model, tok, 8, seed=0)
    with pytest.raises(ConfigError, match="memory_sampling.repetition_penalty: must be 1.0"):
        RecallGenerator(model, tok, memory, memory_sampling=SamplingConfig(repetition_penalty=1.3))
