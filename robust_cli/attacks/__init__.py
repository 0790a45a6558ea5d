"""Attacks: one module per attack, each function marked by ``@register_attack`` (see ``contract.py``).

``list_attacks()`` discovers them, so adding an attack means adding a module (and its YAML file), nothing here.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable


def list_attacks() -> dict[str, Callable]:
    """``{function name: attack}`` for every function in this package carrying ``@register_attack`` metadata."""
    found: dict[str, Callable] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, obj in vars(module).items():
            if callable(obj) and hasattr(obj, "budget") and hasattr(obj, "norms") and obj.__module__ == module.__name__:
                found[name] = obj
    return found
