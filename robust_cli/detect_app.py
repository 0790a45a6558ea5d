"""``robust detect``: the gradient-norm attack detector of a trained run, and the attack that evades it.

``robust detect run=<train run dir> attack=[fgsm,pgd] norm=[l2,linf] fpr=0.05 n_examples=500``:

1. the first half of the ``n_examples`` test images calibrates the threshold ``t`` flagging ``fpr`` of
   them (``detection.gradient_norm``); the second half is held out: the FPR achieved on it is reported;
2. every (attack, norm) runs on the held-out images through the evaluation runner (successes re-verified
   by the model); per pair: the detection rate of the successful adversarials (score ``> t``), the ROC AUC
   of the score separating them from the held-out clean images, their median distance;
3. with ``evasive=true``, the evasive attack (``detection.evasive``) per norm (l2, linf): its success
   rate (misclassified *and* not flagged, re-checked) and median distance beside the plain attacks'.

Writes ``<run>/detect/summary.json`` (strict JSON: a non-finite value is ``null``), ``summary.csv`` and
``gradient_norms.png`` (histograms of the score on clean and attacked images).
"""

from __future__ import annotations

import logging
import math

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from robust_cli.apps import user_errors
from robust_cli.config import register_configs
from robust_cli.errors import UserError

register_configs()
log = logging.getLogger("robust_cli.detect")


def _median(d: np.ndarray) -> float | None:
    from robust_cli.evaluation.curves import median_distance

    v = median_distance(d) if len(d) else math.nan
    return None if math.isnan(v) else v


def detect(cfg: DictConfig) -> dict:
    """Everything ``robust detect`` does; returns the summary written to ``summary.json``."""
    from robust_cli.data import load_split, with_root
    from robust_cli.detection.evasive import evasive_attack
    from robust_cli.detection.gradient_norm import detector_scores, flagged, roc_auc, threshold_for_fpr
    from robust_cli.device import resolve_device
    from robust_cli.eval_app import plan, selected_attacks, selected_norms
    from robust_cli.evaluation.distances import perturbation_norms
    from robust_cli.evaluation.runner import predict, run_attack
    from robust_cli.reporting.plots import plot_score_histograms
    from robust_cli.rundir import RunDir
    from robust_cli.training.checkpoint import load_trained_model

    if not 0 < float(cfg.fpr) < 1:
        raise UserError(f"fpr={cfg.fpr}: must be strictly between 0 and 1 (the fraction of clean images flagged)")
    if cfg.n_examples < 4 or cfg.batch_size < 1:
        raise UserError("n_examples must be at least 4 (half calibrate, half are attacked), batch_size at least 1")
    run_dir = RunDir(cfg.run)
    if not run_dir.is_dir():
        raise UserError(f"run={cfg.run} is not a directory; give run=<a finished train run directory>")
    norms = selected_norms(cfg.norm)
    attacks = selected_attacks(cfg.attack)
    pairs = plan(attacks, norms, single=len(attacks) == 1 and len(norms) == 1)

    device = resolve_device(cfg.device)
    model, train_cfg = load_trained_model(run_dir, device=device)
    model.eval()
    x, y = load_split(train_cfg.dataset, with_root(train_cfg.get("data"), cfg.data.root), "test")
    n = min(int(cfg.n_examples), int(x.shape[0]))
    half = n // 2
    x_cal, x_test, y_test = x[:half].to(device), x[half:n].to(device), y[half:n].to(device)

    clean_cal = detector_scores(model, x_cal, cfg.batch_size).numpy()
    t = threshold_for_fpr(clean_cal, float(cfg.fpr))
    clean_test = detector_scores(model, x_test, cfg.batch_size).numpy()
    fpr_held_out = float(flagged(clean_test, t).mean())
    log.info("threshold %.4g flags %.3f of %d calibration and %.3f of %d held-out clean images", t,
             flagged(clean_cal, t).mean(), half, fpr_held_out, len(clean_test))
    rows, hist = [], {"clean (held out)": clean_test}
    plain_medians: dict[str, list[float]] = {}
    for name, norm in pairs:
        fn, params = attacks[name]
        torch.manual_seed(cfg.seed)
        result = run_attack(model, x_test, y_test, fn, norm, params, batch_size=cfg.batch_size,
                            eps_search=cfg.eps_search, search_steps=cfg.search_steps, device=device)
        d = result.frame["distance"].to_numpy(np.float64)
        ok = np.isfinite(d) & (d > 0)  # correctly classified and re-verified adversarial
        scores = detector_scores(model, result.x_adv[torch.as_tensor(ok)].to(device), cfg.batch_size).numpy()
        hit = flagged(scores, t)
        undetected = np.where(ok, np.inf, d)
        undetected[np.flatnonzero(ok)[~hit]] = d[ok][~hit]
        rows.append({"attack": name, "norm": norm, "n": len(d), "successes": int(ok.sum()),
                     "detection_rate": float(hit.mean()) if ok.any() else None,
                     "roc_auc": roc_auc(clean_test, scores) if ok.any() else None,
                     "median_distance": _median(d[d > 0]),
                     "median_undetected_distance": _median(undetected[d > 0])})
        plain_medians.setdefault(norm, []).append(rows[-1]["median_distance"] or math.inf)
        hist[f"{name}-{norm}"] = scores
        log.info("%s-%s: %d adversarials, %.3f detected, AUC %.3f", name, norm, ok.sum(),
                 rows[-1]["detection_rate"] or 0.0, rows[-1]["roc_auc"] or math.nan)
    evasive = {}
    if cfg.evasive:
        correct = predict(model, x_test) == y_test
        xc, yc = x_test[correct], y_test[correct]
        d_in = int(x_test[0].numel())
        for norm in [nm for nm in norms if nm in ("l2", "linf")]:
            torch.manual_seed(cfg.seed)
            r_max = 1.0 if norm == "linf" else math.sqrt(d_in)
            advs = [evasive_attack(model, xc[i:i + cfg.batch_size], yc[i:i + cfg.batch_size], norm, t, r_max,
                                   search_steps=cfg.search_steps, steps=cfg.evasive_steps, lam=cfg.evasive_lam)
                    for i in range(0, xc.shape[0], cfg.batch_size)]
            x_adv = torch.cat(advs).clamp(0, 1) if advs else xc
            scores = detector_scores(model, x_adv, cfg.batch_size).numpy()
            wrong = (predict(model, x_adv) != yc).cpu().numpy()
            ok = wrong & ~flagged(scores, t)  # re-verified: misclassified and below the threshold
            dist = perturbation_norms(x_adv, xc)[norm].cpu().double().numpy()
            dist = np.where(ok, dist, np.inf)
            evasive[norm] = {"n": int(len(dist)), "success_rate": float(ok.mean()) if len(ok) else None,
                             "median_distance": _median(dist),
                             "plain_median_distance": min(plain_medians.get(norm, [math.inf])) if norm in
                             plain_medians else None}
            hist[f"evasive-{norm}"] = scores[ok]
            log.info("evasive-%s: success %.3f, median distance %s (plain: %s)", norm, evasive[norm]["success_rate"]
                     or 0.0, evasive[norm]["median_distance"], evasive[norm]["plain_median_distance"])
    summary = {"threshold": t, "fpr_target": float(cfg.fpr), "fpr_calibration": float(flagged(clean_cal, t).mean()),
               "fpr_held_out": fpr_held_out, "n_calibration": int(half), "n_held_out": int(n - half),
               "attacks": rows, "evasive": evasive}
    out = run_dir.detect
    out.write(_json_safe(summary), pd.DataFrame(rows))
    plot_score_histograms(hist, t, out.plot_path, title=str(run_dir))
    log.info("wrote %s", out)
    return summary


def _json_safe(value):
    """``value`` with every non-finite float (NaN, +-inf, numpy's included) as ``None``: ``summary.json`` is
    strict JSON (no ``NaN``/``Infinity`` tokens). A null ``median_undetected_distance`` means that at least
    half the images have no undetected adversarial (their distance is infinite)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    return value


@hydra.main(config_path="pkg://robust_cli.conf", config_name="detect", version_base=None)
@user_errors
def _hydra_main(cfg: DictConfig) -> dict:
    s = detect(cfg)
    return {"fpr_held_out": f"{s['fpr_held_out']:.4g}"}


def main() -> None:
    """``robust detect`` (``sys.argv`` holds the overrides)."""
    _hydra_main()
