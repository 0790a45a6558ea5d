"""``robust report``: paper-style tables and figures over many runs and sweeps.

``robust report runs=<dirs | globs | sweep dirs> [by=[defense,model]] [metrics=[...]] [attacks=[...]]
[format=[md,csv,tex,html]] [name=<name> | out=<dir>]`` reads every run's ``eval/`` (and ``history.csv``) and
writes, to ``<out_dir>/reports/<name>`` (``name`` from the command's overrides unless given)::

    report.json          the inputs (resolved runs, by, metrics, attacks) and the files written
    tidy.csv             one row per (run, attack, norm, metric), the runs' parameters as columns
    tables/<t>.md .tex .csv   finlay, attacks_<norm>, metrics, lipschitz, transfer_<attack>_<norm>
                              (robust_cli.reporting.paper_tables)
    report.md report.tex  every table in one file
    plots/<f>.png .svg   error_curves, robust_accuracy, training_curves, rho_adv
    index.html           the tables and figures on one static page

Every file is written atomically. The same command rewrites its own report; a directory holding another
report (other runs or options) is refused unless ``force=true``, which replaces it (the old report's
files that the new one does not write are removed).

Refused, in one line each (exit status 2): a glob matching nothing, unfinished runs (listed), runs without
eval results (listed), runs of several data sets without ``by=dataset``, rows mixing runs that differ in
more than ``seed``, an unknown ``by`` column, metric or format.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig

from robust_cli import io
from robust_cli.apps import task_overrides, user_errors
from robust_cli.config import register_configs
from robust_cli.errors import UserError

register_configs()
log = logging.getLogger("robust_cli.report")

FORMATS = ("md", "csv", "tex", "html")
_NOT_IN_NAME = {"out", "out_dir", "name", "force", "format", "plots"}


def as_list(value: Any) -> list[str] | None:
    """``None``, a string (``a,b`` split at commas) or a list -> a list of strings (None stays None)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v) for v in value]
    return [v for v in str(value).split(",") if v]


def report_dir(cfg: DictConfig, overrides: list[str]) -> Path:
    """``cfg.out``, or ``<out_dir>/reports/<name>`` with ``name`` given or built from the overrides."""
    from robust_cli.rundir.names import sweep_name

    if cfg.get("out"):
        return Path(cfg.out)
    name = cfg.get("name") or sweep_name([o for o in overrides if o.split("=", 1)[0] not in _NOT_IN_NAME])
    if "/" in name or name in ("", ".", ".."):
        raise UserError(f"name={name} must be one folder name; give out=<dir> for a path")
    return Path(cfg.out_dir) / "reports" / name


def _claim(out: Path, inputs: dict[str, Any], force: bool) -> list[str]:
    """Refuse to write over another report; returns the files the earlier report here wrote."""
    record = out / "report.json"
    if not out.exists() or not any(out.iterdir()):
        return []
    old = io.read_json(record) if record.is_file() else None
    if old is not None and old.get("inputs") == inputs:
        return list(old.get("files", []))
    if not force:
        what = "another report (other runs or options)" if old is not None else "files of no report"
        raise UserError(f"{out} holds {what}; give name=<another name> or out=<dir>, or force=true to replace it")
    return list((old or {}).get("files", []))


def build(cfg: DictConfig, overrides: list[str]) -> Path:
    """Everything ``robust report`` does; returns the report directory."""
    from robust_cli.reporting import collect, page, paper_tables, render, report_plots

    formats = as_list(cfg.format) or []
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"format: unknown {', '.join(bad) or '(none given)'}; expected some of {', '.join(FORMATS)}")
    paths = collect.resolve(as_list(cfg.runs) or [])
    runs = collect.load(paths)
    by = paper_tables.grouping(runs, as_list(cfg.by))
    attacks = paper_tables.select_attacks(runs, as_list(cfg.attacks))
    all_metrics = paper_tables.select_metrics(runs, None)
    metrics = paper_tables.select_metrics(runs, as_list(cfg.metrics))
    inputs = {"runs": paths, "by": by, "metrics": as_list(cfg.metrics), "attacks": attacks, "format": formats}
    out = report_dir(cfg, overrides)
    old_files = _claim(out, inputs, bool(cfg.force))

    written: list[Path] = [io.write_csv(out / "tidy.csv", paper_tables.tidy(runs, metrics if cfg.metrics else
                                                                        all_metrics, attacks))]
    table_metrics = metrics if cfg.metrics else [m for m in paper_tables.DEFAULT_METRICS if m in all_metrics]
    tables = [paper_tables.finlay(runs, by), *paper_tables.attacks_tables(runs, by, attacks),
              paper_tables.metrics_table(runs, by, table_metrics, attacks)]
    lip = paper_tables.lipschitz_table(runs, by)
    tables += [lip] if lip is not None else []
    tables += paper_tables.transfer_tables([r.path for r in runs])  # where robust eval source= was run
    for t in tables:
        if "md" in formats:
            written.append(io.write_text(out / "tables" / f"{t.name}.md", render.markdown(t)))
        if "tex" in formats:
            written.append(io.write_text(out / "tables" / f"{t.name}.tex", render.latex(t)))
        if "csv" in formats:
            written.append(io.write_csv(out / "tables" / f"{t.name}.csv", render.csv_frame(t)))
    if "md" in formats:
        written.append(io.write_text(out / "report.md", "\n".join(render.markdown(t) for t in tables)))
    if "tex" in formats:
        written.append(io.write_text(out / "report.tex", "\n".join(render.latex(t) for t in tables)))
    images = report_plots.all_plots(runs, by, out / "plots", attacks) if cfg.plots else []
    written += images
    rel = sorted(os.path.relpath(p, out) for p in written)
    if "html" in formats:
        pngs = [Path(os.path.relpath(p, out)) for p in images if p.suffix == ".png"]
        title = f"robust report: {out.name}"
        written.append(io.write_text(out / "index.html", page.page(title, paths, tables, pngs, rel)))
    files = sorted(os.path.relpath(p, out) for p in written)
    for stale in set(old_files) - set(files) - {"report.json"}:  # force=true: the replaced report's leftovers
        (out / stale).unlink(missing_ok=True)
    io.write_json(out / "report.json", {"inputs": inputs, "files": files})  # last: marks a finished report
    return out


@hydra.main(config_path="pkg://robust_cli.conf", config_name="report", version_base=None)
@user_errors
def main(cfg: DictConfig) -> None:
    out = build(cfg, task_overrides())
    log.info("report: %s", out / ("index.html" if "html" in (as_list(cfg.format) or []) else "report.json"))
