"""``robust detect``: the gradient-norm detector's threshold, FPR, ROC AUC, and the evasive attack."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from linear_reference import make_problem
from robust_cli.config import DetectConfig
from robust_cli.detection.evasive import evade_at
from robust_cli.detection.gradient_norm import detector_scores, flagged, roc_auc, threshold_for_fpr
from robust_cli.errors import UserError


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)).eval()


def test_threshold_flags_floor_fpr_n_calibration_images_and_auc_is_mann_whitney():
    rng = np.random.default_rng(0)
    s = rng.random(101)
    for fpr in (0.01, 0.05, 0.3, 0.99):
        assert flagged(s, threshold_for_fpr(s, fpr)).sum() == math.floor(fpr * 101)
    neg, pos = rng.normal(size=40), rng.normal(1, size=30)
    pos[:3] = neg[:3]  # ties count one half
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert roc_auc(neg, pos) == pytest.approx(brute)
    assert roc_auc(neg, neg + 100) == 1.0 and roc_auc(neg + 100, neg) == 0.0


def test_held_out_fpr_is_within_sampling_error_of_the_target():
    """Calibrate on 1500 clean inputs, measure on 1500 others of the same distribution: |FPR - fpr| below
    four binomial standard deviations of the two samples (the threshold's own error included)."""
    model = _mlp()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3000, 1, 4, 4, generator=g)
    scores = detector_scores(model, x, batch_size=1000).numpy()
    assert np.unique(scores).size > 2900  # a continuous score: the quantile is well defined
    for fpr in (0.05, 0.2):
        t = threshold_for_fpr(scores[:1500], fpr)
        achieved = flagged(scores[1500:], t).mean()
        sd = math.sqrt(2 * fpr * (1 - fpr) / 1500)
        assert abs(achieved - fpr) < 4 * sd + 1 / 1500, (fpr, achieved)


def test_detector_score_is_the_gradient_norm_at_the_predicted_label():
    model = _mlp(2)
    x = torch.rand(5, 1, 4, 4)
    xr = x.clone().requires_grad_(True)
    logits = model(xr)
    loss = nn.functional.cross_entropy(logits, logits.argmax(1).detach(), reduction="sum")
    (grad,) = torch.autograd.grad(loss, xr)
    assert torch.allclose(detector_scores(model, x), grad.flatten(1).norm(dim=1), rtol=1e-5)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_evasive_successes_are_misclassified_below_the_threshold_and_within_eps(norm):
    model = _mlp(3)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(12, 1, 4, 4, generator=g)
    y = model(x).argmax(1)
    t = float(np.quantile(detector_scores(model, x).numpy(), 0.9))
    eps = torch.full((12,), 0.5 if norm == "linf" else 2.0)
    x_adv, ok = evade_at(model, x, y, eps, norm, t, steps=20)
    assert ok.any()
    dist = (x_adv - x).flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1)
    assert (dist <= eps + 1e-5).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        wrong = model(x_adv).argmax(1) != y
    assert (wrong[ok]).all() and (detector_scores(model, x_adv)[ok] <= t * (1 + 1e-5)).all()


@pytest.fixture
def linear_run(tmp_path, monkeypatch):
    from cli_helpers import patched_run

    model, x, y = make_problem(n=40, in_shape=(1, 4, 4), num_classes=2, seed=5)
    run = patched_run(tmp_path, monkeypatch, model, x, y)
    return run, model, x, y


def _cfg(run, **kw):
    return OmegaConf.merge(OmegaConf.structured(DetectConfig), {
        "run": str(run), "norm": ["l2"], "n_examples": 40, "batch_size": 20, "search_steps": 6,
        "evasive_steps": 10, "attack": {"linear_budget": {"_target_": "test_evaluation.linear_budget",
                                                         "name": "linear_budget"}}, **kw})


def _no_constant(token: str):
    raise AssertionError(f"summary.json holds {token}: not strict JSON")


def test_summary_json_is_strict_json():
    from robust_cli.detect_app import _json_safe

    value = {"a": math.inf, "b": [-math.inf, math.nan, 1.5, None], "c": np.float32("inf"), "d": (np.float64(2.0),),
             "e": {"f": float("nan"), "g": "inf", "h": 3}}
    safe = _json_safe(value)
    assert safe == {"a": None, "b": [None, None, 1.5, None], "c": None, "d": [2.0],
                    "e": {"f": None, "g": "inf", "h": 3}}
    json.loads(json.dumps(safe), parse_constant=_no_constant)
    with pytest.raises(AssertionError, match="Infinity"):  # the check itself can fail
        json.loads(json.dumps(value["a"]), parse_constant=_no_constant)


def test_score_histograms_show_the_fraction_of_images_per_bin(tmp_path, monkeypatch):
    """Each histogram sums to 1 whatever its bins' widths: 5 adversarial scores in wide (log) bins next to 200
    clean ones in narrow bins are as visible as the clean ones (a density would draw them ~1000x lower)."""
    from robust_cli import io
    from robust_cli.reporting.plots import plot_score_histograms

    figures = []
    save = io.save_figure
    monkeypatch.setattr(io, "save_figure", lambda path, fig, **kw: (figures.append(fig), save(path, fig, **kw))[1])
    gen = np.random.default_rng(0)
    scores = {"clean": gen.uniform(1e-3, 2e-3, 200), "pgd-l2": gen.uniform(1.0, 10.0, 5)}
    path = plot_score_histograms(scores, threshold=0.01, path=tmp_path / "h.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    (ax,) = figures[0].axes
    assert ax.get_ylabel() == "fraction of images"
    heights = [np.array([p.get_height() for p in c]) for c in ax.containers]
    assert len(heights) == 2 and all(h.sum() == pytest.approx(1.0) for h in heights)
    assert heights[1].max() >= 0.2  # one of 5 images at least


@pytest.mark.parametrize("evasive", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_detect_writes_rates_that_match_a_recomputation(linear_run, evasive):
    from robust_cli.detect_app import detect

    run, model, x, y = linear_run
    summary = detect(_cfg(run, evasive=evasive))
    stored = json.loads((run / "detect" / "summary.json").read_text(), parse_constant=_no_constant)
    assert stored["threshold"] == pytest.approx(summary["threshold"])
    t = threshold_for_fpr(detector_scores(model, x[:20]).numpy(), 0.05)
    assert stored["fpr_held_out"] == pytest.approx(flagged(detector_scores(model, x[20:]).numpy(), t).mean())
    (row,) = stored["attacks"]
    assert row["successes"] == 20 and 0 <= row["detection_rate"] <= 1 and 0 <= row["roc_auc"] <= 1
    if evasive:
        assert stored["evasive"]["l2"]["n"] == 20 and 0 <= stored["evasive"]["l2"]["success_rate"] <= 1
    assert (run / "detect" / "gradient_norms.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "detect" / "summary.csv").is_file()


@pytest.mark.parametrize("fpr", [0.0, 1.0, 1.5, -0.1])
def test_fpr_outside_the_open_unit_interval_is_refused(linear_run, fpr):
    from robust_cli.detect_app import detect

    run, *_ = linear_run
    with pytest.raises(UserError, match=f"fpr={fpr}: must be strictly between 0 and 1"):
        detect(_cfg(run, fpr=fpr))
    assert not (run / "detect").exists()


@pytest.mark.slow  # a process start
def test_cli_fpr_outside_the_unit_interval_is_one_line_exit_2(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "robust_cli.cli", "detect", f"run={tmp_path}", "fpr=1.5"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("robust: error: fpr=1.5: must be strictly between 0 and 1")
    assert "Traceback" not in res.stderr and not list(tmp_path.iterdir())
