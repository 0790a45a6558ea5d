"""The runs of a report: resolve ``runs=`` (directories, globs, sweep directories), refuse what cannot be
reported, and read each run's parameters and results.

A run's *parameters* are the columns that tell runs apart in a report: ``dataset``, ``model``, ``defense``,
``seed`` (from its ``config.yaml``) and every key any run set on its command line (``run.json``'s
``overrides``; ``epochs``, ``defense.C``, ``experiment``, ...), each read from the run's resolved config so
that a key one run set explicitly and another left at its default compare equal.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from robust_cli.errors import UserError
from robust_cli.rundir import RUNTIME_KEYS, RunDir, SweepDir

#: always columns, in this order, ahead of the other overrides
BASE_PARAMS = ("dataset", "model", "defense", "seed")
_GLOB = set("*?[")


@dataclass
class Run:
    """One finished, evaluated train run as a report sees it."""

    path: str  # as resolved from runs= (relative where given relative)
    params: dict[str, str]
    summary: pd.DataFrame  # eval/summary.csv: one row per (attack, norm), worst_case rows included
    curves: pd.DataFrame  # eval/error_curves.csv: attack, norm, eps, error
    history: pd.DataFrame | None  # history.csv
    lipschitz: dict[str, Any] = field(default_factory=dict)  # eval/lipschitz.json

    @property
    def dir(self) -> RunDir:
        return RunDir(self.path)


def _sweep_runs(sweep: SweepDir, unfinished: list[str]) -> list[str]:
    """The run directories of a sweep's ``jobs.csv`` (train: the trained runs; eval: the evaluated ones);
    jobs not ``completed`` go to ``unfinished``."""
    try:
        jobs = pd.read_csv(sweep.summary_path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise UserError(f"runs: cannot read {sweep.summary_path}: {err}") from None
    out = []
    for _, job in jobs.iterrows():
        run_dir = job.get("run_dir")
        has_dir = isinstance(run_dir, str) and run_dir != ""
        if job.get("status") != "completed":
            where = run_dir if has_dir else f"{sweep} job {job.get('job')}"
            unfinished.append(f"{where} (sweep job {job.get('status')})")
        elif has_dir:
            out.append(run_dir)
    return out


def resolve(specs: list[str]) -> list[str]:
    """The run directories named by ``runs=``, in order of first mention, each once.

    Each spec is a train run directory (holds ``run.json``), a sweep directory (holds ``jobs.csv``), a folder
    holding run directories below it, or a glob of any of these. Raises ``UserError`` for a glob that matches
    nothing, a path that does not exist or holds no run, and for unfinished runs (sweep jobs not completed,
    runs whose ``run.json`` status is not ``done``), all listed in one line.
    """
    if not specs:
        raise UserError("runs= names no run; give runs=<run dir>, a glob or a sweep directory")
    found, unfinished = [], []
    for spec in specs:
        if _GLOB & set(spec):
            paths = sorted(glob.glob(spec))
            if not paths:
                raise UserError(f"runs={spec} matches nothing")
        else:
            paths = [spec]
        for path in paths:
            p = Path(path)
            if not p.exists():
                raise UserError(f"runs: {path} does not exist")
            if RunDir(p).has_record():
                found.append(str(p))
            elif SweepDir(p).summary_path.is_file():
                found += _sweep_runs(SweepDir(p), unfinished)
            else:
                below = sorted(str(r.parent) for r in p.rglob("run.json"))
                if not below:
                    raise UserError(f"runs: {path} is neither a train run directory (run.json), a sweep "
                                    "directory (jobs.csv) nor a folder holding runs")
                found += below
    runs = list(dict.fromkeys(os.path.normpath(r) for r in found))
    for run in runs:
        status = RunDir(run).status()
        if status != "done":
            unfinished.append(f"{run} ({status or 'no run.json'})")
    if unfinished:
        unique = list(dict.fromkeys(unfinished))
        raise UserError(f"unfinished runs, not reported ({len(unique)}): {'; '.join(unique)}; finish them "
                        "(the same robust train command resumes) or leave them out of runs=")
    return runs


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return str(value)


def parameters(run: RunDir, keys: list[str]) -> dict[str, str]:
    """``{column: value as text}`` of a run for ``BASE_PARAMS`` + ``keys`` (override keys), from its
    resolved ``config.yaml``; a key the config does not hold (``experiment``) from the run's overrides."""
    from omegaconf import OmegaConf

    cfg = run.read_config()
    overrides = dict(o.split("=", 1) for o in run.record().data.get("overrides", []) if "=" in o)
    out = {}
    for key in [*BASE_PARAMS, *keys]:
        node = OmegaConf.select(cfg, f"{key}.name" if key in BASE_PARAMS[:3] else key, default=None)
        if node is not None and OmegaConf.is_config(node):
            node = OmegaConf.to_container(node, resolve=True)
        out[key] = _text(node) if node is not None else overrides.get(key, "")
    return out


def _override_keys(run: RunDir) -> list[str]:
    keys = [o.split("=", 1)[0].lstrip("+~") for o in run.record().data.get("overrides", []) if "=" in o]
    return [k for k in keys if k not in RUNTIME_KEYS and not k.startswith("hydra") and k not in BASE_PARAMS]


def load(paths: list[str]) -> list[Run]:
    """Read every run; refuses (``UserError``, all listed in one line) runs without eval results."""
    no_eval = [p for p in paths if not _has_results(RunDir(p))]
    if no_eval:
        raise UserError(f"runs with no eval results ({len(no_eval)}): {'; '.join(no_eval)}; evaluate them "
                        "first (robust eval run=<dir> attack=...) or leave them out of runs=")
    keys = sorted({k for p in paths for k in _override_keys(RunDir(p))})
    runs = []
    for p in paths:
        run = RunDir(p)
        curves = pd.read_csv(run.eval.curves_path) if run.eval.curves_path.is_file() else pd.DataFrame(
            columns=["attack", "norm", "eps", "error"])
        runs.append(Run(p, parameters(run, keys), pd.read_csv(run.eval.summary_path), curves, run.read_history(),
                        run.eval.read_lipschitz()))
    return runs


def _has_results(run: RunDir) -> bool:
    try:
        return not pd.read_csv(run.eval.summary_path).empty
    except (OSError, pd.errors.EmptyDataError):
        return False


def param_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run (index: the run's path), one text column per parameter."""
    return pd.DataFrame([r.params for r in runs], index=[r.path for r in runs])
