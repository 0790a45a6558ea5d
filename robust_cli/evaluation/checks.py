"""Validity checks of an evaluation, stored as flags in ``summary.json`` and printed with the summary.

Each check is a sanity condition a correct attack and evaluation satisfy; a failed flag points at a weak
attack (wrong hyper-parameters), gradient masking, or a bug:

- ``curve_monotone``: the error curve never decreases, and a budget attack's verified success was never
  seen to switch off as eps grew (with ``bisection`` only the probed eps are seen; ``grid`` sees them all);
- ``unbounded_success``: a minimal-norm (unbounded) attack broke every correctly classified image (the
  baselines ``noise`` and ``stability`` are exempt: they may fail);
- ``at_least_single_step``: per image, an iterative attack's distance (``ifgsm``, ``bim``, ``pgd``) is at most
  the single-step attack's of the same norm (``fgsm`` in linf, ``fgm`` in l2), within the eps-search
  resolution of the two (both distances are exact only up to it) and ``rtol``;
- ``whitebox_beats_noise``: per image, the worst case over the white-box attacks is at most the noise
  baseline's distance;
- ``zero_grad_fraction``: the fraction of images whose input gradient of the loss is exactly zero
  (a large value means the gradient attacks are blind: gradient masking).
"""

from __future__ import annotations

from typing import Any

import numpy as np

ITERATIVE = ("ifgsm", "bim", "pgd")
SINGLE_STEP = {"linf": "fgsm", "l2": "fgm"}
# attacks that are not white-box gradient attacks: kept out of the worst case compared with noise
BASELINES = ("noise", "stability")


def curve_check(error: np.ndarray, non_monotone_samples: int) -> dict[str, Any]:
    """``curve_monotone`` from a stored curve ``error`` ``[M]`` and the search's non-monotone sample count."""
    error = np.asarray(error, dtype=np.float64)
    ok = bool(np.all(np.diff(error) >= 0)) and non_monotone_samples == 0
    return {"curve_monotone": ok, "non_monotone_samples": int(non_monotone_samples)}


def unbounded_check(budget: bool, success_rate: float | None, attack: str = "") -> dict[str, Any]:
    """``unbounded_success``: None for budget attacks and baselines (failures allowed), else success == 1."""
    if budget or attack in BASELINES:
        return {"unbounded_success": None}
    return {"unbounded_success": success_rate is None or success_rate >= 1.0}


def per_sample_not_worse(strong: np.ndarray, weak: np.ndarray, rtol: float = 1e-3, atol: float = 0.0) -> dict[str, Any]:
    """Fraction of images where ``strong`` ``[N]`` finds a larger distance than ``weak`` ``[N]``.

    Larger means by more than ``atol + rtol * weak``.

    ``inf`` (failure) is larger than any finite distance; two failures agree.
    """
    strong = np.asarray(strong, dtype=np.float64)
    weak = np.asarray(weak, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        worse = (strong > weak * (1 + rtol) + atol) & ~(np.isinf(strong) & np.isinf(weak))
    frac = float(worse.mean()) if len(worse) else 0.0
    return {"ok": frac == 0.0, "violation_fraction": frac}


def cross_checks(distances: dict[str, np.ndarray], norm: str, rtol: float = 1e-3,
                 resolution: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """Checks between the attacks of one norm.

    Args:
        distances: ``{attack: [N] distances}`` on the same images in the same order.
        norm: their norm (picks the single-step attack).
        resolution: ``{attack: eps-search step}`` (budget attacks); the comparison tolerates the larger.

    Returns:
        ``{attack: {check: result}}`` for the attacks a check concerns: ``at_least_single_step`` on the
        iterative attack, ``whitebox_beats_noise`` on ``noise``.
    """
    out: dict[str, dict[str, Any]] = {}
    res_of = dict(resolution or {})
    single = SINGLE_STEP.get(norm)
    for iterative in ITERATIVE:
        if iterative in distances and single in distances:
            atol = max(res_of.get(iterative, 0.0), res_of.get(single, 0.0))
            res = per_sample_not_worse(distances[iterative], distances[single], rtol, atol)
            out.setdefault(iterative, {})["at_least_single_step"] = {"versus": single, **res}
    whitebox = [d for name, d in distances.items() if name not in BASELINES]
    if "noise" in distances and whitebox:
        best = np.min(np.stack(whitebox), axis=0)
        res = per_sample_not_worse(best, distances["noise"], rtol, max(res_of.values(), default=0.0))
        out.setdefault("noise", {})["whitebox_beats_noise"] = res
    return out


def failed_checks(checks: dict[str, Any]) -> list[str]:
    """Names of the checks in a ``summary.json`` ``checks`` dict that failed."""
    failed = []
    for name, value in checks.items():
        if isinstance(value, dict) and value.get("ok") is False or value is False:
            failed.append(name)
    return failed
