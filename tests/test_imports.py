"""The package's import graph has no circle, and the registries import their implementations only on use.

The graph is read from the source with `ast` (no import runs): an edge A → B for every import of B that runs
when A is imported, i.e. outside functions and outside `if TYPE_CHECKING:`. An import inside a function runs
later, so it cannot deadlock module initialisation; such imports are allowed to point back.
"""

import ast
import subprocess
import sys
from pathlib import Path

import latentmem

SRC = Path(latentmem.__file__).parent.parent  # .../src, holding the `latentmem` package


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name → file, for every module under `root / package` (a package is its __init__.py)."""
    files = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _load_time_imports(nodes: list[ast.stmt]):
    """The import statements among `nodes` that run at import time (not in functions or TYPE_CHECKING)."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _load_time_imports(node.orelse)
        else:  # blocks that run at import time: if, try, with, for, class bodies
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, [])
                for child in children:
                    yield from _load_time_imports(
                        child.body if isinstance(child, ast.ExceptHandler) else [child]
                    )


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module → the package's modules it imports at import time."""
    files = module_files(root, package)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]  # for relative imports
        deps = set()
        for node in _load_time_imports(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names if alias.name in files}
                continue
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # `from pkg import mod` imports the module; `from mod import name`, mod
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                if target in files:
                    deps.add(target)
        graph[module] = deps - {module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a → ... → a) for every back edge a depth-first search meets; [] for an acyclic graph."""
    state: dict[str, str] = {}  # "open" while on the search path, then "done"
    path: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_the_package_has_no_import_circle():
    graph = import_graph(SRC, "latentmem")
    assert "latentmem.eval.task" in graph and "latentmem.eval.tasks.math" in graph  # the walk saw the tree
    cycles = find_cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_check_finds_a_circle(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.sub import b\n\ndef f():\n    import pkg.c\n")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "b.py").write_text(
        "try:\n    from ..a import f\nexcept ImportError:\n    pass\n"
    )
    (tmp_path / "pkg" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\nimport pkg.sub\n"
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.sub.b"},
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.a"},
        "pkg.c": {"pkg.sub"},
    }
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]


def test_the_task_and_method_registries_import_no_implementation():
    # a fresh interpreter: in this one other tests have imported the implementations already
    code = (
        "import sys\n"
        "from latentmem.eval.method import METHODS, check_methods\n"
        "from latentmem.eval.task import TASKS, register_task\n"
        "names = sorted(TASKS), list(METHODS)\n"
        "check_methods(['vanilla', 'memgen-rag'])\n"
        "assert 'gsm8k' in TASKS and 'grpo' in METHODS\n"
        "print(sorted(m for m in sys.modules if m.startswith(('latentmem.eval.tasks.', 'latentmem.eval.methods.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_built_in_method_path_imports_and_carries_its_name():
    from latentmem.eval.method import BUILTIN_METHODS, METHODS

    for name in BUILTIN_METHODS:
        assert METHODS[name].__module__.startswith("latentmem.eval.methods.") and METHODS[name].name == name
