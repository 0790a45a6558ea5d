"""``summary.json`` of one attack in one norm: the numbers read off its distances.

The error curve ``err(eps) = P[distance <= eps]`` is Def. 4.1 of Finlay, Oberman & Abbasi, "Improved
robustness to adversarial examples using Lipschitz regularization of the loss"; ``rho_adv`` is eq 3.20 of
Matyasko's thesis.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from robust_cli.evaluation.curves import error_at, median_distance


def _num(v: float) -> float | None:
    """JSON-safe float: NaN becomes None, inf stays (json writes Infinity, pandas reads it back)."""
    v = float(v)
    return None if math.isnan(v) else v


def read_off(distances: np.ndarray, eps: float, thresholds: list[float] | None) -> dict[str, Any]:
    """``eps``, ``error_at_eps`` and (unless ``thresholds`` is None) ``robust_accuracy`` ``{f"{t:g}": 1 -
    err(t)}`` of the distances ``[N]``: the summary entries that depend on settings, not on the attack."""
    out: dict[str, Any] = {"eps": float(eps), "error_at_eps": _num(error_at(distances, eps))}
    if thresholds is not None:
        out["robust_accuracy"] = {f"{t:g}": _num(1 - error_at(distances, t)) for t in thresholds}
    return out


def per_class(frame, eps: float) -> dict[str, dict[str, Any]]:
    """``{true label: {n, clean_error, error_at_eps, median_distance}}`` of a per-sample table: the error
    curve (Finlay et al. Def. 4.1) of each class's images read at 0, at ``eps`` and at 50%. A class the
    model often gets wrong, or whose images lie close to the boundary, shows here and not in the means."""
    out = {}
    labels = frame["label"].to_numpy()
    d = frame["distance"].to_numpy(dtype=np.float64)
    for label in sorted(set(labels.tolist())):
        mine = d[labels == label]
        out[str(label)] = {"n": int(mine.size), "clean_error": _num(error_at(mine, 0.0)),
                           "error_at_eps": _num(error_at(mine, eps)), "median_distance": _num(median_distance(mine))}
    return out


def per_target(frame) -> dict[str, dict[str, Any]]:
    """Targeted evaluations (a ``target`` column): ``{target: {n, success_rate, median_distance}}`` over the
    correctly classified images sent to that target; ``success_rate`` is the fraction the model was made to
    classify as the target, ``median_distance`` the median over those ``n`` images (``inf`` where the attack
    reached the target on fewer than half)."""
    correct = (frame["label"] == frame["clean_pred"]).to_numpy()
    targets = frame["target"].to_numpy()
    d = frame["distance"].to_numpy(dtype=np.float64)
    out = {}
    for target in sorted(set(targets[correct].tolist())):
        mine = d[correct & (targets == target)]
        out[str(target)] = {"n": int(mine.size), "success_rate": _num(np.isfinite(mine).mean()),
                            "median_distance": _num(median_distance(mine))}
    return out


def summarize(
    frame,
    *,
    attack: str,
    norm: str,
    x_norm: np.ndarray,
    eps: float,
    thresholds: list[float],
    seconds: float,
    forward_per_sample: float,
    backward_per_sample: float,
) -> dict[str, Any]:
    """Numbers of one ``per_sample.csv``.

    Args:
        frame: the per-sample table (``label``, ``clean_pred``, ``distance``, ...), ``N`` rows.
        x_norm: ``[N]`` ``||x||`` in ``norm`` (rho_adv, thesis eq 3.20).
        eps: the configured eps of this norm (``error_at_eps``).
        thresholds: the robust-accuracy thresholds of this norm and data set (may be empty).

    Returns:
        A JSON-ready dict: ``clean_error = err(0)``; ``median_distance`` (eps where err reaches 50%);
        ``mean_distance`` and ``rho_adv = mean ||r|| / ||x||`` over the successful attacks on correctly
        classified images (failures would make both infinite; ``success_rate`` reports them);
        ``error_at_eps``; ``robust_accuracy`` ``{threshold: 1 - err(threshold)}``; cost; ``per_class`` (see
        ``per_class``).
    """
    d = frame["distance"].to_numpy(dtype=np.float64)
    correct = (frame["label"] == frame["clean_pred"]).to_numpy()
    ok = correct & np.isfinite(d)
    n_correct = int(correct.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = d[ok] / x_norm[ok]
    return {
        "attack": attack,
        "norm": norm,
        "n": len(d),
        "clean_error": _num(error_at(d, 0.0)),
        "median_distance": _num(median_distance(d)),
        "mean_distance": _num(d[ok].mean()) if ok.any() else None,
        "rho_adv": _num(rho.mean()) if ok.any() else None,
        **read_off(d, eps, thresholds),
        "success_rate": _num(ok.sum() / n_correct) if n_correct else None,
        "seconds": float(seconds),
        "forward_per_sample": float(forward_per_sample),
        "backward_per_sample": float(backward_per_sample),
        "per_class": per_class(frame, eps),
        **({"per_target": per_target(frame)} if "target" in frame else {}),
    }
