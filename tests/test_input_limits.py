"""Inputs that would exhaust memory or fail deep inside a model are refused, or skipped, up front: rows
longer than the model's positions, generations past them, and malformed generation batches."""

import json

import pytest
import torch

from latentmem.errors import ConfigError, LatentMemError
from latentmem.memgen import GenerationConfig, LatentMemoryModel, MemGenConfig, generate
from latentmem.models import load_model
from latentmem.training import SFTConfig
from latentmem.training.data import encode_rows, read_jsonl
from latentmem.training.loop import build_model

MEMGEN = {"prompt_latents": 2, "inference_latents": 2, "max_inference_insertions": 2, "lora_r": 4}


def _memgen(name):
    model, tok = load_model(name)
    return LatentMemoryModel(model, tok, MemGenConfig(**MEMGEN))


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-qwen2"])  # absolute positions fail, rotary run on
def test_generate_refuses_to_run_past_the_models_positions(name):
    model = _memgen(name)
    ids = torch.full((1, 1020), 5)
    with pytest.raises(LatentMemError, match=r"take up to 1034 positions of the reasoner, .* built for 1024"):
        generate(model, ids, torch.ones_like(ids), GenerationConfig(max_new_tokens=8))
    short = torch.full((1, 1000), 5)  # 1000 + 2 prompt latents + 8 tokens + 2 * 2 inserted latents fit
    generate(model, short, torch.ones_like(short), GenerationConfig(max_new_tokens=8))


def test_generate_refuses_malformed_batches():
    model = _memgen("tiny-qwen2")
    ids = torch.tensor([[5, 6, 7]])
    mask = torch.ones_like(ids)
    cases = [
        (ids[:0], mask[:0], r"non-empty \(batch, length\) tensor, got shape \(0, 3\)"),
        (ids[0], mask[0], r"got shape \(3,\); for one prompt pass input_ids\[None\]"),
        (ids, mask[:, :2], r"attention_mask: shape \(1, 2\) differs from input_ids' \(1, 3\)"),
        (ids + 10_000, mask, r"token id 10005 is outside the model's vocabulary of 512"),
    ]
    for bad_ids, bad_mask, message in cases:
        with pytest.raises(LatentMemError, match=message):
            generate(model, bad_ids, bad_mask, GenerationConfig(max_new_tokens=2))


def _sft(tmp_path, rows, **data):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return SFTConfig.from_dict(
        {
            "model": "tiny-qwen2",
            "memgen": MEMGEN,
            "output_dir": str(tmp_path / "run"),
            "data": {"path": str(path), **data},
            "train": {"batch_size": 2},
        }
    )


def test_rows_longer_than_the_model_are_skipped_with_a_warning(tmp_path):
    rows = [{"prompt": "2 + 2?", "answer": "4"}, {"prompt": "word " * 2000, "answer": "5"}]
    rows.append({"prompt": "3 + 3? Answer with the number only.", "answer": "6"})
    cfg = _sft(tmp_path, rows)
    model = build_model(cfg, torch.device("cpu"))
    # the default limit: 1024 positions less 2 prompt latents and 2 x 2 inserted ones
    with pytest.warns(RuntimeWarning, match=r"1 of 3 train rows are longer than 1018 tokens .*row 1"):
        kept, items = encode_rows(rows, model, cfg, "train")
    assert kept == [rows[0], rows[2]] and len(items) == 2

    short = _sft(tmp_path, rows, max_length=18)  # the first row: 18 tokens with its chat template and EOS
    with pytest.warns(RuntimeWarning, match=r"2 of 3 train rows are longer than 18 tokens"):
        kept, _ = encode_rows(rows, model, short, "train")
    assert kept == rows[:1]
    with pytest.raises(ConfigError, match=r"data.max_length: 4000 tokens and 6 latent slots .* 1018 or less"):
        encode_rows(rows, model, _sft(tmp_path, rows, max_length=4000), "train")
    with pytest.raises(ConfigError, match=r"no row is left to train on"):
        encode_rows(rows[1:2], model, cfg, "train")


def test_a_data_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"prompt": "ok", "answer": "1"}\n{"prompt": "caf\xe9", "answer": "2"}\n')
    with pytest.raises(ConfigError, match=r"rows.jsonl line 2 is not UTF-8 text"):
        read_jsonl(path)
