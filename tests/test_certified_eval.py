"""``robust eval certify=[...]``: certified radii written beside the attacked results, merged into
summary.csv and error_curves.csv, never into the worst case; the certified curve lies above the attacked one."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from linear_reference import make_problem, minimal_distance
from robust_cli.config import EvalConfig
from robust_cli.errors import UserError
from robust_cli.evaluation.curves import error_at


@pytest.fixture
def linear_run(tmp_path, monkeypatch):
    from cli_helpers import patched_run

    model, x, y = make_problem(n=20, in_shape=(1, 4, 4), num_classes=2, seed=3)
    y = y.clone()
    y[0] = 1 - y[0]  # one image misclassified clean: radius 0
    run = patched_run(tmp_path, monkeypatch, model, x, y)
    return run, model, x, y


def l2_without_box(model, x, y) -> np.ndarray:
    """``min_{j != y} (f_y - f_j) / ||w_j - w_y||_2``: the l2 distance to the decision boundary, no box."""
    w = model.fc.weight.detach().double()
    z = x.flatten(1).double() @ w.T + model.fc.bias.detach().double()  # float64, as the bounds
    gap = z.gather(1, y[:, None]) - z
    dist = gap / (w[None, :, :] - w[y][:, None, :]).norm(dim=2)
    return dist.scatter(1, y[:, None], float("inf")).amin(1).clamp_min(0).numpy()


def _check_saved(result, model, x, n):
    """save_adversarials=n: the first n re-verified successes, their predictions and sizes as recorded."""
    per = pd.read_csv(result / "per_sample.csv")
    with np.load(result / "adversarials.npz", allow_pickle=False) as z:
        idx, labels, preds, clean, images = (z[k] for k in ("indices", "labels", "predictions", "clean", "images"))
    d = per["distance"].to_numpy()
    assert list(idx) == list(per["index"][np.isfinite(d) & (d > 0)][:n])
    assert list(labels) == list(per["label"][idx])
    np.testing.assert_array_equal(clean, x[idx].numpy())
    import torch

    with torch.no_grad():
        assert list(model(torch.from_numpy(images)).argmax(1).numpy()) == list(preds)
    assert (preds != labels).all()
    sizes = np.sqrt(((images - clean) ** 2).reshape(len(idx), -1).sum(1))
    np.testing.assert_allclose(sizes, d[idx], rtol=1e-5)
    assert (result / "adversarials.png").read_bytes()[:4] == b"\x89PNG"


def _cfg(run, certify, **kw):
    return OmegaConf.merge(OmegaConf.structured(EvalConfig), {
        "run": str(run), "norm": ["l2", "linf"], "n_examples": 20, "batch_size": 10, "search_steps": 20,
        "lipschitz": False, "certify": certify,
        "attack": {"linear_budget": {"_target_": "test_evaluation.linear_budget", "name": "linear_budget"}}, **kw})


def test_certified_curves_are_written_merged_and_above_the_attacked_ones(linear_run):
    from robust_cli.eval_app import evaluate

    run, model, x, y = linear_run
    evaluate(_cfg(run, ["lipschitz", "ibp", "crown"], save_adversarials=5))
    ev = run / "eval"
    _check_saved(ev / "linear_budget-l2", model, x, 5)
    table = pd.read_csv(ev / "summary.csv")
    assert set(table["attack"]) == {"linear_budget", "worst_case", "certified_lipschitz", "certified_ibp",
                                    "certified_crown"} - {"worst_case"}  # one attack: no worst case
    curves = pd.read_csv(ev / "error_curves.csv")
    for norm in ("l2", "linf"):
        exact = minimal_distance(model, x, y, norm).numpy()
        exact[0] = 0.0
        crown = pd.read_csv(ev / "certified" / f"crown-{norm}" / "per_sample.csv")
        assert list(crown.columns) == ["index", "label", "clean_pred", "radius"]
        # linf: exact (the box is part of the linf set); l2: exact where the box does not bind, below it where
        # it does (CROWN's l2 ball ignores [0,1])
        np.testing.assert_allclose(crown["radius"].to_numpy(), np.minimum(exact, l2_without_box(model, x, y))
                                   if norm == "l2" else exact, rtol=3e-5)
        attacked = pd.read_csv(ev / f"linear_budget-{norm}" / "per_sample.csv")["distance"].to_numpy()
        for method in ("lipschitz", "ibp", "crown"):
            r = pd.read_csv(ev / "certified" / f"{method}-{norm}" / "per_sample.csv")["radius"].to_numpy()
            # no certificate beyond an adversarial found (up to the float32 rounding of the evaluated model)
            assert (r <= attacked * (1 + 1e-5)).all()
            for eps in np.linspace(0, attacked[np.isfinite(attacked)].max(), 17):
                assert error_at(r, eps) >= error_at(attacked * (1 + 1e-5), eps) - 1e-12
            s = json.loads((ev / "certified" / f"{method}-{norm}" / "summary.json").read_text())
            assert s["error_at_eps"] == pytest.approx(error_at(r, s["eps"]))
            assert s["clean_error"] == pytest.approx(1 / 20)
            assert f"certified_{method}" in set(curves[curves["norm"] == norm]["attack"])
    assert (ev / "error_curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # two more evaluations (their plots cost most of it on a loaded machine)
def test_certified_results_are_reused_and_a_new_eps_read_off(linear_run):
    from robust_cli.eval_app import evaluate

    run, *_ = linear_run
    evaluate(_cfg(run, ["crown"]))
    path = run / "eval" / "certified" / "crown-l2"
    stamp = (path / "per_sample.csv").stat().st_mtime_ns
    evaluate(_cfg(run, ["crown"], eps={"l2": 0.05, "linf": 0.01}))
    assert (path / "per_sample.csv").stat().st_mtime_ns == stamp
    assert json.loads((path / "summary.json").read_text())["eps"] == 0.05


def test_unknown_certify_method_is_one_line(linear_run):
    from robust_cli.eval_app import evaluate

    run, *_ = linear_run
    with pytest.raises(UserError, match="certify=exact: unknown method"):
        evaluate(_cfg(run, ["ibp", "exact"]))
    assert not (run / "eval").exists()
