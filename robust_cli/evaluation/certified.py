"""``robust eval certify=[lipschitz,ibp,crown]``: certified radii of the evaluated images and the certified
error curve, written to ``eval/certified/<method>-<norm>/`` beside the attacked results.

The true robust error at eps lies between the attacked curve (an adversarial was found within eps: a lower
bound) and the certified curve ``P[radius <= eps]`` (no certificate at eps: an upper bound), see
``robust_cli.certification.radius``. Methods and norms that do not apply are skipped with a note (CROWN on
residual networks; l0 and l1 have no certificate here).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from robust_cli.certification.radius import METHODS, NORMS, certified_radii, supports
from robust_cli.errors import UserError
from robust_cli.evaluation.curves import error_at, error_curve, median_distance
from robust_cli.rundir import EvalDir

log = logging.getLogger("robust_cli.eval")


def selected_methods(certify: Any) -> list[str]:
    """The methods of ``certify=`` (a name or a list); ``UserError`` naming an unknown one."""
    if certify is None:
        return []
    names = [str(certify)] if isinstance(certify, str) else [str(m) for m in certify]
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise UserError(f"certify={','.join(bad)}: unknown method; expected a list of {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def certify_run(model, x: torch.Tensor, y: torch.Tensor, methods: list[str], norms: list[str], eval_dir: EvalDir,
                *, eps: dict, thresholds: dict, steps: int, batch_size: int, model_id: str,
                force: bool = False) -> list[tuple[str, str]]:
    """Compute and write every (method, norm) not already stored with the same model, images and steps.

    ``x`` ``[N,C,H,W]`` in [0,1], ``y`` ``[N]``. Returns the pairs written or reused.
    """
    done = []
    for method in methods:
        if not supports(model, method):
            log.info("skipping certified %s: it bounds feed-forward models only", method)
            continue
        for norm in norms:
            if norm not in NORMS:
                log.info("skipping certified %s-%s: certificates are for %s", method, norm, ", ".join(NORMS))
                continue
            result = eval_dir.certified(method, norm)
            config = {"model": model_id, "n": int(x.shape[0]), "steps": int(steps)}
            if not force and result.complete() and result.read_summary().get("config") == config:
                stored = result.read_summary()
                stored.update(read_off(result.read_per_sample()["radius"].to_numpy(), method, norm,
                                       float(eps.get(norm, math.nan)), thresholds.get(norm, [])))
                result.write_summary(stored)  # a new eps or threshold is read off the stored radii
                done.append((method, norm))
                continue
            start = time.perf_counter()
            radii, info = certified_radii(model, x, y, method, norm, steps=steps, batch_size=batch_size)
            seconds = time.perf_counter() - start
            r = radii.numpy()
            with torch.no_grad():
                pred = torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])
            frame = pd.DataFrame({"index": np.arange(len(r)), "label": y.cpu().numpy(),
                                  "clean_pred": pred.cpu().numpy(), "radius": r})
            curve_eps, err = error_curve(r)
            summary = {**read_off(r, method, norm, float(eps.get(norm, math.nan)), thresholds.get(norm, [])),
                       "n": len(r), "seconds": seconds, "config": config}
            if "L" in info:
                summary["lipschitz_bound"] = info["L"]
            result.write(frame, pd.DataFrame({"eps": curve_eps, "error": err}), summary)
            log.info("certified %s-%s: error at eps %.4g = %.3f (%d images, %.1fs)", method, norm,
                     summary["eps"], summary["error_at_eps"], len(r), seconds)
            done.append((method, norm))
    return done


def read_off(radii: np.ndarray, method: str, norm: str, eps: float, thresholds: list[float]) -> dict[str, Any]:
    """The summary numbers of certified radii ``[N]`` (0 for misclassified images): ``error_at_eps`` =
    ``P[radius <= eps]``, the certified robust accuracy ``1 - that`` at each threshold, the median radius."""
    r = np.asarray(radii, dtype=np.float64)
    return {"method": method, "norm": norm, "eps": eps, "error_at_eps": error_at(r, eps),
            "clean_error": error_at(r, 0.0), "median_radius": median_distance(r),
            "robust_accuracy": {f"{t:g}": 1 - error_at(r, t) for t in thresholds or []}}


def certified_label(method: str) -> str:
    """The ``attack`` column value of a certified curve in the merged tables: ``certified_<method>``."""
    return f"certified_{method}"
