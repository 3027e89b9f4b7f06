"""Public names imported on first use, so that importing a package does no work."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_getattr(package: str, names: Mapping[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` for `package` that imports `names[name]` (a module name, absolute
    or relative to `package`) when `name` is first used."""

    def __getattr__(name: str) -> object:
        if name in names:
            return getattr(importlib.import_module(names[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
