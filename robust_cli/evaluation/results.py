"""From attack results to the files of ``<run>/eval/``: one pair's three files, then the run's merged files.

Shared by ``robust eval`` (one result per (attack, norm) pair) and by the merge of a sharded evaluation
(robust_cli.evaluation.shards), so that a merged evaluation writes exactly what an unsharded one writes.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import ListConfig

from robust_cli.evaluation.runner import AttackResult
from robust_cli.rundir import ResultDir

log = logging.getLogger("robust_cli.eval")


def write_result(result_dir: ResultDir, result: AttackResult, *, attack: str, norm: str, budget: bool, eps: float,
                 thresholds: list[float], zero_grad: float | None, config: dict[str, Any],
                 started_from: list[str] | None = None, search: dict[str, Any] | None = None,
                 mode: str = "distance", budgets: list[float] | None = None,
                 model_checks: dict[str, Any] | None = None, source: dict[str, str] | None = None,
                 bracketed_by: list[str] | None = None) -> dict[str, Any]:
    """Write ``per_sample.csv``, ``curve.csv`` and ``summary.json`` of one (attack, norm); return the summary.

    ``eps``: the configured eps of ``norm`` (``error_at_eps``); ``thresholds``: its robust-accuracy
    thresholds; ``zero_grad``: the fraction of images with a zero input gradient (a check); ``config``:
    ``cache.result_config(...)``, stored for the cache; ``started_from``: the attacks whose images were this
    one's ``x_init`` in this call; ``search``: ``search_settings(cfg)``, the eps search a budget attack's
    distances came from (its precision is recorded, ``search_precision``); ``mode``: ``distance`` or
    ``fixed`` (``budgets``: the eps a budget attack ran at, no search); ``model_checks``:
    ``checks.model_output_checks`` of the model, stored with this result's checks; ``source``: a transfer
    evaluation's ``{"source": the source run's path, "transfer_of": the attack}``; ``bracketed_by``: the
    attacks whose distances were a budget attack's first upper brackets (adaptive search).
    """
    from robust_cli.evaluation.checks import curve_check, unbounded_check
    from robust_cli.evaluation.curves import error_curve
    from robust_cli.evaluation.summary import summarize

    summary = summarize(
        result.frame, attack=attack, norm=norm, x_norm=result.x_norm, eps=eps, thresholds=thresholds,
        seconds=result.seconds, forward_per_sample=result.forward_per_sample,
        backward_per_sample=result.backward_per_sample,
    )
    curve_eps, err = error_curve(result.frame["distance"].to_numpy())
    summary["budget"] = bool(budget)
    summary["mode"] = str(mode)
    if budgets is not None:
        summary["fixed_eps"] = list(budgets)
    summary["search_resolution"] = result.resolution
    searched = budget and search is not None and budgets is None
    if searched:
        summary["search"] = search_precision(result, search, thresholds)
    summary["checks"] = {
        **curve_check(err, result.non_monotone),
        **unbounded_check(bool(budget), summary["success_rate"], attack),
        "zero_grad_fraction": zero_grad,
        **(model_checks or {}),
    }
    if searched:  # a check, so that the console's failed checks name it too
        coarse = summary["search"]["coarser_than_gap"]
        summary["checks"]["resolution_valid"] = {"ok": coarse == 0, "coarser_than_gap": coarse}
        if coarse:
            log.warning("%s %s: the eps search resolved %d images more coarsely than the smallest gap between two "
                        "thresholds (%.4g); the robust accuracies may swap images between thresholds (lower "
                        "eps_rtol or give eps_tol)", attack, norm, coarse, summary["search"]["threshold_gap"])
    summary["config"] = config
    summary.update(source or {})
    # a start from earlier attacks of this call makes the result depend on them; recorded, not a cache key
    # (a stronger start only lowers the distances, and a rerun with other attacks would refuse needlessly)
    summary["started_from"] = list(started_from or [])
    if bracketed_by:
        summary["bracketed_by"] = list(bracketed_by)
    result_dir.write(result.frame, pd.DataFrame({"eps": curve_eps, "error": err}), summary)
    return summary


def search_settings(cfg: Any) -> dict[str, Any]:
    """The eps search of an eval config: ``{"method", "eps_rtol", "eps_tol"}`` (the tolerance that applies)."""
    tol = cfg.get("eps_tol")
    return {"method": str(cfg.eps_search), "eps_rtol": float(cfg.eps_rtol) if tol is None else None,
            "eps_tol": None if tol is None else float(tol)}


def search_precision(result: AttackResult, search: dict[str, Any], thresholds: list[float]) -> dict[str, Any]:
    """``summary.json``'s ``search`` of a budget attack's distances: the tolerance asked (``search``), the
    resolution achieved (``hi - lo`` per searched image: max, median, fraction within the tolerance) and
    ``coarser_than_gap``, the images resolved more coarsely than the smallest gap between two of the norm's
    thresholds (the robust accuracies read at them could then swap images between thresholds; the check
    ``resolution_valid`` fails where there is any)."""
    res, tol = result.resolutions, result.tolerances
    gaps = [b - a for a, b in zip(sorted(thresholds), sorted(thresholds)[1:]) if b > a]
    coarse = int((res > min(gaps)).sum()) if gaps and len(res) else 0
    return {**search,
            "resolution_max": float(res.max()) if len(res) else 0.0,
            "resolution_median": float(np.median(res)) if len(res) else 0.0,
            "within_tolerance": float((res <= tol * (1 + 1e-4)).mean()) if len(res) else 1.0,
            "threshold_gap": min(gaps) if gaps else None, "coarser_than_gap": coarse}


def write_merged(eval_dir: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int,
                 lipschitz: bool, force: bool, model_id: str, title: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Under the eval lock: ``lipschitz.json`` (where asked for and stale), the cross checks, ``summary.csv``,
    ``error_curves.csv`` and ``error_curves.png`` over everything evaluated on the run.

    ``eval_dir``: a run's ``EvalDir`` (or an external model's). ``x`` ``[N,C,H,W]``, ``y`` ``[N]``: the
    evaluated images (the Lipschitz statistics are theirs); ``title``: the plot's.
    Returns the merged summary table and the checks per ``<attack>-<norm>``.
    """
    from robust_cli.evaluation.cache import lipschitz_stale
    from robust_cli.evaluation.lipschitz import lipschitz_statistics
    from robust_cli.reporting.plots import plot_error_curves
    from robust_cli.reporting.tables import evaluated, merge, update_cross_checks

    n = int(x.shape[0])
    with eval_dir.lock():  # concurrent -m jobs merge one after another
        stale = lipschitz_stale(eval_dir.read_lipschitz(), n, model_id)  # n_examples changed, or retrained
        if lipschitz and (force or stale):
            stats = {**lipschitz_statistics(model, x, y, batch_size), "model": model_id}
            eval_dir.write_lipschitz(stats)
            log.info("lipschitz: max |grad loss| %.4g, max |J| %.4g, prod |W| %.4g",
                     stats["max_grad_norm"], stats["max_jacobian_norm"], stats["weight_norm_product"])
        update_cross_checks(eval_dir)
        summary, curves = merge(eval_dir)
        plot_error_curves(curves, eval_dir.plot_path, title=title)
        checks = {f"{s['attack']}-{s['norm']}": s.get("checks", {}) for _, s in evaluated(eval_dir)}
    return summary, checks


def eps_of(eps_cfg: Any, norm: str) -> float:
    """The eps ``error_at_eps`` is read at: ``eps.<norm>`` of an eval config, or the first of its list
    (``mode=fixed``); NaN where none is set."""
    value = eps_cfg.get(norm, math.nan)
    return float(value[0]) if isinstance(value, (list, tuple, ListConfig)) else float(value)
