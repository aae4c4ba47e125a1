"""Public names imported when first used (PEP 562), so importing a package loads no more than
what is asked for (an assembling process never loads torch)."""

from __future__ import annotations

from importlib import import_module
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package`` that imports ``exports`` (public name -> the
    submodule defining it) on first use and keeps the value in the package's namespace."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f".{exports[name]}", package), name)
        setattr(import_module(package), name, value)
        return value

    return __getattr__
