import pytest
import torch

from latentmem.chat import render_chat
from latentmem.errors import ModelLoadError
from latentmem.models import available_models, load_model
from latentmem.tiny import TINY_MODELS, build_tiny


def _greedy(model, tok, prompts, n=8):
    enc = tok([render_chat(tok, p) for p in prompts], return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=n, do_sample=False)
    return out[:, enc["input_ids"].shape[1] :]


def test_names_listed():
    assert set(TINY_MODELS) | {"smollm2-135m-instruct"} == set(available_models())


def test_tiny_families_differ_in_position_handling():
    types = {build_tiny(n)[0].config.model_type for n in TINY_MODELS}
    assert types == {"qwen2", "llama", "gpt2"}


def test_tiny_is_deterministic_under_seed(tiny):
    name, model, _ = tiny
    again, _ = load_model(name, seed=0)
    other, _ = load_model(name, seed=1)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters(), strict=True))


def test_tiny_chat_template_and_generation(tiny):
    _, model, tok = tiny
    text = render_chat(tok, "hello")
    assert text.startswith("<|im_start|>user\nhello<|im_end|>\n") and text.endswith("<|im_start|>assistant\n")
    out = _greedy(model, tok, ["hello", "a longer prompt, with more words."])
    assert out.shape == (2, 8)
    assert tok.padding_side == "left" and tok.pad_token_id is not None


def test_local_directory_round_trip(tmp_path):
    model, tok = load_model("tiny-llama", seed=3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, tok2 = load_model(tmp_path)
    assert torch.equal(_greedy(model, tok, ["hi there"]), _greedy(loaded, tok2, ["hi there"]))
    ids = tok("memory, recall.")["input_ids"]
    assert ids == tok2("memory, recall.")["input_ids"]


def test_bf16(tiny):
    name, _, _ = tiny
    model, tok = load_model(name, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert _greedy(model, tok, ["hi"], n=3).shape == (1, 3)


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'.*tiny-qwen2"):
        load_model("no-such-model")


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="holds no model weights"):
        load_model(tmp_path)


def test_weights_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)


def test_directory_without_tokenizer_files(tmp_path):
    model, tok = load_model("tiny-gpt2")
    model.save_pretrained(tmp_path)  # weights and config only
    with pytest.raises(ModelLoadError, match="holds no tokenizer .*tokenizer.save_pretrained"):
        load_model(tmp_path)
    loaded, _ = load_model(tmp_path, tokenizer=tok)  # a tokenizer passed in needs none in the folder
    assert loaded.config.n_positions == 1024


def test_max_positions_reads_each_family(tiny):
    from latentmem.models import max_positions

    assert max_positions(tiny[1]) == 1024


def test_mismatched_tokenizer(tmp_path):
    model, _ = load_model("tiny-qwen2")
    model.resize_token_embeddings(100)
    model.save_pretrained(tmp_path)
    _, tok = load_model("tiny-qwen2")
    tok.save_pretrained(tmp_path)
    with pytest.raises(
        ModelLoadError, match="tokenizer does not match the model: it has 512 tokens .* 100 rows"
    ):
        load_model(tmp_path)


def test_bad_dtype():
    with pytest.raises(ModelLoadError, match="dtype 'float8'"):
        load_model("tiny-qwen2", dtype="float8")


def test_smollm2_knows_paris(smollm2):
    model, tok = smollm2
    assert model.config.model_type == "llama" and model.config.hidden_size == 576
    reply = tok.decode(
        _greedy(model, tok, ["What is the capital of France?"], n=16)[0], skip_special_tokens=True
    )
    assert "Paris" in reply


def test_smollm2_loads_fast_from_cache(smollm2):
    import time

    start = time.perf_counter()
    load_model("smollm2-135m-instruct")
    assert time.perf_counter() - start < 3.0  # generous: "well under a second" on an idle machine
