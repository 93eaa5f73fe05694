"""Training recipes, shared parts and SFT: config and data errors before any model loads, collation,
atomic checkpoints, resume equals an uninterrupted run, the CLI, and SFT loss falling."""

import json
from pathlib import Path

import pytest
import torch

import latentmem.training.loop as loop
import latentmem.training.sft as sft
from latentmem.cli import main
from latentmem.decoding import IGNORE
from latentmem.errors import ConfigError
from latentmem.models import load_model
from latentmem.training import GRPOConfig, SFTConfig, TriggerRLConfig
from latentmem.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from latentmem.training.data import Encoded, collate

TINY = {
    "model": "tiny-qwen2",
    "memgen": {"prompt_latents": 2, "inference_latents": 2, "max_inference_insertions": 2, "lora_r": 4},
    "data": {"task": "arithmetic", "train_size": 64, "eval_size": 16},
}


def _cfg(tmp_path, **train):
    return SFTConfig.from_dict(
        {**TINY, "output_dir": str(tmp_path / "run"), "train": {"batch_size": 8, "lr": 3e-3, **train}}
    )


def _metrics(run):
    return [json.loads(line) for line in run.joinpath("metrics.jsonl").read_text().splitlines()]


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"train\.lrr: unknown key.*Did you mean 'train\.lr'"):
        SFTConfig.from_dict({"train": {"lrr": 1}})
    with pytest.raises(ConfigError, match=r"grpo\.num_generations: G=3 .* must divide train\.batch_size=16"):
        GRPOConfig.from_dict({"train": {"batch_size": 16}, "grpo": {"num_generations": 3}})
    with pytest.raises(ConfigError, match=r"memgen\.trigger\.policy: .*set it to learned"):
        TriggerRLConfig.from_dict({"train": {"batch_size": 8}})
    with pytest.raises(ConfigError, match=r"train\.grad_accum: must divide"):
        SFTConfig.from_dict({"train": {"batch_size": 8, "grad_accum": 3}})


def test_missing_columns_fail_before_the_model_loads(tmp_path, monkeypatch):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n")

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(loop, "load_model", no_model)
    cfg = SFTConfig.from_dict({**TINY, "output_dir": str(tmp_path / "run"), "data": {"path": str(data)}})
    with pytest.raises(ConfigError, match=r"row 0 lacks column\(s\) \['prompt'\].*data\.prompt_column"):
        sft.train_sft(cfg)
    assert not (tmp_path / "run").exists()


def test_collate_left_pads_and_labels_only_the_answer():
    ids, mask, labels = collate([Encoded([5, 6, 7], [8, 2]), Encoded([9], [3, 4, 2])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 2], [0, 9, 3, 4, 2]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]
    assert labels.tolist() == [[IGNORE, IGNORE, IGNORE, 8, 2], [IGNORE, IGNORE, 3, 4, 2]]
    prompts, _, plabels = collate([Encoded([5, 6], [8]), Encoded([9], [3])], pad_id=0, with_answer=False)
    assert prompts.tolist() == [[5, 6], [0, 9]] and (plabels == IGNORE).all()


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    w = {"a": torch.ones(3)}
    save_checkpoint(tmp_path, 1, w, {"x": 1})
    real_save = torch.save

    def killed(obj, f, *a, **k):  # the process dies half-way through writing the state
        real_save(obj, f, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, {"a": torch.zeros(3)}, {"x": 2})
    monkeypatch.setattr(torch, "save", real_save)
    ckpt = load_checkpoint(latest_checkpoint(tmp_path))
    assert ckpt.step == 1 and ckpt.state["x"] == 1 and torch.equal(ckpt.weights["a"], torch.ones(3))
    save_checkpoint(tmp_path, 3, w, {"x": 3}, keep=1)  # cleans the leftover and the old checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000003"]


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, monkeypatch):
    steps = {"steps": 6, "save_every": 3, "warmup_steps": 2, "eval_every": 3}
    full = sft.train_sft(_cfg(tmp_path / "full", **steps))
    reference = _metrics(full)

    real = sft.summed_nll
    calls = {"n": 0}

    def dies_in_step_5(*a, **k):  # calls: steps 1-3, two eval batches at step 3, steps 4 and 5
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sft, "summed_nll", dies_in_step_5)
    cfg = _cfg(tmp_path / "resumed", **steps)
    with pytest.raises(KeyboardInterrupt):
        sft.train_sft(cfg)
    monkeypatch.setattr(sft, "summed_nll", real)
    resumed = sft.train_sft(cfg)
    lines = _metrics(resumed)
    # step 0 is the baseline evaluation; the steps after the checkpoint are not logged twice
    assert [m["step"] for m in lines] == [0, 1, 2, 3, 4, 5, 6]
    for a, b in zip(reference, lines, strict=True):
        for k in ("loss", "eval_loss", "grad_norm", "lr"):
            assert a.get(k) == pytest.approx(b.get(k), abs=1e-6), (k, a, b)


def test_sft_loss_falls_and_model_reloads(tmp_path):
    run = sft.train_sft(_cfg(tmp_path, steps=25, lr=1e-2, eval_every=25))
    baseline, *logs = _metrics(run)
    first = sum(m["loss"] for m in logs[:3]) / 3
    last = sum(m["loss"] for m in logs[-3:]) / 3
    assert last < first - 1.0, (first, last)
    assert baseline["step"] == 0 and logs[-1]["eval_loss"] < baseline["eval_loss"] - 1.0
    from latentmem.memgen import LatentMemoryModel

    base, tok = load_model("tiny-qwen2")
    LatentMemoryModel.from_pretrained(run / "model", base, tok)
    info = json.loads(run.joinpath("run.json").read_text())
    assert info["seed"] == 0 and "torch" in info["packages"] and run.joinpath("config.yaml").is_file()


def test_cli_prints_the_run_folder_last(tmp_path, capsys):
    """Also a bf16-autocast smoke run."""
    out = tmp_path / "cli-run"
    code = main(
        [
            "train",
            "sft",
            "train.steps=1",
            "train.bf16=true",
            "data.eval_size=0",
            f"output_dir={out}",
            "--config",
            "configs/debug/sft.yaml",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)


def test_lora_sft_trains_through_the_trainer_with_positions_from_validity(tmp_path):
    """The LoRA baseline: left padding does not shift an absolute-position model (GPT-2), and its run is
    a `Trainer` run like the weaver's: run folder, metrics, checkpoints, resume, a saved adapter."""
    from peft import LoraConfig

    from latentmem.training.data import encode, synthetic_rows
    from latentmem.training.lora import LoRAModel, summed_nll, train_lora_sft

    cfg = SFTConfig.from_dict(
        {
            **TINY,
            "model": "tiny-gpt2",
            "output_dir": str(tmp_path / "run"),
            "data": {"task": "echo", "train_size": 16, "eval_size": 4},
            "train": {"batch_size": 4, "steps": 4, "save_every": 2, "lr": 1e-2},
        }
    )
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"])
    model = LoRAModel.build(cfg, torch.device("cpu"), lora)
    rows = [{"prompt": "Repeat: red", "answer": "red"}, *synthetic_rows("echo", 1, seed=0)]
    rows[1]["prompt"] += " and then say it once more, please"  # a longer prompt: the first row is padded
    items = encode(rows, model.tokenizer, cfg.data)
    assert len(items[0].prompt_ids) < len(items[1].prompt_ids)
    with torch.no_grad():
        batched = summed_nll(model, items, model.tokenizer.pad_token_id, model.device)
        alone = sum(summed_nll(model, [it], model.tokenizer.pad_token_id, model.device) for it in items)
    assert batched == pytest.approx(float(alone), rel=1e-5)

    run, trained = train_lora_sft(cfg, lora)
    logs = _metrics(run)
    assert [m["step"] for m in logs] == [0, 1, 2, 3, 4] and logs[-1]["eval_loss"] < logs[0]["eval_loss"]
    assert latest_checkpoint(run / "checkpoints").name == "step-000004"
    assert (run / "model" / "adapter_config.json").is_file()
    weights = {k: v.clone() for k, v in trained.trainable_state_dict().items()}
    _, again = train_lora_sft(cfg, lora)  # resumes from step 4: nothing left to train
    assert [m["step"] for m in _metrics(run)] == [0, 1, 2, 3, 4]
    assert all(torch.equal(v, weights[k]) for k, v in again.trainable_state_dict().items())


def test_debug_sft_loss_trajectory_is_pinned(tmp_path):
    """configs/debug/sft.yaml on tiny-qwen2, 4 steps: the losses as measured when this test was written (as
    torchtune pins its recipes' losses). A change to the data, the insertion rule, the loss normalisation,
    the optimiser or the schedule moves them; if the change is intended, re-measure and update the numbers
    with the reason in the commit."""
    cfg = SFTConfig.from_yaml(
        str(Path(__file__).parents[1] / "configs/debug/sft.yaml"),
        [f"output_dir={tmp_path / 'run'}", "train.steps=4", "train.eval_every=0", "train.save_every=0"],
    )
    losses = [m["loss"] for m in _metrics(sft.train_sft(cfg)) if "loss" in m]
    assert losses == pytest.approx([7.469213, 7.402752, 7.457586, 7.05687], abs=2e-4)
