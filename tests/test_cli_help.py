"""`--help` answers at once (no torch), every option says what it does and its default, every subcommand
ends with an example; and the lazy package exports behave like the eager ones they replaced."""

import argparse
import subprocess
import sys

import pytest

from latentmem.cli import build_parser
from latentmem.cli.bench import BENCH_TARGETS, Targets
from latentmem.cli.common import DTYPE_NAMES, HelpFormatter

HEAVY = ("torch", "transformers", "peft", "sentence_transformers")


def _heavy_modules_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running `code`."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return eval(out.stdout.strip().splitlines()[-1])


def test_building_the_parser_imports_no_torch():
    assert _heavy_modules_after("from latentmem.cli import build_parser; build_parser()") == []


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["models"],
        ["generate"],
        ["demo"],
        ["train"],
        ["bench"],
        ["bench", "memory"],
        ["bench", "recall"],
        ["memory", "add"],
        ["memory", "list"],
        ["compare"],
        ["analyze", "clusters"],
        ["serve"],
        ["serve", "keys", "create"],
    ],
)
def test_help_imports_no_torch(argv):
    code = (
        "from latentmem.cli import main\n"
        f"try:\n    main({[*argv, '--help']!r})\nexcept SystemExit as exc:\n    assert exc.code == 0\n"
    )
    assert _heavy_modules_after(code) == []


def test_the_package_exports_load_on_first_use():
    code = "import latentmem\nfrom latentmem import Config, LatentMemError, seed_everything"
    assert _heavy_modules_after(code) == []
    import latentmem
    import latentmem.memgen
    import latentmem.memgen.generate  # a submodule named like an export must not hide the export
    from latentmem import load_model
    from latentmem.memgen import LatentMemoryModel, generate
    from latentmem.models import load_model as defined

    assert load_model is defined and callable(generate) and not isinstance(generate, type(latentmem))
    assert latentmem.memgen.generate is generate and LatentMemoryModel.__module__ == "latentmem.memgen.model"
    assert set(latentmem.__all__) <= set(dir(latentmem))
    for package in (latentmem, latentmem.memgen):
        assert all(getattr(package, name) is not None for name in package.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        latentmem.nope  # noqa: B018


def test_dtype_names_match_the_loader():
    from latentmem.models import DTYPES

    assert tuple(DTYPES) == DTYPE_NAMES


def _parsers(parser: argparse.ArgumentParser, path: str = "latentmem"):
    """(command path, parser) for `parser` and every subcommand under it, bench targets loaded."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name in list(action.choices):
                sub = action.load(name) if isinstance(action, Targets) else action.choices[name]
                yield from _parsers(sub, f"{path} {name}")


def test_every_option_has_help_with_its_default_and_every_command_an_example():
    parsers = dict(_parsers(build_parser()))
    assert {"latentmem memory add", "latentmem bench generate", "latentmem serve keys revoke"} <= set(parsers)
    missing_help, missing_default, missing_example = [], [], []
    for path, parser in parsers.items():
        if "latentmem" not in (parser.epilog or ""):
            missing_example.append(path)
        formatter = HelpFormatter(path)
        for action in parser._actions:
            if isinstance(
                action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction
            ):
                continue
            name = f"{path} {'/'.join(action.option_strings) or action.dest}"
            default = action.default
            stated = not (
                default is None or default is False or default == [] or default == argparse.SUPPRESS
            )
            if not action.help:
                missing_help.append(name)
                continue
            shown = "default" in formatter._get_help_string(action) or f"({default}" in action.help  # "(5)"
            if stated and action.option_strings and not shown:
                missing_default.append(name)
    assert not missing_help, f"options without help: {missing_help}"
    assert not missing_default, f"options whose help hides the default: {missing_default}"
    assert not missing_example, f"commands without an example epilog: {missing_example}"


def test_help_shows_defaults_and_the_example(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    out = capsys.readouterr().out
    assert "random seed (default: 0)" in out and "(default: 64)" in out
    assert "example:\n  latentmem generate --model tiny-qwen2" in out


def test_bench_targets_are_listed_as_their_modules_register_them():
    action = next(a for a in build_parser()._subparsers._actions if isinstance(a, argparse._SubParsersAction))
    bench = action.choices["bench"]
    targets = next(a for a in bench._actions if isinstance(a, Targets))
    listed = {a.dest: a.help for a in targets._choices_actions}
    assert listed == {name: text for name, (_, text) in BENCH_TARGETS.items()}
    for name, (module, text) in BENCH_TARGETS.items():
        own = argparse.ArgumentParser().add_subparsers()
        __import__(module, fromlist=["register"]).register(own)
        assert {a.dest: a.help for a in own._choices_actions}[name] == text, name
