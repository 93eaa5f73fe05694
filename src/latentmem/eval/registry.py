"""A name → implementation registry that imports each built-in implementation only when it is looked up.

The built-ins are listed as name → `"module:attribute"` strings (lm-eval's `MODEL_MAPPING` pattern, as
`cli/train.py` lists its recipes), so the module that owns a registry imports none of them: listing the
names, checking one or registering a new one costs no import, and no implementation has to be imported by
the registry it registers in (the import circle this replaces). Entries added at run time (`registry[name]
= obj`, e.g. a user's task or a test's) sit beside the built-ins.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from typing import TypeVar

T = TypeVar("T")


class LazyRegistry(MutableMapping[str, T]):
    """name → object; built-in entries are `"module:attribute"` paths, imported on first `registry[name]`."""

    def __init__(self, builtins: dict[str, str]) -> None:
        self._paths = dict(builtins)  # name -> "module:attribute" of the built-ins
        self._objects: dict[str, T] = {}  # imported built-ins and entries added at run time

    def __getitem__(self, name: str) -> T:
        if name not in self._objects:
            module, attribute = self._paths[name].split(":")  # KeyError for an unknown name, as a dict
            self._objects[name] = getattr(importlib.import_module(module), attribute)
        return self._objects[name]

    def __setitem__(self, name: str, obj: T) -> None:
        self._objects[name] = obj

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._objects.pop(name, None)
        self._paths.pop(name, None)

    def __contains__(self, name: object) -> bool:
        # Mapping's default would look the entry up, i.e. import it; membership only needs the name
        return name in self._paths or name in self._objects

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._paths, *self._objects]))  # built-ins first, then the added ones

    def __len__(self) -> int:
        return len(dict.fromkeys([*self._paths, *self._objects]))
