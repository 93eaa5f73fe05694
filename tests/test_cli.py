import subprocess
import sys

from latentmem.cli import main


def test_help_lists_subcommands(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for cmd in ("models", "generate", "demo"):
        assert cmd in out


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    from latentmem import __version__

    assert capsys.readouterr().out.strip() == f"latentmem {__version__}"


def test_generate_on_tiny_model(capsys):
    assert main(["generate", "--model", "tiny-gpt2", "--max-new-tokens", "4", "hello", "bye"]) == 0
    out = capsys.readouterr().out
    assert "> hello" in out and "> bye" in out


def test_unknown_model_exits_2_with_a_message():
    proc = subprocess.run(
        [sys.executable, "-m", "latentmem.cli", "generate", "--model", "nope", "hi"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "latentmem: error: unknown model 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr


def _fails_in_one_line(capsys, argv, message):
    """`argv` exits 2 through the CLI's handler: one error line naming the problem, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latentmem: error: ") and "\n" not in err, err
    assert message in err, err


def test_ordinary_bad_input_is_one_line_not_a_traceback(tmp_path, capsys):
    bad_text = tmp_path / "rows.jsonl"
    bad_text.write_bytes(b'{"prompt": "caf\xe9", "answer": "1"}\n')
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("task: [unclosed\n")
    from latentmem.models import load_model

    no_tokenizer = tmp_path / "model"
    load_model("tiny-gpt2")[0].save_pretrained(no_tokenizer)  # weights and config, no tokenizer
    capsys.readouterr()  # its progress bar
    cases = [
        (
            ["train", "sft", "--config", "configs/debug/sft.yaml", f"data.path={bad_text}"],
            "line 1 is not UTF-8 text",
        ),
        (["compare", "--config", str(tmp_path / "missing.yaml")], "missing.yaml does not exist"),
        (["compare", "--config", str(bad_yaml)], "bad.yaml: not valid YAML"),
        (["compare", "--task-arg", "novalue"], "--task-arg 'novalue': expected KEY=VALUE"),
        (
            ["generate", "--model", "tiny-gpt2", "--max-new-tokens", "0", "hi"],
            "--max-new-tokens: must be >= 1",
        ),
        (["generate", "--model", str(no_tokenizer), "hi"], "holds no tokenizer"),
        (["bench", "recall", "--bank-size", "100", "--queries", "0"], "--queries: must be >= 1, got 0"),
        (["bench", "generate", "--batch", "0"], "--batch: must be >= 1, got 0"),
        (["bench", "serve", "--rounds", "0"], "--rounds: must be >= 1, got 0"),
        (["train", "sft", "--config", "configs/debug/sft.yaml", "train.lr=inf"], "must be a finite number"),
    ]
    for argv, message in cases:
        _fails_in_one_line(capsys, argv, message)


def test_task_args_parse_like_config_overrides():
    from latentmem.cli import build_parser
    from latentmem.cli.compare import config_from_args

    args, _ = build_parser().parse_known_args(
        ["compare", "--task", "arithmetic", "--task-arg", "n_items=5", "--task-arg", "name=x"]
    )
    assert config_from_args(args).task_args == {"n_items": 5, "name": "x"}


def test_memory_metadata_keeps_what_was_typed(tmp_path, capsys):
    import json

    store = ["--store", str(tmp_path / "s"), "--user", "u", "--json"]
    argv = ["memory", "add", *store, "--embedder", "hash:16", "a fact"]
    meta = ["--meta", "zip=01234", "--meta", "country=NO", "--meta", "version=1.10", "--meta-json", "n=3"]
    assert main([*argv, *meta]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    assert record["metadata"] == {"zip": "01234", "country": "NO", "version": "1.10", "n": 3}
    search = ["memory", "search", *store, "fact"]
    assert main([*search, "--filter", "zip=01234", "--filter-json", "n=3"]) == 0
    assert [h["id"] for h in json.loads(capsys.readouterr().out)] == [record["id"]]
    _fails_in_one_line(capsys, [*argv, "--meta-json", "n=abc"], "--meta-json 'n=abc': 'abc' is not JSON")


def test_memory_list_and_delete_load_no_embedder(tmp_path, capsys, monkeypatch):
    import json

    import latentmem.memory.vector as vector

    store = ["--store", str(tmp_path / "s"), "--user", "u", "--json"]
    assert main(["memory", "add", *store, "--embedder", "hash:16", "a fact", "another"]) == 0
    ids = [r["id"] for r in json.loads(capsys.readouterr().out)]

    def no_model(spec):
        raise AssertionError(f"loaded embedder {spec!r}")

    monkeypatch.setattr(vector, "load_embedder", no_model)
    assert main(["memory", "list", *store]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == ids
    assert main(["memory", "delete", *store, str(ids[0])]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": [ids[0]]}
    monkeypatch.undo()  # searching embeds the query: the store's embedder loads then
    assert main(["memory", "search", *store, "another"]) == 0
    assert [h["id"] for h in json.loads(capsys.readouterr().out)] == [ids[1]]


def test_memory_add_reads_stdin_and_files(tmp_path, capsys, monkeypatch):
    import io
    import json

    store = ["--store", str(tmp_path / "s"), "--user", "u", "--embedder", "hash:16", "--json"]
    facts = tmp_path / "facts.txt"
    facts.write_text("first fact\n\n  second fact  \n")
    monkeypatch.setattr("sys.stdin", io.StringIO("a fact\nover two lines\n"))
    assert main(["memory", "add", *store, "-", "--file", str(facts)]) == 0
    texts = [r["text"] for r in json.loads(capsys.readouterr().out)]
    assert texts == ["a fact\nover two lines", "first fact", "second fact"]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9\n")
    _fails_in_one_line(capsys, ["memory", "add", *store, "--file", str(bad)], "bad.txt: not UTF-8 text")
    _fails_in_one_line(capsys, ["memory", "add", *store, "--file", str(tmp_path / "no")], "--file")
    _fails_in_one_line(capsys, ["memory", "add", *store], "nothing to add")


def test_generate_and_compare_refuse_values_that_would_change_meaning_silently(capsys):
    for value in ("nan", "inf", "-1"):
        argv = ["generate", "--model", "tiny-gpt2", "--temperature", value, "hi"]
        _fails_in_one_line(capsys, argv, "--temperature: must be a finite number >= 0")
    _fails_in_one_line(capsys, ["compare", "--methods", ""], "methods: name at least one method")


def _train_sft(tmp_path, *overrides):
    base = ["train", "sft", "--config", "configs/debug/sft.yaml", f"output_dir={tmp_path / 'run'}"]
    small = ["data.train_size=16", "data.eval_size=0", "train.batch_size=4", "train.warmup_steps=0"]
    return main([*base, *small, "train.save_every=0", *overrides])


def test_rerunning_a_finished_run_says_so(tmp_path, capsys):
    assert _train_sft(tmp_path, "train.steps=2") == 0
    capsys.readouterr()
    assert _train_sft(tmp_path, "train.steps=2") == 0
    assert "run already finished at step 2; nothing to do" in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint_and_the_rerun_resumes_bit_identically(tmp_path, capsys, monkeypatch):
    import os
    import signal

    from safetensors.torch import load_file

    import latentmem.training.sft as sft

    real, calls = sft.summed_nll, {"n": 0}

    def ctrl_c_in_step_2(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # as the user would: while a step computes
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(sft, "summed_nll", ctrl_c_in_step_2)
    assert _train_sft(tmp_path, "train.steps=4") == 130
    err = capsys.readouterr().err
    assert "stopped at step 2 of 4; checkpoint saved. Rerun the same command to resume" in err, err
    assert (tmp_path / "run" / "checkpoints" / "step-000002").is_dir()
    assert not (tmp_path / "run" / "model").exists()
    monkeypatch.undo()
    assert _train_sft(tmp_path, "train.steps=4") == 0
    assert "resumed from step 2" in capsys.readouterr().err
    assert _train_sft(tmp_path / "straight", "train.steps=4") == 0
    resumed, straight = (
        load_file(p / "run" / "model" / "memgen.safetensors") for p in (tmp_path, tmp_path / "straight")
    )
    assert resumed.keys() == straight.keys()
    assert all((resumed[k] == straight[k]).all() for k in resumed)
