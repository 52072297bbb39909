"""Attributes of a package loaded on first use (PEP 562), so importing it stays light."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict


def lazy_getattr(package: str, table: Dict[str, str], namespace: Dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``package.<table[name]>`` for ``name`` and caches it."""

    def __getattr__(name: str) -> Any:
        if name in table:
            value = getattr(importlib.import_module(f".{table[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
