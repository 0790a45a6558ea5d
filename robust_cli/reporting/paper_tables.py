"""The tables of ``robust report``: a tidy long table of every number, and paper-style wide tables
(mean ± std over the runs of a row, i.e. over seeds).

- ``tidy``: one row per (run, attack, norm, metric), the run's parameters as columns.
- ``finlay``: Finlay, Oberman & Abbasi, "Improved robustness to adversarial examples using Lipschitz
  regularization of the loss", Table 1 layout: rows = defenses (the ``by`` columns), columns = clean %
  error, then per norm the median adversarial distance and the % error at eps, the worst case over the
  run's attacks (``eval/summary.csv``'s ``worst_case`` row; the attack itself where only one was run).
- ``attacks``: Matyasko's thesis Tables 5.2-5.4 layout: rows = attacks (within each ``by`` row and norm),
  columns = robust accuracy % at each threshold, and the mean norm of the successful perturbations
  (Table 5.1).
- ``metrics``: rows = ``by``, columns = ``<attack>-<norm> <metric>`` for the chosen metrics (the thesis
  Table 3.1 layout with ``metrics=[clean_error,error_at_eps,rho_adv]``).
- ``lipschitz``: rows = ``by``, columns = the statistics of ``eval/lipschitz.json``.

A table is ``Table(title, index, mean, std, count, values)``: ``mean``/``std`` hold one row per table row, std
the sample standard deviation (pandas' ``ddof=1``) over the ``count`` runs of the row; ``values`` counts the runs
behind each value (fewer than ``count`` where some runs lack that metric).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from robust_cli.errors import UserError
from robust_cli.reporting.tables import WORST
from robust_cli.reporting.collect import Run, param_frame

NORM_ORDER = ("l0", "l1", "l2", "linf")
#: the numeric columns of eval/summary.csv a report carries (robust_acc@<t> columns come on top)
METRICS = ("n", "clean_error", "median_distance", "mean_distance", "rho_adv", "eps", "error_at_eps",
           "success_rate", "seconds", "forward_per_sample", "backward_per_sample")
DEFAULT_METRICS = ("clean_error", "median_distance", "error_at_eps", "rho_adv")
LIPSCHITZ = {"max_grad_norm": "max |grad loss|", "mean_grad_norm": "mean |grad loss|",
             "max_jacobian_norm": "max |J|", "weight_norm_product": "prod |W|",
             "margin_radius_estimate.median": "median margin/(2 prod|W|) (estimate)",
             "margin_radius_estimate_empirical.median": "median margin/(2 max|J|) (estimate)"}


@dataclass
class Table:
    name: str
    title: str
    index: list[str]  # the row-label columns of mean/std
    mean: pd.DataFrame
    std: pd.DataFrame
    count: pd.Series  # runs per row
    values: pd.DataFrame | None = None  # runs per cell (the value columns): fewer than the row's where a run lacks it


def _norm_key(norm: str) -> int:
    return NORM_ORDER.index(norm) if norm in NORM_ORDER else len(NORM_ORDER)


def metric_columns(runs: list[Run]) -> list[str]:
    """Every metric the runs' summaries hold: METRICS then the robust_acc@<t> columns by threshold."""
    acc = {c for r in runs for c in r.summary if c.startswith("robust_acc@")}
    return [m for m in METRICS if any(m in r.summary for r in runs)] + sorted(acc, key=lambda c: float(c[11:]))


def select_metrics(runs: list[Run], metrics: list[str] | None) -> list[str]:
    """``metrics=`` checked against what the runs hold (``robust_acc`` stands for every threshold)."""
    available = metric_columns(runs)
    if not metrics:
        return available
    out = []
    for m in metrics:
        hits = [c for c in available if c.startswith("robust_acc@")] if m == "robust_acc" else \
            [m] if m in available else []
        if not hits:
            raise UserError(f"metrics: unknown metric {m}; the runs hold {', '.join(available)} (robust_acc: "
                            "every threshold)")
        out += hits
    return list(dict.fromkeys(out))


def select_attacks(runs: list[Run], attacks: list[str] | None) -> list[str] | None:
    """``attacks=`` checked against what the runs hold: each entry an attack (``pgd``) or an attack-norm pair
    (``pgd-linf``) of some run's ``eval/summary.csv``; ``UserError`` naming what they hold otherwise."""
    if not attacks:
        return attacks
    names, pairs = set(), set()
    for run in runs:
        for attack, norm in zip(run.summary["attack"], run.summary["norm"]):
            names.add(str(attack))
            pairs.add(f"{attack}-{norm}")
    unknown = [a for a in attacks if a not in names and a not in pairs]
    if unknown:
        raise UserError(f"attacks: {', '.join(unknown)} not in the runs; they hold {', '.join(sorted(pairs))}")
    return attacks


def _pair_ok(attack: str, norm: str, attacks: list[str] | None) -> bool:
    return not attacks or attack in attacks or f"{attack}-{norm}" in attacks


def tidy(runs: list[Run], metrics: list[str], attacks: list[str] | None) -> pd.DataFrame:
    """One row per (run, attack, norm, metric): ``run``, the parameters, ``attack``, ``norm``, ``metric``,
    ``value`` (``worst_case`` rows included)."""
    rows = []
    for run in runs:
        for _, r in run.summary.iterrows():
            if not _pair_ok(r["attack"], r["norm"], attacks):
                continue
            for m in metrics:
                if m in r.index:
                    value = pd.to_numeric(r[m], errors="coerce")
                    rows.append({"run": run.path, **run.params, "attack": r["attack"], "norm": r["norm"],
                                 "metric": m, "value": value})
    cols = ["run", *runs[0].params, "attack", "norm", "metric", "value"]
    return pd.DataFrame(rows, columns=cols)


def grouping(runs: list[Run], by: list[str] | None) -> list[str]:
    """The ``by`` columns: given, or every parameter that varies except ``seed`` and ``dataset``.

    Refused: an unknown column; runs of several data sets without ``dataset`` in ``by``; runs of one row
    that differ in anything but ``seed`` (the mean would mix different experiments).
    """
    params = param_frame(runs)
    varying = [c for c in params if params[c].nunique() > 1]
    if by:
        unknown = [c for c in by if c not in params]
        if unknown:
            raise UserError(f"by: unknown column {', '.join(unknown)}; the runs' parameters are "
                            f"{', '.join(params)}")
    else:
        by = [c for c in varying if c not in ("seed", "dataset")] or ["defense"]
    if "dataset" in varying and "dataset" not in by:
        raise UserError(f"runs of several data sets ({', '.join(sorted(params['dataset'].unique()))}) in one "
                        "table; add by=dataset (by=[dataset,...]) or report them apart")
    rest = [c for c in varying if c not in by and c != "seed"]
    for key, group in params.groupby(list(by), sort=False):
        differ = [c for c in rest if group[c].nunique() > 1]
        if differ:
            raise UserError(f"runs with {dict(zip(by, np.atleast_1d(key)))} differ in {', '.join(differ)}, not "
                            f"only in seed; add them to by= (by=[{','.join([*by, *differ])}])")
    return list(by)


def _aggregate(name: str, title: str, per_run: pd.DataFrame, index: list[str]) -> Table:
    """Mean and std (ddof 1) of every value column of ``per_run`` over the rows sharing ``index``."""
    values = [c for c in per_run if c not in index and c != "run"]
    numeric = per_run[values].apply(pd.to_numeric, errors="coerce")
    keys = per_run[index]
    grouped = pd.concat([keys, numeric], axis=1).groupby(index, sort=True, dropna=False)
    mean, std = grouped.mean(), grouped.std(ddof=1)
    count = per_run.groupby(index, sort=True, dropna=False).size()
    return Table(name, title, index, mean.reset_index(), std.reset_index(), count.reset_index(drop=True),
                 grouped.count().reset_index(drop=True))


def _with_params(run: Run, by: list[str], **cols) -> dict:
    return {"run": run.path, **{c: run.params[c] for c in by}, **cols}


def _worst(summary: pd.DataFrame, norm: str) -> pd.Series | None:
    rows = summary[summary["norm"] == norm]
    worst = rows[rows["attack"] == WORST]
    if len(worst):
        return worst.iloc[0]
    return rows.iloc[0] if len(rows) == 1 else None


def _clean_error(summary: pd.DataFrame) -> float:
    """The run's clean error over the most images any of its results evaluated (it does not depend on the
    attack: the largest sample is its best estimate, whatever order the rows come in); NaN where none says."""
    known = summary[pd.to_numeric(summary["clean_error"], errors="coerce").notna()]
    if not len(known):
        return float("nan")
    return float(known.loc[pd.to_numeric(known["n"], errors="coerce").fillna(0).idxmax(), "clean_error"])


def finlay(runs: list[Run], by: list[str]) -> Table:
    """Finlay Table 1 layout (in %: errors x 100)."""
    rows = []
    for run in runs:
        s = run.summary
        row = _with_params(run, by, **{"clean % err": 100 * _clean_error(s)})
        for norm in sorted(s["norm"].unique(), key=_norm_key):
            r = _worst(s, norm)
            if r is None:
                continue
            row[f"{norm} median"] = r["median_distance"]
            row[f"{norm} % err @{float(r['eps']):g}"] = 100 * float(r["error_at_eps"])
        rows.append(row)
    return _aggregate("finlay", "Worst case over attacks: median adversarial distance and % error at eps "
                      "(Finlay et al. Table 1 layout)", pd.DataFrame(rows), by)


def attacks_tables(runs: list[Run], by: list[str], attacks: list[str] | None) -> list[Table]:
    """Thesis Tables 5.x layout, one table per norm: rows = (by, attack), columns = robust accuracy % at
    each threshold of the norm, then the mean norm of the successful perturbations."""
    rows = []
    for run in runs:
        for _, r in run.summary.iterrows():
            if not _pair_ok(r["attack"], r["norm"], attacks):
                continue
            row = _with_params(run, by, norm=r["norm"], attack=r["attack"])
            for c in r.index:
                if c.startswith("robust_acc@") and pd.notna(r[c]):
                    row[f"acc % @{c[11:]}"] = 100 * float(r[c])
            row["mean norm"] = r["mean_distance"]
            rows.append(row)
    frame = pd.DataFrame(rows)
    tables = []
    for norm in sorted(frame["norm"].unique(), key=_norm_key):
        part = frame[frame["norm"] == norm].dropna(axis=1, how="all").drop(columns="norm")
        acc = sorted([c for c in part if c.startswith("acc % @")], key=lambda c: float(c.rsplit("@", 1)[1]))
        part = part[["run", *by, "attack", *acc, "mean norm"]]
        tables.append(_aggregate(f"attacks_{norm}", f"{norm}: robust accuracy % at the thresholds and mean "
                                 "norm of the successful perturbations, per attack (thesis Tables 5.1-5.4 layout)",
                                 part, [*by, "attack"]))
    return tables


def metrics_table(runs: list[Run], by: list[str], metrics: list[str], attacks: list[str] | None) -> Table:
    """Rows = ``by``; columns ``<attack>-<norm> <metric>``."""
    rows = []
    for run in runs:
        row = _with_params(run, by)
        for _, r in run.summary.iterrows():
            if _pair_ok(r["attack"], r["norm"], attacks):
                row.update({f"{r['attack']}-{r['norm']} {m}": r[m] for m in metrics if m in r.index})
        rows.append(row)
    return _aggregate("metrics", "Selected metrics per attack and norm", pd.DataFrame(rows), by)


def _dig(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _lipschitz_value(stats: dict, dotted: str):
    """``dotted`` of a ``lipschitz.json``, or its value under the name of before (``lipschitz.LEGACY_KEYS``)."""
    from robust_cli.evaluation.lipschitz import LEGACY_KEYS

    value = _dig(stats, dotted)
    head, _, rest = dotted.partition(".")
    if value is None and head in LEGACY_KEYS:
        value = _dig(stats, ".".join(filter(None, (LEGACY_KEYS[head], rest))))
    return value


def lipschitz_table(runs: list[Run], by: list[str]) -> Table | None:
    """Rows = ``by``; the Lipschitz statistics of ``eval/lipschitz.json`` (None where no run has one)."""
    if not any(r.lipschitz for r in runs):
        return None
    rows = [_with_params(run, by, **{label: _lipschitz_value(run.lipschitz, key) for key, label in LIPSCHITZ.items()})
            for run in runs]
    return _aggregate("lipschitz", "Lipschitz statistics on the evaluated test images (eval/lipschitz.json)",
                      pd.DataFrame(rows), by)


def transfer_tables(paths: list[str], value: str = "error_at_eps") -> list[Table]:
    """One source x target table of ``value`` per (attack, norm) that some run holds a transfer result of
    (``robust eval run=<target> source=<source>``; robust_cli.evaluation.transfer.transfer_matrix): rows are
    the source runs, columns the targets, the diagonal the white-box result; NaN where not evaluated."""
    from robust_cli.evaluation.transfer import transfer_matrix
    from robust_cli.rundir import RunDir

    pairs = sorted({(s["transfer_of"], s["norm"]) for p in paths for _, s in RunDir(p).eval.results()
                    if s.get("transfer_of")})
    tables = []
    for attack, norm in pairs:
        matrix = transfer_matrix(paths, attack, norm, value)
        labels = dict(zip(matrix.index, paths))  # absolute -> as given in runs=
        per_run = pd.DataFrame([{"source": labels[src], **{labels[t]: matrix.loc[src, t] for t in matrix.columns}}
                                for src in matrix.index])
        tables.append(_aggregate(f"transfer_{attack}_{norm}", f"Transfer of {attack} ({norm}): {value} on the "
                                 "target (columns) of adversarials crafted on the source (rows)", per_run, ["source"]))
    return tables
