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

In the spirit of AutoAttack's checks (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with
an ensemble of diverse parameter-free attacks", §5 and their flags for randomised and softmax models), on the
model's outputs in eval mode (``model_output_checks``):

- ``deterministic_model``: two clean passes give the same logits (a randomised model, e.g. dropout left
  on, needs ``autoattack version=rand`` or EOT: a single-pass evaluation overstates its robustness);
- ``logit_output``: the outputs are not probabilities (rows in [0,1] summing to 1: a softmax output layer
  flattens the cross-entropy gradient; attack the logits instead).

``at_least_single_step`` also covers the AutoAttack family (``apgd``, ``apgd_t``, ``autoattack``): a worst
case that FGSM (or FGM) beats on some image is a weak one.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from robust_cli.attacks.contract import frozen_eval

log = logging.getLogger(__name__)

ITERATIVE = ("ifgsm", "bim", "pgd", "apgd", "apgd_t", "autoattack")
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


def model_output_checks(model: nn.Module, x: torch.Tensor, atol: float = 1e-5) -> dict[str, Any]:
    """``deterministic_model`` and ``logit_output`` (module docstring) on images ``x`` ``[B,C,H,W]`` in [0,1].

    Two passes in eval mode (as the attacks see the model) disagree where some logit differs by more than
    ``atol * (1 + |logit|)``; the outputs are probabilities where every row lies in [0,1] and sums to 1 within
    ``1e-4``. Failed checks are also logged as warnings.
    """
    with torch.no_grad(), frozen_eval(model):
        first, second = model(x).float(), model(x).float()
    differs = ((first - second).abs() > atol * (1 + first.abs())).any(1)
    frac = float(differs.float().mean()) if len(differs) else 0.0
    in_unit = bool(((first >= 0) & (first <= 1)).all())
    sums_to_one = bool(((first.sum(1) - 1).abs() < 1e-4).all())
    probabilities = len(first) > 0 and in_unit and sums_to_one
    if frac > 0:
        log.warning("the model is randomised: two clean passes disagree on %.1f%% of the images; "
                    "evaluate it with autoattack version=rand (EOT)", 100 * frac)
    if probabilities:
        log.warning("the model outputs probabilities (rows sum to 1), not logits: gradients through the "
                    "softmax are flattened; evaluate the logits")
    return {"deterministic_model": {"ok": frac == 0.0, "disagreeing_fraction": frac},
            "logit_output": {"ok": not probabilities}}
