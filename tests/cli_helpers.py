"""Run the ``robust`` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def robust(*args: str, cwd: Path | None = None, env: dict | None = None,
           timeout: int = 600) -> subprocess.CompletedProcess:
    """``robust <args>`` via ``python -m robust_cli.cli``; returns the completed process (text output)."""
    full_env = {k: v for k, v in os.environ.items() if k != "ROBUST_DATA"}  # tests choose their data
    full_env.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})})
    return subprocess.run([sys.executable, "-m", "robust_cli.cli", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def only_run_dir(out_dir: Path) -> Path:
    """The single train run directory under ``out_dir`` (the one holding run.json)."""
    runs = [p.parent for p in out_dir.glob("train/*/*/*/*/run.json")]
    assert len(runs) == 1, f"expected one run under {out_dir}, found {runs}"
    return runs[0]
