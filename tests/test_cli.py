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
