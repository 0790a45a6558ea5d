"""Every ``robust_cli`` name the benchmark and helper scripts import exists.

The scripts are not run by the test suite (they need peers in side directories, trained runs, minutes), and
many import lazily inside functions, so a renamed or moved name breaks them only when someone runs them: a
``from robust_cli.attacks.pdpgd import perturbation_norm`` in ``bench_pdpgd.py`` outlived the name's move to
``primal_steps`` by several sessions. This reads each script's import statements, wherever they are, and
resolves them.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "scripts").glob("*.py"))


def _robust_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, module, name or None)`` for every ``import robust_cli...`` / ``from robust_cli... import``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("robust_cli"):
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names if alias.name.startswith("robust_cli")]
    return found


def test_the_scripts_are_found():
    assert len(SCRIPTS) >= 10 and any(p.name == "bench_pdpgd.py" for p in SCRIPTS)


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_every_robust_cli_import_of_a_script_resolves(path):
    missing = []
    for line, module, name in _robust_imports(path):
        mod = importlib.import_module(module)
        if name is not None and name != "*" and not hasattr(mod, name):
            try:  # a submodule imported by name
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{path.name}:{line}: from {module} import {name}")
    assert not missing, "\n".join(missing)
