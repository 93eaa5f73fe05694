"""Generation with recall: a hand-computed reference, batched == one by one, and clear errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentmem.chat import render_chat
from latentmem.models import load_model
from latentmem.recall import (
    BankDimensionError,
    EmptyBankError,
    MemoryBank,
    NoBankError,
    RecallGenerator,
    RecallMemory,
)
from latentmem.sampling import SamplingConfig


def _setup(name="tiny-qwen2", n=5, dim=16):
    model, tok = load_model(name, seed=0)
    memory = RecallMemory.attach(model, tok, dim, seed=0)
    bank = MemoryBank(dim)
    bank.add([f"memory number {i}" for i in range(n)], np.random.default_rng(0).standard_normal((n, dim)))
    return model, tok, memory, bank


@torch.no_grad()
def test_injection_equals_hand_computed_reference():
    model, tok, memory, bank = _setup()
    prompt = render_chat(tok, "where is the river?") + "<recall>"
    out = RecallGenerator(model, tok, memory, bank).generate([prompt], max_new_tokens=3)

    # by hand: full forward (no cache), head, cosine, argmax, projector MLP, second full forward
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
    W, b = memory.head.proj.weight, memory.head.proj.bias
    q = W @ h + b
    q = q / q.norm()
    V = np.stack([bank.get(i).vector for i in range(5)])
    V = torch.from_numpy(V / np.linalg.norm(V, axis=1, keepdims=True))
    logits = torch.exp(memory.head.log_scale) * (V @ q)
    m = int(logits.argmax())
    p = memory.projector
    e = p.out_scale * (p.fc2.weight @ F.gelu(p.fc1.weight @ V[m] + p.fc1.bias) + p.fc2.bias)
    embeds = torch.cat([model.get_input_embeddings()(ids)[0], e[None]])[None]
    next_token = int(model(inputs_embeds=embeds).logits[0, -1].argmax())

    (event,) = out.recalls[0]
    assert (event.step, event.memory_id, event.text) == (0, m, f"memory number {m}")
    assert event.logit == pytest.approx(float(logits[m]), abs=1e-4)
    assert out.token_ids[0][:2] == [memory.tokens.pad_id, next_token]


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama", "tiny-gpt2"])
def test_batched_equals_one_by_one(name):
    model, tok, memory, bank = _setup(name)
    gen = RecallGenerator(model, tok, memory, bank)
    prompts = [
        render_chat(tok, "what is the capital of france and the river?") + "<recall>",
        render_chat(tok, "hello"),  # no recall in this row while the others recall
        render_chat(tok, "one plus two") + "<recall>",
    ]
    batched = gen.generate(prompts, max_new_tokens=6)
    assert [len(r) for r in batched.recalls] == [1, 0, 1]
    for i, prompt in enumerate(prompts):
        single = gen.generate([prompt], max_new_tokens=6)
        assert single.token_ids[0] == batched.token_ids[i]
        assert [(e.step, e.memory_id) for e in single.recalls[0]] == [
            (e.step, e.memory_id) for e in batched.recalls[i]
        ]


def test_model_emitted_recall_mid_generation_is_served():
    model, tok, memory, bank = _setup()
    # force <recall> as every sampled token (a trained model learns when to emit it; here we only check
    # that recalls the model generates itself are served, each followed by its memory pad)
    logit_bias = torch.zeros(model.get_output_embeddings().weight.shape[0])
    logit_bias[memory.tokens.recall_id] = 1e4
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: o + logit_bias)
    try:
        out = RecallGenerator(model, tok, memory, bank).generate([render_chat(tok, "hi")], max_new_tokens=4)
    finally:
        hook.remove()
    ids = out.token_ids[0]
    assert ids == [memory.tokens.recall_id, memory.tokens.pad_id] * 2
    assert [e.step for e in out.recalls[0]] == [1, 3]


def test_recall_never_masks_the_token_and_sampling_is_reproducible():
    model, tok, memory, bank = _setup()
    gen = RecallGenerator(
        model, tok, memory, bank, sampling=SamplingConfig(do_sample=True, top_k=20), recall="never"
    )
    prompts = [render_chat(tok, "hi")] * 2
    a = gen.generate(prompts, max_new_tokens=8, generator=torch.Generator().manual_seed(1))
    b = gen.generate(prompts, max_new_tokens=8, generator=torch.Generator().manual_seed(1))
    assert a.token_ids == b.token_ids
    assert all(memory.tokens.recall_id not in row for row in a.token_ids)


def test_clear_errors_for_missing_empty_and_wrong_dimension_banks():
    model, tok, memory, _ = _setup()
    prompt = [render_chat(tok, "hi") + "<recall>"]
    with pytest.raises(NoBankError, match="no memory bank"):
        RecallGenerator(model, tok, memory, None).generate(prompt, max_new_tokens=2)
    with pytest.raises(EmptyBankError, match="empty"):
        RecallGenerator(model, tok, memory, MemoryBank(16)).generate(prompt, max_new_tokens=2)
    with pytest.raises(BankDimensionError, match="dimension 16 but the memory bank holds 8"):
        RecallGenerator(model, tok, memory, MemoryBank(8))
