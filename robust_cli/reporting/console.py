"""The summary table ``robust eval`` prints on the console (rich), then the validity checks per result."""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import pandas as pd


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}g}"
    return str(v)


def print_summary(summary: pd.DataFrame, checks: dict[str, dict[str, Any]], console=None) -> None:
    """A compact rich table of the merged summary (every column is in ``summary.csv``), then the checks."""
    from rich.console import Console
    from rich.table import Table

    from robust_cli.evaluation.checks import failed_checks

    # a pipe or a log file gets 80 columns from rich: too narrow for the table, so give it room
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    table = Table(title="robust eval (robust accuracy at the thresholds: eval/summary.csv)", title_justify="left")
    for head in ("attack", "norm", "clean err", "median d", "mean d", "rho_adv", "err@eps", "success", "s",
                 "fwd/bwd"):
        table.add_column(head, justify="left" if head in ("attack", "norm") else "right", no_wrap=True)
    for _, row in summary.iterrows():
        table.add_row(
            str(row["attack"]), str(row["norm"]), _fmt(row["clean_error"]), _fmt(row["median_distance"]),
            _fmt(row["mean_distance"]), _fmt(row["rho_adv"]), f"{_fmt(row['error_at_eps'])}@{_fmt(row['eps'])}",
            _fmt(row["success_rate"]), _fmt(row["seconds"], 2),
            f"{_fmt(row['forward_per_sample'])}/{_fmt(row['backward_per_sample'])}",
        )
    console.print(table)
    for key, flags in checks.items():
        failed = failed_checks(flags)
        style = "red" if failed else "green"
        text = ("failed: " + ", ".join(failed)) if failed else "passed"
        console.print(f"checks {key}: [{style}]{text}[/{style}] (zero-grad fraction "
                      f"{_fmt(flags.get('zero_grad_fraction'))})")
