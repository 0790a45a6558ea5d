"""Transfer attacks (``source=``), the transfer matrix, and universal perturbations (``universal=true``)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from linear_reference import make_problem
from robust_cli.config import EvalConfig
from robust_cli.errors import UserError
from robust_cli.evaluation.universal import fooling_rate, universal_perturbation

CFG = OmegaConf.create({"dataset": {"name": "mnist", "in_shape": [1, 4, 4], "num_classes": 2}, "data": {}})


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """Two stand-in runs of the same 2-class linear problem (different weights) and one of another data set."""
    from robust_cli import data
    from robust_cli.training import checkpoint

    model_a, x, y = make_problem(n=20, in_shape=(1, 4, 4), num_classes=2, seed=6)
    model_b, _, _ = make_problem(n=20, in_shape=(1, 4, 4), num_classes=2, seed=7)
    other = OmegaConf.create({"dataset": {"name": "cifar10", "in_shape": [3, 32, 32], "num_classes": 10}, "data": {}})
    dirs = {k: tmp_path / k for k in ("a", "b", "c")}
    for d in dirs.values():
        d.mkdir()
        (d / "model.pt").write_bytes(b"")  # only its presence is checked; loading is patched
    table = {str(dirs["a"]): (model_a, CFG), str(dirs["b"]): (model_b, CFG), str(dirs["c"]): (model_a, other)}
    monkeypatch.setattr(checkpoint, "load_trained_model", lambda run_dir, device="cpu", **_: table[str(run_dir)])
    monkeypatch.setattr(data, "load_split", lambda ds, dc, split: (x, y))
    return dirs, model_a, x, y


def _cfg(run, **kw):
    return OmegaConf.merge(OmegaConf.structured(EvalConfig), {
        "run": str(run), "norm": ["linf"], "n_examples": 20, "batch_size": 10, "search_steps": 10, "lipschitz": False,
        "attack": {"linear_budget": {"_target_": "test_evaluation.linear_budget", "name": "linear_budget"}}, **kw})


def test_transfer_from_a_model_to_itself_is_the_white_box_result_and_the_matrix_holds_both(runs):
    from robust_cli.eval_app import evaluate
    from robust_cli.evaluation.transfer import transfer_matrix

    dirs, *_ = runs
    evaluate(_cfg(dirs["a"]))
    evaluate(_cfg(dirs["a"], source=str(dirs["a"])))
    evaluate(_cfg(dirs["a"], source=str(dirs["b"])))
    ev = dirs["a"] / "eval"
    white = pd.read_csv(ev / "linear_budget-linf" / "per_sample.csv")
    (own,) = [p for p in ev.glob("transfer_linear_budget_*-linf") if
              json.loads((p / "summary.json").read_text())["source"] == str(dirs["a"])]
    pd.testing.assert_frame_equal(pd.read_csv(own / "per_sample.csv"), white)
    matrix = transfer_matrix([dirs["a"], dirs["b"]], "linear_budget", "linf", "median_distance")
    a, b = str(dirs["a"]), str(dirs["b"])
    assert matrix.loc[a, a] == pytest.approx(json.loads((ev / "linear_budget-linf" / "summary.json").read_text())
                                              ["median_distance"])
    assert np.isfinite(matrix.loc[b, a]) and np.isnan(matrix.loc[a, b])  # b -> a evaluated, a -> b not
    from robust_cli.reporting.paper_tables import transfer_tables

    (table,) = transfer_tables([a, b], "median_distance")  # robust report's table of the same matrix
    rows = table.mean.set_index("source")
    assert rows.loc[a, a] == matrix.loc[a, a] and rows.loc[b, a] == matrix.loc[b, a] and np.isnan(rows.loc[a, b])


def test_source_of_another_data_set_is_one_line(runs):
    from robust_cli.eval_app import evaluate

    dirs, *_ = runs
    with pytest.raises(UserError, match="trained on cifar10 .* give a source run of the same data set"):
        evaluate(_cfg(dirs["a"], source=str(dirs["c"])))
    with pytest.raises(UserError, match="not a finished train run"):
        evaluate(_cfg(dirs["a"], source=str(dirs["a"] / "missing")))
    assert not (dirs["a"] / "eval").exists()


@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 0.6)])
def test_universal_perturbation_respects_eps_and_fools(norm, eps):
    model, x, _ = make_problem(n=60, in_shape=(1, 4, 4), num_classes=3, seed=8)
    v = universal_perturbation(model, x[:40], norm, eps)
    size = float(v.abs().max()) if norm == "linf" else float(v.norm())
    assert size <= eps * (1 + 1e-6)
    moved = ((x + v).clamp(0, 1) - x).flatten(1)
    assert float((moved.abs().amax(1) if norm == "linf" else moved.norm(dim=1)).max()) <= eps * (1 + 1e-6)
    with torch.no_grad():
        changed = (model((x[40:] + v).clamp(0, 1)).argmax(1) != model(x[40:]).argmax(1)).double().mean()
    assert fooling_rate(model, x[40:], v) == pytest.approx(float(changed))
    assert fooling_rate(model, x[:40], v) > 0  # a perturbation that fools nothing would pass the eps checks


def test_universal_eval_writes_the_perturbation_and_its_fooling_rate(runs):
    from robust_cli.eval_app import evaluate

    dirs, model, x, _ = runs
    evaluate(_cfg(dirs["b"], universal=True, universal_images=10, eps={"linf": 0.2}))
    out = dirs["b"] / "universal"
    s = json.loads((dirs["b"] / "eval" / "universal" / "linf" / "summary.json").read_text())
    with np.load(dirs["b"] / "eval" / "universal" / "linf" / "perturbation.npz") as z:
        v = torch.from_numpy(z["v"])[None]
    assert float(v.abs().max()) <= 0.2 * (1 + 1e-6) and s["eps"] == 0.2 and not out.exists()
    assert s["n_craft"] == 10
