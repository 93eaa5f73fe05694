"""The comparison harness end to end on a tiny model: every method trains (briefly) and is scored on the
same held-out split; results.json / .md / .png are written; the arms get the same budget and algorithm
(the SFT arms the same rows in the same order); a trained method beats its untrained start on a task it
can learn; memgen-grpo's reward credits the target; with several seeds, a steps curve, a validation
split and retention tasks, every number in the results is the stats module's value of the recorded
per-item scores; bad input fails before any model loads."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from latentmem.chat import render_chat
from latentmem.cli import build_parser
from latentmem.cli.compare import config_from_args
from latentmem.errors import ConfigError, LatentMemError
from latentmem.eval import stats
from latentmem.eval.compare import CompareConfig, run_compare
from latentmem.eval.method import METHODS, Budget, Context, write_rows
from latentmem.eval.methods.memgen import MemGenGRPO
from latentmem.eval.task import TASKS, Example, Task, TaskError, get_task
from latentmem.memgen import MemGenConfig
from latentmem.models import load_model
from latentmem.training.data import load_rows
from latentmem.training.rewards import resolve_reward
from latentmem.training.rollout import score

FIXTURES = Path(__file__).parent / "fixtures" / "eval"

WORDS = ["apple", "river", "green", "memory", "paris", "orange", "blue", "answer", "city", "water"]


class Parrot(Task):
    """Repeat a word: the answer is the word; a completion is right when it contains it."""

    name = "parrot-test"
    max_new_tokens = 6

    def __init__(self, empty_test: bool = False) -> None:
        self.empty_test = empty_test

    def load(self, split):
        if split == "test" and self.empty_test:
            return []
        words = WORDS[:6] if split == "train" else WORDS
        return [Example(f"Say the word {w}.", w) for w in words]

    def target(self, example):
        return f"{example.answer}."

    def score(self, example, completion):
        return float(example.answer in completion)


class Affirm(Task):
    """Answer every question with "yes": trivially learnable, and a random model never says it."""

    name = "affirm-test"
    max_new_tokens = 4

    def load(self, split):
        words = WORDS[:8] if split == "train" else [*WORDS[8:], "paris", "blue"]
        return [Example(f"Is {w} a word?", "yes") for w in words]

    def target(self, example):
        return "yes"

    def score(self, example, completion):
        return float(completion.strip().startswith("yes"))


class Coin(Parrot):
    """Parrot whose train and test words differ (so that "disjoint from test" is a property of the items),
    scored by the parity of the completion's length: a score that splits even a random model's answers,
    so that intervals, p-values and drops are not all degenerate."""

    name = "coin-test"

    def load(self, split):
        words = WORDS if split == "train" else ["stone", "cloud", "tiger", "piano", "wheel", "lemon"]
        return [Example(f"Say the word {w}.", w) for w in words]

    def score(self, example, completion):
        return float(len(completion) % 2 == 0)


class CoinRetention(Coin):
    """Another task for retention: other prompts, another answer length, the same parity score."""

    name = "coin-retention-test"
    max_new_tokens = 5

    def load(self, split):
        return [Example(f"Is {w} a colour?", "no") for w in ["stone", "cloud", "red", "tiger", "blue"]]


@pytest.fixture(autouse=True)
def test_tasks(monkeypatch):
    """Registered only while a test here runs, so the registry other tests see stays the built-in one."""
    monkeypatch.setitem(TASKS, "parrot-test", Parrot)
    monkeypatch.setitem(TASKS, "affirm-test", Affirm)
    monkeypatch.setitem(TASKS, "coin-test", Coin)
    monkeypatch.setitem(TASKS, "coin-retention-test", CoinRetention)


def _scores(path):
    """The (seeds, items) score matrix of a completions file, with its rows' prompts per seed."""
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    seeds = sorted({r["seed"] for r in rows})
    by_seed = [sorted((r for r in rows if r["seed"] == s), key=lambda r: r["item"]) for s in seeds]
    return np.array([[r["score"] for r in rs] for rs in by_seed]), [
        [r["prompt"] for r in rs] for rs in by_seed
    ]


def _cfg(tmp_path, methods, **kw):
    return CompareConfig.from_dict(
        {
            "task": "parrot-test",
            "model": "tiny-qwen2",
            "methods": methods,
            "out": str(tmp_path / "out"),
            "n_test": 6,
            "eval_batch_size": 4,
            "budget": {"steps": 2, "batch_size": 4, "lr": 1e-3, "num_generations": 2},
            "memgen": {"prompt_latents": 2, "inference_latents": 2, "max_inference_insertions": 1},
            **kw,
        }
    )


def test_compare_runs_every_method_and_writes_results(tmp_path):
    torch.set_num_threads(1)
    methods = ["vanilla", "retrieval", "lora-sft", "grpo", "memgen-sft", "memgen-grpo", "memgen-rag"]
    results = run_compare(_cfg(tmp_path, methods))
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"].keys() == set(methods) and saved["n_test"] == 6
    matrices = {name: _scores(out / name / "completions.jsonl")[0] for name in methods}
    for name in methods:
        r, m = saved["methods"][name], matrices[name]
        lines = [json.loads(x) for x in (out / name / "completions.jsonl").read_text().splitlines()]
        assert r["n"] == len(lines) == 6 and r["accuracy"] == sum(x["score"] for x in lines) / 6
        assert r["seconds_per_sample"] > 0 and r["tokens_per_second"] > 0
        steps = r["training"]["steps"]
        assert steps == (2 if name not in ("vanilla", "retrieval") else 0), (name, r["training"])
        # one seed of 0/1 scores: a Wilson interval and McNemar's exact test
        assert m.shape == (1, 6) and [s["seed"] for s in r["seeds"]] == [0]
        assert r["ci_method"] == "wilson" and r["ci95"] == list(stats.wilson_interval(int(m.sum()), 6))
        assert r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
        assert set(r["p_value"]) == {"vanilla", "lora-sft"} - {name}
        for base, p in r["p_value"].items():
            assert 0 <= p <= 1 and p == stats.paired_test(m, matrices[base]).p
            assert r["p_test"][base] == "mcnemar-exact"
    # the two GRPO arms run one algorithm under one budget, from scratch: TRL's settings are ours
    keys = ("loss_type", "schedule", "lr", "warmup_steps", "weight_decay", "max_grad_norm", "steps")
    keys += ("rows_per_step", "rows_seen", "completions_per_prompt", "temperature", "top_k", "top_p")
    keys += ("beta", "epsilon", "updates_per_batch")
    trl, ours = saved["methods"]["grpo"]["training"], saved["methods"]["memgen-grpo"]["training"]
    assert {k: trl[k] for k in keys} == {k: ours[k] for k in keys}
    assert trl["loss_type"] == "grpo" and trl["schedule"] == "cosine" and ours["rows_seen"] == 2 * 2
    assert trl["start"].startswith("fresh LoRA") and ours["start"].startswith("fresh weaver")
    table = (out / "results.md").read_text()
    assert "| grpo | GRPO (TRL" in table and "| cosine | 0.001 | 2 | 4 | fresh LoRA" in table
    assert (
        saved["methods"]["vanilla"]["trainable_params"]
        == saved["methods"]["retrieval"]["trainable_params"]
        == 0
    )
    # the context a method reads: retrieval's prompts hold its solved examples, the others the question alone
    context = {name: saved["methods"][name]["context_tokens_per_sample"] for name in methods}
    assert context["retrieval"] > 2 * context["vanilla"] > 0 and context["lora-sft"] == context["vanilla"]
    assert "| context tokens / sample |" in (out / "results.md").read_text()
    # memgen-rag's weaver reads retrieved examples: its rows carry their neighbours' vectors, never their own
    rag_rows = [
        json.loads(x) for x in (out / "memgen-rag" / "seed-0" / "train.jsonl").read_text().splitlines()
    ]
    assert all(len(r["memory"]) == 3 and len(r["memory"][0]) == 384 for r in rag_rows)
    assert saved["methods"]["memgen-rag"]["trainable_params"] > weaver_params(saved)
    weaver = saved["methods"]["memgen-sft"]["trainable_params"]
    lora = saved["methods"]["lora-sft"]["trainable_params"]
    assert abs(lora - weaver) / weaver < 0.35  # the LoRA baseline gets the weaver's parameter budget
    assert "| memgen-sft |" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "run.json").exists() and (out / "config.yaml").exists()
    assert results["methods"]["vanilla"] == saved["methods"]["vanilla"]


def _sft_steps(run):
    return [json.loads(x) for x in run.joinpath("metrics.jsonl").read_text().splitlines()]


def test_trained_methods_beat_their_untrained_start_on_the_same_rows(tmp_path):
    """lora-sft starts exactly at the base model (vanilla) and memgen-sft near it; on a task that a few SFT
    steps teach, both must beat it. The two SFT arms train through one loop on the same rows, in the same
    order, with the same lr and steps: their run folders' metrics say so step by step."""
    torch.set_num_threads(1)
    cfg = _cfg(
        tmp_path,
        ["vanilla", "lora-sft", "memgen-sft"],
        task="affirm-test",
        n_test=0,
        budget={"steps": 40, "batch_size": 4, "lr": 1e-2, "num_generations": 2},
    )
    acc = {k: v["accuracy"] for k, v in run_compare(cfg)["methods"].items()}
    assert acc["vanilla"] == 0.0 and acc["lora-sft"] >= 0.75 and acc["memgen-sft"] >= 0.75, acc
    out = tmp_path / "out"
    lora, memgen = (_sft_steps(out / m / "seed-0" / m) for m in ("lora-sft", "memgen-sft"))
    assert len(lora) == len(memgen) == 40
    for key in ("step", "rows_digest", "lr"):
        assert [m[key] for m in lora] == [m[key] for m in memgen], key
    rows = [(out / m / "seed-0" / "train.jsonl").read_text() for m in ("lora-sft", "memgen-sft")]
    assert rows[0] == rows[1]
    lora_cfg, memgen_cfg = (
        (out / m / "seed-0" / m / "config.yaml").read_text() for m in ("lora-sft", "memgen-sft")
    )
    assert lora_cfg.split("train:")[1] == memgen_cfg.split("train:")[1]  # the whole train section
    assert (out / "lora-sft" / "seed-0" / "lora-sft" / "model" / "adapter_config.json").is_file()
    assert (out / "lora-sft" / "seed-0" / "lora-sft" / "checkpoints" / "latest").is_file()


@pytest.mark.parametrize(
    "task_name, task_args",
    [
        ("arithmetic", {"n_train": 6, "n_test": 2}),
        ("gsm8k", {"path": str(FIXTURES / "gsm8k.jsonl")}),
        ("triviaqa", {"path": str(FIXTURES / "triviaqa.jsonl")}),
    ],
)
def test_memgen_grpo_rewards_the_sft_target(tmp_path, task_name, task_args):
    """Along memgen-grpo's path (its rows, its GRPO config, `rollout.score`), the task's own target as a
    completion earns reward 1 and another example's target earns less: the reward reads the gold answer,
    never the SFT target string that no completion reproduces."""
    task = get_task(task_name, **task_args)
    train = task.split("train", 4)
    ctx = Context(
        model="tiny-qwen2", task=task, task_name=task_name, task_args=task_args, train=train,
        budget=Budget(steps=1, batch_size=4, num_generations=2), memgen=MemGenConfig(), workdir=tmp_path,
        seed=0,
    )  # fmt: skip
    cfg = MemGenGRPO(ctx).recipe_config(write_rows(tmp_path / "train.jsonl", task, train))
    rows, _ = load_rows(cfg.data, cfg.seed)
    reward_fn = resolve_reward(cfg.grpo.reward, cfg.grpo.reward_args)
    tok = load_model("tiny-qwen2")[1]
    prompts = [render_chat(tok, r["prompt"], system=cfg.data.system) for r in rows]  # as `Sampler` renders
    targets = [task.target(ex) for ex in train]
    assert score(reward_fn, prompts, targets, rows, cfg.data, [0] * len(rows)).tolist() == [1.0] * len(rows)
    shifted = targets[1:] + targets[:1]
    assert score(reward_fn, prompts, shifted, rows, cfg.data, [0] * len(rows)).sum() < len(rows)
    assert [r["answer"] for r in rows] == [ex.answer for ex in train]  # scoring left the rows alone


def weaver_params(saved):
    return saved["methods"]["memgen-sft"]["trainable_params"]


def test_retrieval_puts_similar_solved_examples_in_the_prompt(tmp_path):
    from latentmem.eval.methods.frozen import RetrievalFewShot

    cfg = _cfg(tmp_path, ["retrieval"])
    task = Parrot()
    ctx = Context(
        model="tiny-qwen2", task=task, task_name="parrot-test", task_args={}, train=task.load("train"),
        budget=cfg.budget, memgen=cfg.memgen, workdir=tmp_path / "r", seed=0, retrieval_k=2,
    )  # fmt: skip
    method = RetrievalFewShot(ctx)
    method.fit()
    prompt = method.with_examples("Say the word river.")
    assert prompt.count("Question:") == 3 and "Answer: river." in prompt
    assert prompt.endswith("Question: Say the word river.\nAnswer:")


def test_seeds_steps_validation_and_retention(tmp_path):
    """Two seeds on the same test items, a steps curve, a validation split and a retention task: each
    number in results.json is the stats module's value of the per-item scores the run recorded."""
    torch.set_num_threads(1)
    methods = ["vanilla", "lora-sft", "memgen-sft"]
    cfg = _cfg(
        tmp_path, methods, task="coin-test", n_test=0, n_train=4, val_fraction=0.5, seeds=[0, 1],
        steps=[2, 1], retention_tasks=["coin-retention-test"],
    )  # fmt: skip
    results = run_compare(cfg)
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert results["methods"] == saved["methods"]
    assert saved["seeds"] == [0, 1] and saved["steps"] == [1, 2] and saved["n_test"] == 6
    assert (
        saved["n_train"] == 4
        and saved["n_val"] == 2
        and saved["retention_tasks"] == {"coin-retention-test": 5}
    )

    matrices, prompts = {}, {}
    for name in methods:
        matrices[name], prompts[name] = _scores(out / name / "completions.jsonl")
    for name in methods:
        r, m = saved["methods"][name], matrices[name]
        assert m.shape == (2, 6) and prompts[name][0] == prompts[name][1]  # the same items for every seed
        assert [s["seed"] for s in r["seeds"]] == [0, 1] and r["n_seeds"] == 2
        assert [s["accuracy"] for s in r["seeds"]] == [row.mean() for row in m]
        assert r["accuracy"] == pytest.approx(m.mean())
        ci = stats.accuracy_ci(m)
        assert r["ci_method"] == ci.method == "bootstrap" and r["ci95"] == [ci.low, ci.high]
        assert r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
        assert set(r["p_value"]) == {"vanilla", "lora-sft"} - {name}
        for base, p in r["p_value"].items():
            test = stats.paired_test(m, matrices[base])
            assert 0 <= p <= 1 and p == test.p and r["p_test"][base] == test.method == "sign-flip permutation"

    # the steps curve: one point per listed count; the count of the budget is the main runs
    assert "steps" not in saved["methods"]["vanilla"]
    for name in ("lora-sft", "memgen-sft"):
        curve = saved["methods"][name]["steps"]
        assert [p["steps"] for p in curve] == [1, 2] and all(len(p["seeds"]) == 2 for p in curve)
        assert curve[1]["accuracy"] == saved["methods"][name]["accuracy"]
        one, _ = _scores_of_runs(out / name, "steps-1")
        assert curve[0]["accuracy"] == pytest.approx(one.mean()) and curve[0]["ci95"][0] <= one.mean()
        assert len(_sft_steps(out / name / "seed-1" / "steps-1" / name)) == 1
    assert (out / "steps.png").read_bytes()[:4] == b"\x89PNG"

    # retention: every method on the other task, its drop against vanilla and the paired p
    base, _ = _scores(out / "vanilla" / "completions-coin-retention-test.jsonl")
    for name in methods:
        e = saved["methods"][name]["retention"]["coin-retention-test"]
        m, _ = _scores(out / name / "completions-coin-retention-test.jsonl")
        assert m.shape == (2, 5) and e["accuracy"] == pytest.approx(m.mean())
        assert e["ci95"][0] <= e["accuracy"] <= e["ci95"][1]
        assert e["drop_vs_vanilla"] == pytest.approx(base.mean() - m.mean())
        if name != "vanilla":
            assert (
                0 <= e["p_value"]["vanilla"] <= 1 and e["p_value"]["vanilla"] == stats.paired_test(m, base).p
            )
    assert saved["methods"]["vanilla"]["retention"]["coin-retention-test"]["drop_vs_vanilla"] == 0
    # the parity score splits the answers, so the checks above compared numbers that can differ
    kept = [saved["methods"][n]["retention"]["coin-retention-test"] for n in methods]
    assert any(r["ci95"][0] < r["ci95"][1] for r in saved["methods"].values())
    assert any(e["drop_vs_vanilla"] != 0 for e in kept) and any(
        e.get("p_value", {}).get("vanilla", 1) < 1 for e in kept
    )

    # the validation split: the same for every seed, apart from every seed's training rows and the test
    val = {json.loads(x)["prompt"] for x in (out / "val.jsonl").read_text().splitlines()}
    test = set(prompts["vanilla"][0])
    train = [
        [
            json.loads(x)["prompt"]
            for x in (out / "lora-sft" / f"seed-{s}" / "train.jsonl").read_text().splitlines()
        ]
        for s in (0, 1)
    ]
    assert len(val) == 2 and not val & test
    assert all(len(t) == 4 and not set(t) & val and not set(t) & test for t in train)
    assert set(train[0]) != set(train[1])  # each seed draws its own sample
    assert train[0] == [
        json.loads(x)["prompt"]
        for x in (out / "memgen-sft" / "seed-0" / "train.jsonl").read_text().splitlines()
    ]  # and every method of a seed trains on it

    table = (out / "results.md").read_text()
    assert "| method | accuracy [95% CI] | p vs vanilla | p vs lora-sft |" in table
    assert "| seed 0 | seed 1 |" in table and "| 1 steps | 2 steps |" in table
    assert "coin-retention-test drop" in table and "| memgen-sft | " in table


def test_eval_split_val_scores_the_validation_split_and_vanilla_answers_once(tmp_path, monkeypatch):
    """Choosing a config on the validation split: every seed is scored on `val.jsonl`'s items, none of the
    test split's; the untrained model is built and evaluated once, its answers recorded for every seed."""
    built = []

    class CountedVanilla(METHODS["vanilla"]):
        def __init__(self, ctx):
            built.append(ctx.seed)
            super().__init__(ctx)

    monkeypatch.setitem(METHODS, "vanilla", CountedVanilla)
    torch.set_num_threads(1)
    cfg = _cfg(
        tmp_path, ["vanilla", "lora-sft"], task="coin-test", n_test=0, n_train=6, val_fraction=0.5,
        seeds=[0, 1], eval_split="val",
    )  # fmt: skip
    results = run_compare(cfg)
    out = tmp_path / "out"
    assert built == [0]
    val = [json.loads(x)["prompt"] for x in (out / "val.jsonl").read_text().splitlines()]
    test = {ex.prompt for ex in get_task("coin-test").split("test")}
    assert results["eval_split"] == "val" and results["n_test"] == len(val) == 3
    for name in ("vanilla", "lora-sft"):
        m, prompts = _scores(out / name / "completions.jsonl")
        assert prompts == [val, val] and not set(val) & test and m.shape == (2, 3)
        assert [s["seed"] for s in results["methods"][name]["seeds"]] == [0, 1]
    m, _ = _scores(out / "vanilla" / "completions.jsonl")
    assert (m[0] == m[1]).all()
    assert "3 validation examples" in (out / "results.md").read_text()

    with pytest.raises(ConfigError, match="val_fraction"):
        _cfg(tmp_path, ["vanilla"], eval_split="val")
    with pytest.raises(ConfigError, match="eval_split"):
        _cfg(tmp_path, ["vanilla"], eval_split="val", val_fraction=0.5, retention_tasks=["coin-test"])
    with pytest.raises(ConfigError, match="eval_split"):
        _cfg(tmp_path, ["vanilla"], eval_split="train")


def _scores_of_runs(method_dir, sub):
    """The score matrix of the runs `<method>/seed-*/<sub>/completions.jsonl`, seeds in order."""
    parts = [_scores(d / sub / "completions.jsonl") for d in sorted(method_dir.glob("seed-*"))]
    return np.concatenate([m for m, _ in parts]), [p[0] for _, p in parts]


def test_cli_flags_fill_the_config(tmp_path):
    parser = build_parser()
    argv = ["compare", "--seeds", "0,1,2", "--steps", "40,120,400", "--retention-tasks", "facts,gsm8k"]
    argv += [
        "--val-fraction",
        "0.1",
        "--methods",
        "vanilla,lora-sft",
        "--train-budget",
        "120",
        "split_seed=3",
    ]
    args, extra = parser.parse_known_args(argv)
    args.overrides = extra
    cfg = config_from_args(args)
    assert cfg.seeds == [0, 1, 2] and cfg.steps == [40, 120, 400] and cfg.budget.steps == 120
    assert cfg.retention_tasks == ["facts", "gsm8k"] and cfg.val_fraction == 0.1 and cfg.split_seed == 3
    assert cfg.methods == ["vanilla", "lora-sft"]
    help_text = " ".join(parser._subparsers._group_actions[0].choices["compare"].format_help().split())
    assert "(default 0)" in help_text and "(default 0.0)" in help_text and "(default: none)" in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["compare", "--seeds", "zero"])


def test_bad_input_fails_before_models_load(tmp_path):
    with pytest.raises(LatentMemError, match="unknown method.*memgen-sft"):
        _cfg(tmp_path, ["vanilla", "no-such-method"])
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        run_compare(_cfg(tmp_path, ["vanilla"], task="nope"))
    with pytest.raises(TaskError, match="test split is empty"):
        run_compare(_cfg(tmp_path, ["vanilla"], task_args={"empty_test": True}))
    with pytest.raises(ConfigError, match="budget.num_generations"):
        _cfg(tmp_path, ["vanilla"], budget={"batch_size": 4, "num_generations": 3})
    for bad, field in [
        ({"seeds": []}, "seeds"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"steps": [0, 10]}, "steps"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"methods": ["lora-sft"], "retention_tasks": ["affirm-test"]}, "retention_tasks"),
        ({"retention_tasks": ["parrot-test"]}, "retention_tasks"),
        ({"retention_task_args": {"gsm8k": {}}}, "retention_task_args"),
    ]:
        with pytest.raises(ConfigError, match=field):
            _cfg(tmp_path, bad.pop("methods", ["vanilla"]), **bad)
    with pytest.raises(TaskError, match="leaving none to train on"):
        run_compare(_cfg(tmp_path, ["vanilla"], n_train=0, val_fraction=0.95))
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        run_compare(_cfg(tmp_path, ["vanilla"], retention_tasks=["nope"]))
    assert set(METHODS) >= {
        "vanilla",
        "retrieval",
        "lora-sft",
        "grpo",
        "memgen-sft",
        "memgen-grpo",
        "memgen-rag",
    }


def test_a_gated_weaver_reports_what_it_served_and_leaves_the_rest_to_the_plain_model(tmp_path):
    """memgen-sft with the prompt gate: `served` per item, `served_share` per task, the training prompts
    served, and every prompt it turned away answered exactly as vanilla answers it."""
    torch.set_num_threads(1)
    cfg = _cfg(
        tmp_path, ["vanilla", "memgen-sft"], n_test=0, retention_tasks=["coin-retention-test"],
        memgen={"prompt_latents": 2, "inference_latents": 2, "max_inference_insertions": 1,
                "trigger": {"prompt": "knn", "prompt_k": 2}},
    )  # fmt: skip
    saved = run_compare(cfg)["methods"]
    out, turned_away = tmp_path / "out", 0
    for file, entry in [
        ("completions.jsonl", saved["memgen-sft"]),
        ("completions-coin-retention-test.jsonl", saved["memgen-sft"]["retention"]["coin-retention-test"]),
    ]:
        gated = [json.loads(x) for x in (out / "memgen-sft" / file).read_text().splitlines()]
        plain = {r["prompt"]: r["completion"] for r in map(json.loads, (out / "vanilla" / file).open())}
        assert entry["served_share"] == pytest.approx(np.mean([r["served"] for r in gated]))
        for r in gated:
            if not r["served"]:
                turned_away += 1
                assert r["completion"] == plain[r["prompt"]]
            if r["prompt"] in {f"Say the word {w}." for w in WORDS[:6]}:  # a training prompt
                assert r["served"]
    assert turned_away > 0 and "served_share" not in saved["vanilla"]
