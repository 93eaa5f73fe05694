"""Training recipes with retrieved memories (memgen-rag): rows carry memory vectors, the weaver reads
them in SFT and in GRPO rollouts, and the update replays them."""

import pytest
import torch

from latentmem.errors import ConfigError
from latentmem.memgen import LatentMemoryModel, MemGenConfig
from latentmem.models import load_model
from latentmem.training.config import DataConfig, GRPOSettings, SFTConfig
from latentmem.training.data import collate_memory, encode
from latentmem.training.rewards import resolve_reward
from latentmem.training.rollout import Sampler


def _rows(n=4, dim=6):
    g = torch.Generator().manual_seed(0)
    return [
        {"prompt": f"say {i}", "answer": f"{i}.", "memory": torch.randn(1 + i % 2, dim, generator=g).tolist()}
        for i in range(n)
    ]


def test_memory_column_and_memory_dim_go_together():
    with pytest.raises(ConfigError, match="memgen.memory_dim"):
        SFTConfig.from_dict({"data": {"memory_column": "memory"}})
    with pytest.raises(ConfigError, match="memgen.memory_dim"):
        SFTConfig.from_dict({"memgen": {"memory_dim": 6}})
    SFTConfig.from_dict({"data": {"memory_column": "memory"}, "memgen": {"memory_dim": 6}})


def test_collate_memory_pads_rows_with_fewer_memories():
    _, tok = load_model("tiny-qwen2")
    items = encode(_rows(), tok, DataConfig(memory_column="memory"))
    memory = collate_memory(items)
    assert memory.vectors.shape == (4, 2, 6)
    assert memory.mask.tolist() == [[1, 0], [1, 1], [1, 0], [1, 1]]
    assert collate_memory(encode(_rows(), tok, DataConfig())) is None


def test_rollouts_with_memory_replay_exactly():
    torch.set_num_threads(1)
    model, tok = load_model("tiny-llama")
    mm = LatentMemoryModel(model, tok, MemGenConfig(prompt_latents=2, inference_latents=2, memory_dim=6))
    data = DataConfig(memory_column="memory")
    rows = _rows()
    items = encode(rows, tok, data)
    settings = GRPOSettings(num_generations=2, max_new_tokens=8)
    sampler = Sampler(mm, items, rows, settings, resolve_reward("constant"), data)
    ro = sampler(range(len(rows)), torch.Generator().manual_seed(0))
    assert ro.memory is not None and ro.memory.vectors.shape[0] == 8
    out = mm(ro.input_ids, ro.attention_mask, ro.labels, plan=ro.result.plan, memory=ro.memory)
    keep = ro.result.completion_mask()
    T = ro.input_ids.shape[1] - ro.result.sequences.shape[1]
    torch.testing.assert_close(
        out.token_logprobs[:, T:][keep], ro.result.logprobs[keep], atol=1e-4, rtol=1e-4
    )
    bare = mm(ro.input_ids, ro.attention_mask, ro.labels, plan=ro.result.plan)
    assert not torch.allclose(
        bare.token_logprobs[:, T:][keep], out.token_logprobs[:, T:][keep]
    )  # memories used
