"""Merged tables of everything evaluated on one run: ``eval/summary.csv`` and ``eval/error_curves.csv``.

Each ``eval/<attack>-<norm>/`` directory holds ``per_sample.csv``, ``curve.csv`` and ``summary.json``; the
merge reads them all, so separate ``robust eval`` calls (or ``-m`` jobs) accumulate into the same tables.
Per norm with two attacks or more, a ``worst_case`` row is added: per image the minimum distance over the
attacks, with its own error curve (Def. 4.1 of Finlay, Oberman & Abbasi, "Improved robustness to
adversarial examples using Lipschitz regularization of the loss", applied to the per-image worst case).
Certified results (``eval/certified/<method>-<norm>/``) add rows ``certified_<method>`` whose
``median_distance`` is the median certified radius and ``error_at_eps`` the certified error; they take no
part in the worst case.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import pandas as pd

from robust_cli.evaluation.certified import certified_label
from robust_cli.evaluation.checks import cross_checks, failed_checks
from robust_cli.evaluation.curves import error_at, error_curve, median_distance, worst_case
from robust_cli.rundir import EvalDir, ResultDir

log = logging.getLogger(__name__)

WORST = "worst_case"
SUMMARY_COLUMNS = [
    "attack", "norm", "n", "clean_error", "median_distance", "mean_distance", "rho_adv", "eps", "error_at_eps",
]
COST_COLUMNS = ["success_rate", "seconds", "forward_per_sample", "backward_per_sample", "checks_failed"]
CURVE_COLUMNS = ["attack", "norm", "eps", "error"]


def evaluated(eval_dir: EvalDir | str | os.PathLike) -> list[tuple[ResultDir, dict[str, Any]]]:
    """``[(attack-norm result directory, summary)]`` of every finished evaluation under ``eval_dir``, sorted."""
    return EvalDir(eval_dir).results()


def _row(summary: dict[str, Any]) -> dict[str, Any]:
    row = {k: summary.get(k) for k in SUMMARY_COLUMNS}
    for t, acc in summary.get("robust_accuracy", {}).items():
        row[f"robust_acc@{t}"] = acc
    row.update({k: summary.get(k) for k in COST_COLUMNS[:-1]})
    row["checks_failed"] = " ".join(failed_checks(summary.get("checks", {})))
    return row


def _distances_by_norm(entries: list[tuple[ResultDir, dict[str, Any]]]) -> dict[str, dict[str, pd.DataFrame]]:
    by_norm: dict[str, dict[str, pd.DataFrame]] = {}
    for result, summary in entries:
        frame = result.read_per_sample()
        by_norm.setdefault(summary["norm"], {})[summary["attack"]] = frame
    return by_norm


def update_cross_checks(eval_dir: EvalDir | str | os.PathLike) -> None:
    """Recompute the checks between attacks of one norm and store them in the concerned ``summary.json``.

    A ``mode=fixed`` result's per-image size is that of the adversarial found at the smallest breaking budget,
    not a minimal distance, so it is compared at its own budgets (``_checks_at_budgets``); the distance-mode
    results are compared among themselves.
    """
    entries = evaluated(eval_dir)
    dirs = {(s["attack"], s["norm"]): (d, s) for d, s in entries}
    for norm, frames in _distances_by_norm(entries).items():
        aligned = _align(frames)
        if aligned is None:
            continue
        budgets = {a: dirs[(a, norm)][1].get("fixed_eps") for a in aligned
                   if dirs[(a, norm)][1].get("mode") == "fixed"}
        distance = {a: d for a, d in aligned.items() if a not in budgets}
        resolution = {a: float(dirs[(a, norm)][1].get("search_resolution") or 0.0) for a in distance}
        found = cross_checks(distance, norm, resolution=resolution)
        for attack, eps in budgets.items():
            found.update(_checks_at_budgets(aligned, attack, [float(e) for e in eps], norm))
        for attack, checks in found.items():
            result, summary = dirs[(attack, norm)]
            if all(summary.get("checks", {}).get(k) == v for k, v in checks.items()):
                continue
            summary.setdefault("checks", {}).update(checks)
            result.write_summary(summary)


def _checks_at_budgets(aligned: dict[str, np.ndarray], attack: str, budgets: list[float],
                       norm: str) -> dict[str, dict[str, Any]]:
    """The cross checks of the fixed-budget ``attack`` alone: every attack's per-image size mapped to the
    smallest of ``budgets`` it lies within (``inf`` past the largest), so that "a cheaper attack beats it"
    means "breaks the image at a smaller budget", the only thing a fixed-budget result can be held to."""
    levels = np.asarray(sorted(budgets) + [np.inf])
    at_budget = {a: levels[np.searchsorted(levels, d, side="left")] for a, d in aligned.items()}
    return {k: v for k, v in cross_checks(at_budget, norm, rtol=0.0).items() if k == attack}


def _worst_case_readouts(norm: str, parts: list[dict[str, Any]], sizes: dict[str, int],
                         n: int) -> tuple[float, list[float]]:
    """``(eps, thresholds)`` at which the worst case of ``parts`` (the members' summaries) is read.

    The eps the members were summarised at where they agree, else the smallest of theirs; the thresholds of
    every member (their union), so that each robust accuracy a member reports has its worst-case counterpart.
    Whatever order the members come in gives the same row. A warning names a disagreement in eps and a worst
    case that covers fewer images than a member (``sizes``: images per member; ``n``: those all of them
    evaluated, the worst case's), since the row cannot then be compared with every member's own.
    """
    eps_values = sorted({float(p["eps"]) for p in parts if p.get("eps") is not None})
    if len(eps_values) > 1:
        log.warning("worst_case %s: the attacks were summarised at different eps (%s); its error_at_eps is read "
                    "at the smallest, %g", norm, ", ".join(f"{p['attack']} {float(p['eps']):g}" for p in parts),
                    eps_values[0])
    if any(size != n for size in sizes.values()):
        log.warning("worst_case %s: over the %d images every attack evaluated (%s)", norm, n,
                    ", ".join(f"{a} {size}" for a, size in sorted(sizes.items())))
    thresholds = sorted({float(t) for p in parts for t in p.get("robust_accuracy", {})})
    return (eps_values[0] if eps_values else float("nan")), thresholds


def _align(frames: dict[str, pd.DataFrame]) -> dict[str, np.ndarray] | None:
    """``{attack: distances}`` on the images every attack of the norm evaluated (an inner join on index)."""
    common = None
    for frame in frames.values():
        idx = set(frame["index"].tolist())
        common = idx if common is None else common & idx
    if not common:
        return None
    keep = sorted(common)
    return {a: f.set_index("index").loc[keep, "distance"].to_numpy(np.float64) for a, f in frames.items()}


def merge(eval_dir: EvalDir | str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``summary.csv`` and ``error_curves.csv`` from every ``<attack>-<norm>`` under ``eval_dir``.

    Returns:
        ``(summary, curves)``: the two tables written (also with the ``worst_case`` rows).
    """
    eval_dir = EvalDir(eval_dir)
    entries = evaluated(eval_dir)
    rows, curves = [], []
    for result, summary in entries:
        rows.append(_row(summary))
        curve = result.read_curve()
        curves.append(curve.assign(attack=summary["attack"], norm=summary["norm"])[CURVE_COLUMNS])
    by_summary = {(s["attack"], s["norm"]): s for _, s in entries}
    for norm, frames in _distances_by_norm(entries).items():
        aligned = _align(frames)
        if aligned is None or len(aligned) < 2:
            continue
        d = worst_case(list(aligned.values()))
        parts = [by_summary[(a, norm)] for a in aligned]
        eps_at, thresholds = _worst_case_readouts(norm, parts, {a: len(f) for a, f in frames.items()}, len(d))
        row = {
            "attack": WORST, "norm": norm, "n": len(d), "clean_error": error_at(d, 0.0),
            "median_distance": median_distance(d), "mean_distance": None, "rho_adv": None,
            "eps": eps_at, "error_at_eps": error_at(d, eps_at),
            **{f"robust_acc@{t:g}": 1 - error_at(d, t) for t in thresholds},
            "success_rate": None,
            "seconds": sum(p.get("seconds") or 0.0 for p in parts),
            "forward_per_sample": sum(p.get("forward_per_sample") or 0.0 for p in parts),
            "backward_per_sample": sum(p.get("backward_per_sample") or 0.0 for p in parts),
            "checks_failed": "",
        }
        correct_finite = np.isfinite(d) & (d > 0)
        row["mean_distance"] = float(d[correct_finite].mean()) if correct_finite.any() else None
        rows.append(row)
        eps, err = error_curve(d)
        curves.append(pd.DataFrame({"attack": WORST, "norm": norm, "eps": eps, "error": err}))
    for result, cert in eval_dir.certified_results():  # the certified (upper-bound) curves, not attacks
        label = certified_label(cert["method"])
        rows.append({"attack": label, "norm": cert["norm"], "n": cert.get("n"), "clean_error": cert.get("clean_error"),
                     "median_distance": cert.get("median_radius"), "mean_distance": None, "rho_adv": None,
                     "eps": cert.get("eps"), "error_at_eps": cert.get("error_at_eps"),
                     **{f"robust_acc@{t}": a for t, a in cert.get("robust_accuracy", {}).items()},
                     "seconds": cert.get("seconds"), "checks_failed": ""})
        curves.append(result.read_curve().assign(attack=label, norm=cert["norm"])[CURVE_COLUMNS])
    summary = pd.DataFrame(rows)
    if len(summary):
        ordered = [c for c in SUMMARY_COLUMNS if c in summary] + sorted(
            [c for c in summary if c.startswith("robust_acc@")], key=lambda c: float(c.split("@")[1])
        ) + [c for c in COST_COLUMNS if c in summary]
        summary = summary[ordered]
    else:
        summary = pd.DataFrame(columns=SUMMARY_COLUMNS + COST_COLUMNS)
    curves_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)
    eval_dir.write_merged(summary, curves_df)
    return summary, curves_df
