"""Packages whose public names import their defining modules on first use.

`latentmem`, `latentmem.memgen` and `latentmem.analyze` re-export names from modules that import torch and
transformers (seconds). Importing those on first access rather than with the package keeps `import
latentmem` and `latentmem --help` fast, while `from latentmem.memgen import LatentMemoryModel` still works.
"""

from __future__ import annotations

import ast
import importlib
import sys
import types
from pathlib import Path
from typing import Any

_EXPORTS = "_lazy_exports"


class _LazyPackage(types.ModuleType):
    """A package module that resolves its exported names lazily (see `lazy_package`)."""

    def __getattr__(self, name: str) -> Any:  # called only when ordinary lookup fails
        source = self.__dict__.get(_EXPORTS, {}).get(name)
        if source is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # The import system binds every imported submodule on its package. Where an exported name is also
        # a submodule's name (the function `memgen.generate` lives in the module `memgen.generate`), that
        # binding would hide the export; an eager package rebinds the name after the import, so skip it here.
        if (
            isinstance(value, types.ModuleType)
            and value.__name__ == f"{self.__name__}.{name}"
            and name in self.__dict__.get(_EXPORTS, {})
        ):
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*self.__dict__, *self.__dict__.get(_EXPORTS, {})})


def _type_checking_imports(path: str) -> dict[str, str]:
    """Name -> module of every `from M import N` under `if TYPE_CHECKING:` at the top of the file at `path`."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), path)
    exports = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
                    exports |= {alias.asname or alias.name: stmt.module for alias in stmt.names}
    return exports


def lazy_package(name: str) -> None:
    """Make package `name` export the names its `if TYPE_CHECKING:` block imports, each imported on first
    access. The block is thus the one list of exports, and type checkers read it as ordinary imports."""
    module = sys.modules[name]
    exports = _type_checking_imports(module.__file__ or "")
    missing = set(getattr(module, "__all__", ())) - exports.keys() - module.__dict__.keys()
    if missing:  # a name added to __all__ but not to the block would fail only when first used
        raise ImportError(f"{name}.__all__ names {sorted(missing)}, which its TYPE_CHECKING block lacks")
    module.__dict__[_EXPORTS] = exports
    module.__class__ = _LazyPackage
