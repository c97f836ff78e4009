"""Names imported on first use (PEP 562), for packages whose ``__init__`` re-exports heavy modules.

``__getattr__, __dir__ = lazy_exports(__name__, {"name": "home.module", ...})`` in a package's
``__init__``: ``package.name`` imports its home module the first time it is read and caches it in
the package, so importing the package itself (and the command line's ``--help``) loads no torch
or TransformerLens until a name that needs them is used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` re-exporting ``exports`` (name -> home module; a
    name whose home is ``package.name`` is that submodule itself)."""

    def __getattr__(name: str) -> object:
        home = exports.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(home)
        value = module if home == f"{package}.{name}" else getattr(module, name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
