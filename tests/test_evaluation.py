"""Tests of robust_cli.evaluation and robust_cli.reporting against closed forms and brute force.

The linear model of ``linear_reference`` has exactly known box-constrained minimal distances. Stand-in
attacks below are exact on linear two-class models, so every number the evaluation produces for them is
known; tests with the real attack modules skip where those modules do not exist yet.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from linear_reference import make_problem, minimal_distance
from omegaconf import OmegaConf

from robust_cli.attacks.contract import register_attack
from robust_cli.attacks.geometry import batch_norm, enforce_budget
from robust_cli.config import EvalConfig
from robust_cli.errors import UserError
from robust_cli.evaluation import checks as checks_mod
from robust_cli.data.sets import thresholds_of
from robust_cli.evaluation.curves import error_at, error_curve, median_distance, worst_case
from robust_cli.evaluation.data_lipschitz import data_lipschitz, min_cross_label_distance
from robust_cli.evaluation.distances import adversarial_distance, perturbation_norms
from robust_cli.evaluation.eps_search import box_radius, search_distance
from robust_cli.evaluation.lipschitz import (
    _conv_spectral_norm,
    input_gradient_norms,
    jacobian_norms,
    lipschitz_statistics,
)
from robust_cli.evaluation.runner import CountingModel, run_attack

CONF = Path(__file__).resolve().parents[1] / "conf"
CALLS = {"n": 0}


# ---------------------------------------------------------------- stand-in attacks (exact on 2-class linear)


def _direction(model, y):
    """``a = w_other - w_y`` ``[B, d]`` of a two-class linear model: the only way to flip the prediction."""
    w = getattr(model, "model", model).fc.weight.detach()  # through the runner's CountingModel
    return w[1 - y] - w[y]


@register_attack(norms=("l2", "linf"), budget=True)
def linear_budget(model, x, y, *, norm, eps):
    """Box-constrained best step within eps on a 2-class linear model (exact for linf; l2 up to clipping)."""
    CALLS["n"] += 1
    a = _direction(model, y).view_as(x)
    eps = torch.as_tensor(eps, dtype=x.dtype).expand(x.shape[0]).view(-1, 1, 1, 1)
    step = a.sign() if norm == "linf" else a / a.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    x_adv = enforce_budget(x + eps * step, x, eps.flatten(), norm)  # trims the last ulp over eps, as attacks do
    with torch.enable_grad():  # one forward + backward, as a real gradient attack would cost
        xr = x.detach().requires_grad_(True)
        torch.autograd.grad(model(xr).sum(), xr)
    return x_adv


@register_attack(norms=("l2", "linf"), budget=True)
def linear_budget_twin(model, x, y, *, norm, eps):
    """``linear_budget`` under another name: a second attack of the same norm."""
    return linear_budget(model, x, y, norm=norm, eps=eps)


@register_attack(norms=("l2",), budget=False)
def liar(model, x, y, *, norm):
    """Returns an image the model still classifies correctly: must be recorded as a failure."""
    return x + 1e-4 * torch.randn_like(x)


@register_attack(norms=("l2",), budget=False)
def nan_attack(model, x, y, *, norm):
    return torch.full_like(x, float("nan"))


@register_attack(norms=("l2",), budget=False)
def steps3(model, x, y, *, norm):
    """Three gradient steps on the whole batch: 3 forward and 3 backward passes per sample."""
    x_adv = x.clone()
    for _ in range(3):
        xr = x_adv.detach().requires_grad_(True)
        loss = F.cross_entropy(model(xr), y)
        (g,) = torch.autograd.grad(loss, xr)
        x_adv = (x_adv + 0.1 * g.sign()).clamp(0, 1)
    return x_adv


def _two_class(n=24, seed=0):
    return make_problem(n=n, in_shape=(1, 4, 4), num_classes=2, seed=seed)


# ---------------------------------------------------------------- distances, curves


def test_perturbation_norms_and_distance_rules():
    x = torch.full((2, 1, 2, 2), 0.5)
    x_adv = x.clone()
    x_adv[0, 0, 0, 0] += 0.3
    x_adv[0, 0, 1, 1] -= 0.4
    s = perturbation_norms(x_adv, x)
    assert s["l0"].tolist() == [2, 0]
    assert s["l1"][0].item() == pytest.approx(0.7)
    assert s["l2"][0].item() == pytest.approx(0.5)
    assert s["linf"][0].item() == pytest.approx(0.4)
    # three channels: l0 counts pixels (the thesis's unit, Ch.5 §5.3), a pixel changed in two channels counts once
    rgb = torch.full((1, 3, 2, 2), 0.5)
    rgb_adv = rgb.clone()
    rgb_adv[0, :2, 0, 0] += 0.1
    rgb_adv[0, 2, 1, 0] -= 0.1
    assert perturbation_norms(rgb_adv, rgb)["l0"].tolist() == [2]
    d = adversarial_distance(torch.tensor([0.5, 0.7, 0.2]), torch.tensor([True, True, False]),
                             torch.tensor([True, False, False]))
    assert d.tolist() == [0.5, math.inf, 0.0]


def test_error_curve_is_the_empirical_cdf():
    rng = np.random.default_rng(0)
    d = np.concatenate([rng.exponential(size=37), [0, 0, 0, np.inf, np.inf], [0.5, 0.5]])
    eps, err = error_curve(d)
    assert eps[0] == 0 and err[0] == pytest.approx(3 / len(d))
    assert np.all(np.diff(eps) > 0) and np.all(np.diff(err) >= 0)
    for e in np.concatenate([eps, rng.uniform(0, 3, 20)]):
        k = np.searchsorted(eps, e, side="right") - 1
        assert err[k] == pytest.approx(np.mean(d <= e))  # step function read-off = brute force
        assert error_at(d, e) == pytest.approx(np.mean(d <= e))
    assert err[-1] == pytest.approx(1 - 2 / len(d))  # failures never count as errors


def test_median_distance_is_where_error_reaches_half():
    assert median_distance(np.array([0.3, 0.1, 0.2, 0.4])) == 0.2
    assert median_distance(np.array([0.3, 0.1, 0.2])) == 0.2
    assert median_distance(np.array([0.1, np.inf, np.inf])) == math.inf
    d = np.random.default_rng(1).exponential(size=101)
    m = median_distance(d)
    assert error_at(d, m) >= 0.5 and error_at(d, np.nextafter(m, 0)) < 0.5


def test_thresholds_table():
    """The thresholds are the data set's config (conf/dataset/<name>.yaml), picked by name, never by shape."""
    assert thresholds_of({"name": "mnist"})["linf"] == [0.2, 0.25, 0.3, 0.325, 0.35]
    assert thresholds_of({"name": "mnist"})["l1"] == [2.5, 5.0, 7.5, 10.0, 12.5]
    assert "l0" not in thresholds_of({"name": "mnist"})  # lost in the thesis's text extraction
    c = thresholds_of({"name": "cifar10"})
    assert c["linf"] == pytest.approx([k / 255 for k in (2, 4, 6, 8, 10)])
    assert c["l2"] == [0.25, 0.5, 0.75, 1.0, 1.25] and c["l0"] == [1, 3, 5, 8, 12]
    assert thresholds_of({"name": "digits"})["l2"][2] == pytest.approx(2 * math.sqrt(64 / 784), abs=1e-4)
    for name in ("svhn", "cifar100", "fashion_mnist", "npz"):  # no published thresholds: none
        assert thresholds_of({"name": name, "in_shape": [3, 32, 32]}) == {}
    assert thresholds_of({"name": "npz", "in_shape": [1, 28, 28], "thresholds": {"l2": [1.0]}}) == {"l2": [1.0]}


def test_worst_case_is_per_sample_minimum():
    a, b = np.array([1.0, np.inf, 0.0]), np.array([2.0, 0.5, 0.0])
    assert worst_case([a, b]).tolist() == [1.0, 0.5, 0.0]


# ---------------------------------------------------------------- eps search and runner on the linear model


def test_eps_search_recovers_exact_linf_distance():
    model, x, y = _two_class()
    exact = minimal_distance(model, x, y, "linf")
    assert torch.isfinite(exact).all()

    found = search_distance(linear_budget, model, x, y, "linf", steps=30)
    size = batch_norm(found.x_adv - x, "linf").double()
    assert (model(found.x_adv).argmax(1) != y).all()
    # the true optimum is a lower bound of any verified adversarial; bisection closes the gap to 2^-30
    assert (size >= exact * (1 - 1e-5)).all()
    assert torch.allclose(size, exact, rtol=1e-5)
    assert torch.allclose(found.eps.double(), exact, rtol=1e-5)
    assert (found.resolution <= 2**-30).all()


def test_grid_search_brackets_the_distance():
    model, x, y = _two_class(seed=3)
    exact = minimal_distance(model, x, y, "linf")
    hi = box_radius(x, "linf")
    found = search_distance(linear_budget, model, x, y, "linf", method="grid", steps=64)
    step = (hi / 64).double()
    assert torch.allclose(found.resolution.double(), step)
    # the first grid point at or above the exact distance: within one step of it
    assert (found.eps.double() >= exact - 1e-6).all() and (found.eps.double() <= exact + step + 1e-6).all()
    assert not found.non_monotone.any()  # an exact attack on a linear model is monotone in eps


def test_run_attack_budget_l2_within_5_percent_and_counts_passes():
    model, x, y = _two_class(seed=1)
    exact = minimal_distance(model, x, y, "l2")
    res = run_attack(model, x, y, linear_budget, "l2", {"eps": 123.0}, batch_size=10, search_steps=20)
    d = torch.tensor(res.frame["distance"].to_numpy())
    assert torch.isfinite(d).all()
    assert (d >= exact * (1 - 1e-5)).all()  # never below the optimum: every success is re-verified
    assert (d <= exact * 1.05).all()
    # one attack at the box radius + 20 halvings, each 1 forward and 1 backward of every sample
    assert res.forward_per_sample == pytest.approx(21) and res.backward_per_sample == pytest.approx(21)
    assert list(res.frame.columns) == ["index", "label", "clean_pred", "adv_pred", "distance", "l0", "l1", "linf"]
    assert (res.frame["adv_pred"] != res.frame["label"]).all()


def test_attack_that_does_not_fool_the_model_is_a_failure():
    model, x, y = _two_class(seed=2)
    for attack in (liar, nan_attack):
        res = run_attack(model, x, y, attack, "l2")
        assert np.isinf(res.frame["distance"]).all()
        assert (res.frame["adv_pred"] == res.frame["label"]).all()


def test_clean_misclassified_images_have_distance_zero():
    model, x, y = _two_class(seed=4)
    y = y.clone()
    y[:5] = 1 - y[:5]  # wrong labels: misclassified clean
    res = run_attack(model, x, y, linear_budget, "linf", search_steps=8)
    assert (res.frame["distance"][:5] == 0).all() and (res.frame["distance"][5:] > 0).all()


@pytest.mark.parametrize("training", [True, False])
def test_run_attack_restores_the_callers_mode(training):
    """The attack runs in eval mode; the model is handed back in the mode it came in."""
    model, x, y = _two_class(n=8)
    model.train(training)
    run_attack(model, x, y, linear_budget, "linf", search_steps=4)
    assert model.training == training


def test_targeted_attacks_are_refused_by_the_evaluation():
    """Without targets a targeted run would score its successes against the true labels and record every
    image as a failure: an error, not a silent table of inf (targets=... evaluates it: test_targeted_eval)."""
    model, x, y = _two_class(n=8)
    with pytest.raises(UserError, match="targeted"):
        run_attack(model, x, y, linear_budget, "linf", {"targeted": True})


def test_counting_model_counts_forward_and_backward():
    model, x, y = _two_class(n=12)
    counted = CountingModel(model)
    steps3(counted, x, y, norm="l2")
    assert counted.forward_samples == 36 and counted.backward_samples == 36
    with torch.no_grad():
        counted(x)
    assert counted.forward_samples == 48 and counted.backward_samples == 36


# ---------------------------------------------------------------- the real attacks, where they exist


def _real(name):
    try:
        module = importlib.import_module(f"robust_cli.attacks.{name}")
    except ImportError:
        pytest.skip(f"robust_cli.attacks.{name} not written yet")
    return getattr(module, name)


@pytest.mark.parametrize("name", ["fgsm", "fgm", "ifgsm", "pgd"])
def test_budget_attacks_never_exceed_eps(name):
    attack = _real(name)
    torch.manual_seed(0)
    model, x, y = make_problem(n=16, in_shape=(1, 5, 5), num_classes=3, seed=5)
    for norm in attack.norms:
        eps = torch.rand(x.shape[0]) * (2.0 if norm == "l1" else 0.5) + 0.01
        x_adv = attack(model, x, y, norm=norm, eps=eps)
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert (batch_norm(x_adv - x, norm) <= eps * (1 + 1e-6)).all(), norm


@pytest.mark.parametrize("name,norm", [("fgsm", "linf"), ("fgm", "l2")])
def test_single_step_attack_with_eps_search_is_exact_on_two_class_linear(name, norm):
    attack = _real(name)
    if norm not in attack.norms:
        pytest.skip(f"{name} has no {norm}")
    model, x, y = _two_class(seed=6)
    exact = minimal_distance(model, x, y, norm)
    res = run_attack(model, x, y, attack, norm, search_steps=20)
    d = torch.tensor(res.frame["distance"].to_numpy())
    assert (d >= exact * (1 - 1e-5)).all() and (d <= exact * 1.05).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_within_5_percent_of_optimum(norm):
    attack = _real("deepfool")
    if norm not in attack.norms:
        pytest.skip(f"deepfool has no {norm}")
    model, x, y = make_problem(n=24, in_shape=(1, 4, 4), num_classes=3, seed=7)
    exact = minimal_distance(model, x, y, norm)
    res = run_attack(model, x, y, attack, norm)
    d = torch.tensor(res.frame["distance"].to_numpy())
    assert (d >= exact * (1 - 1e-5)).all() and (d <= exact * 1.05).all()


# ---------------------------------------------------------------- Lipschitz statistics


def test_lipschitz_statistics_of_linear_model_match_closed_forms():
    model, x, y = make_problem(n=20, in_shape=(1, 4, 4), num_classes=3, seed=8)
    w = model.fc.weight.detach().double()
    p = torch.softmax(model(x).detach().double(), 1)
    grad = (p - F.one_hot(y, 3).double()) @ w  # d CE / dx = W^T (softmax - onehot)
    assert torch.allclose(input_gradient_norms(model, x, y).double(), grad.norm(dim=1), rtol=1e-4)
    sigma = torch.linalg.matrix_norm(w, ord=2)
    assert torch.allclose(jacobian_norms(model, x).double(), sigma.expand(20), rtol=1e-4)
    stats = lipschitz_statistics(model, x, y)
    assert stats["weight_norm_product"] == pytest.approx(float(sigma), rel=1e-5)
    assert stats["max_grad_norm"] == pytest.approx(float(grad.norm(dim=1).max()), rel=1e-4)
    assert stats["zero_grad_fraction"] == 0.0
    # on a one-layer (chain) model margin / (2L) is a bound: it never exceeds the true minimal l2 distance
    exact = minimal_distance(model, x, y, "l2")
    logits = model(x).detach()
    top2 = logits.topk(2, dim=1).values
    bound = (top2[:, 0] - top2[:, 1]) / (2 * sigma.float())
    assert (bound.double() <= exact + 1e-6).all()
    assert stats["margin_radius_estimate"]["max"] == pytest.approx(float(bound.max()), rel=1e-4)
    assert stats["margin_radius_estimate"]["certificate"] is False  # in general an estimate (residual nets)
    assert "margin_lower_bound" not in stats
    assert not any(p.grad is not None for p in model.parameters())


def test_a_lipschitz_json_of_before_the_rename_is_read_and_recomputed():
    from robust_cli.evaluation.cache import lipschitz_stale
    from robust_cli.reporting.collect import Run
    from robust_cli.reporting.paper_tables import LIPSCHITZ, lipschitz_table

    old = {"n": 10, "model": "m", "max_grad_norm": 1.0, "margin_lower_bound": {"median": 0.25},
           "margin_lower_bound_empirical": {"median": 0.5}}
    new = {"n": 10, "model": "m", "max_grad_norm": 1.0, "margin_radius_estimate": {"median": 0.125},
           "margin_radius_estimate_empirical": {"median": 0.375}}
    assert lipschitz_stale(old, 10, "m") and not lipschitz_stale(new, 10, "m")
    empty = pd.DataFrame()
    runs = [Run(f"r{i}", {"seed": str(i)}, empty, empty, None, stats) for i, stats in enumerate((old, new))]
    table = lipschitz_table(runs, ["seed"])
    rows = table.mean.set_index("seed")
    estimate = LIPSCHITZ["margin_radius_estimate.median"]
    empirical = LIPSCHITZ["margin_radius_estimate_empirical.median"]
    assert "(estimate)" in estimate
    assert rows.loc["0", [estimate, empirical]].tolist() == [0.25, 0.5]
    assert rows.loc["1", [estimate, empirical]].tolist() == [0.125, 0.375]


def test_conv_spectral_norm_matches_dense_operator():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False)
    shape = (2, 7, 7)
    eye = torch.eye(int(np.prod(shape))).view(-1, *shape)
    dense = conv(eye).detach().flatten(1).T  # [out, in]: the operator's matrix
    expected = float(torch.linalg.matrix_norm(dense.double(), ord=2))
    assert _conv_spectral_norm(conv, shape, iters=200) == pytest.approx(expected, rel=1e-3)


# ---------------------------------------------------------------- data Lipschitz constant


def test_data_lipschitz_matches_brute_force_and_skips_duplicates():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(150, 1, 3, 3, generator=g)
    y = torch.randint(0, 4, (150,), generator=g)
    x[7] = x[3]  # an exact duplicate with another label: excluded
    y[7] = (y[3] + 1) % 4
    d = torch.cdist(x.flatten(1).double(), x.flatten(1).double())
    valid = (y[:, None] != y[None, :]) & (d > 0)
    expected = float(d[valid].min())
    for chunk in (1, 16, 64, 1000):
        dist, i, j = min_cross_label_distance(x, y, chunk_size=chunk)
        assert dist == pytest.approx(expected, rel=1e-12)
        assert y[i] != y[j]
    assert data_lipschitz(x, y)["lipschitz"] == pytest.approx(1 / expected)
    # a near pair (one value apart by 1/255) is kept, not mistaken for a duplicate
    x[9] = x[4]
    x[9, 0, 0, 0] += 1 / 255
    y[9] = (y[4] + 1) % 4
    near = float((x[9].double() - x[4].double()).norm())  # 1/255 up to the float32 storage of x
    assert near == pytest.approx(1 / 255, rel=1e-6)
    assert min_cross_label_distance(x, y, chunk_size=32)[0] == pytest.approx(near, rel=1e-12)


@pytest.mark.slow
def test_mnist_data_lipschitz_is_finlay_table_2(mnist_root):
    torchvision = pytest.importorskip("torchvision")
    ds = torchvision.datasets.MNIST(root=str(mnist_root), train=True, download=False)
    x, y = ds.data.float().div(255)[:, None], ds.targets
    assert data_lipschitz(x, y, chunk_size=1024)["lipschitz"] == pytest.approx(0.417, abs=5e-4)


# ---------------------------------------------------------------- checks


def test_cross_checks_flag_weaker_iterative_and_noise():
    d = {"fgsm": np.array([1.0, 2.0, np.inf]), "ifgsm": np.array([0.9, 2.5, np.inf]),
         "noise": np.array([3.0, 0.1, np.inf])}
    out = checks_mod.cross_checks(d, "linf")
    assert out["ifgsm"]["at_least_single_step"]["ok"] is False
    assert out["ifgsm"]["at_least_single_step"]["violation_fraction"] == pytest.approx(1 / 3)
    assert out["noise"]["whitebox_beats_noise"]["violation_fraction"] == pytest.approx(1 / 3)
    d["ifgsm"][1] = 2.0
    assert "ifgsm" not in checks_mod.cross_checks(d, "l2")  # fgm is the l2 single step, not fgsm
    assert checks_mod.cross_checks(d, "linf")["ifgsm"]["at_least_single_step"]["ok"] is True
    assert checks_mod.curve_check(np.array([0.1, 0.2, 0.15]), 0)["curve_monotone"] is False
    assert checks_mod.unbounded_check(False, 0.9, "deepfool") == {"unbounded_success": False}
    assert checks_mod.unbounded_check(False, 0.9, "noise") == {"unbounded_success": None}
    assert checks_mod.unbounded_check(True, 0.9, "pgd") == {"unbounded_success": None}


def test_attack_all_names_every_attack_file():
    from hydra import compose, initialize_config_module

    from robust_cli.cli import expand_attack_all
    from robust_cli.config import register_configs

    files = sorted(p.stem for p in (CONF / "attack").glob("*.yaml"))
    everything = "[" + ",".join(files) + "]"
    assert expand_attack_all(["attack=all", "run=x"]) == [f"attack={everything}", "run=x"]
    assert expand_attack_all(["attack=[fgsm, all]"]) == ["attack=[fgsm," + everything[1:]]
    assert expand_attack_all(["attack=fgsm,all", "norm=all"]) == [f"attack=fgsm,{everything}", "norm=all"]
    assert expand_attack_all(["attack=[fgsm,pgd]"]) == ["attack=[fgsm,pgd]"]
    assert expand_attack_all(["attack=fgsm,all,[pgd,fgm]"]) == [f"attack=fgsm,{everything},[pgd,fgm]"]
    register_configs()
    with initialize_config_module("robust_cli.conf", version_base=None):
        cfg = compose("eval", overrides=expand_attack_all(["attack=all", "run=x"]))
        assert sorted(cfg.attack) == files  # every attack lands side by side at attack.<name>
        assert sorted(compose("eval", overrides=["attack=[fgsm,pgd]", "run=x"]).attack) == ["fgsm", "pgd"]


# ---------------------------------------------------------------- the eval app with a stand-in run


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    """A run directory whose model is the 2-class linear model; checkpoint and data loading patched."""
    from cli_helpers import patched_run

    model, x, y = _two_class(n=30, seed=9)
    y = y.clone()
    y[0] = 1 - y[0]  # one image misclassified clean
    run = patched_run(tmp_path, monkeypatch, model, x, y)
    return run, model, x, y


def _cfg(run, attacks, norm, **kw):
    cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig), {
        "run": str(run), "norm": norm, "n_examples": 25, "batch_size": 10, "search_steps": 12, "lipschitz": True,
        "attack": {a: {"_target_": f"test_evaluation.{a}", "name": a} for a in attacks}, **kw})
    return cfg


def test_eval_writes_schemas_merges_and_reuses(fake_run):
    from robust_cli.eval_app import evaluate

    run, model, x, y = fake_run
    CALLS["n"] = 0
    summary = evaluate(_cfg(run, ["linear_budget"], ["l2", "linf"]))
    calls = CALLS["n"]
    assert calls > 0
    ev = run / "eval"
    for norm in ("l2", "linf"):
        per = pd.read_csv(ev / f"linear_budget-{norm}" / "per_sample.csv")
        others = [n for n in ("l0", "l1", "l2", "linf") if n != norm]
        assert list(per.columns) == ["index", "label", "clean_pred", "adv_pred", "distance", *others]
        assert len(per) == 25 and per["distance"].iloc[0] == 0
        exact = minimal_distance(model, x[:25], y[:25], norm).numpy()
        d = per["distance"].to_numpy()
        assert np.all(d[1:] >= exact[1:] * (1 - 1e-5)) and np.all(d[1:] <= exact[1:] * 1.05)
        curve = pd.read_csv(ev / f"linear_budget-{norm}" / "curve.csv")
        assert list(curve.columns) == ["eps", "error"] and curve["error"].iloc[0] == pytest.approx(1 / 25)
        s = json.loads((ev / f"linear_budget-{norm}" / "summary.json").read_text())
        assert s["clean_error"] == pytest.approx(1 / 25) and s["success_rate"] == 1.0
        assert s["median_distance"] == pytest.approx(median_distance(d))
        assert s["checks"]["curve_monotone"] is True and s["checks"]["unbounded_success"] is None
        assert set(s["robust_accuracy"]) == {f"{t:g}" for t in thresholds_of({"name": "mnist"})[norm]}
    table = pd.read_csv(ev / "summary.csv")
    for col in ("attack", "norm", "clean_error", "median_distance", "mean_distance", "rho_adv", "error_at_eps",
                "robust_acc@0.2", "robust_acc@1", "success_rate", "seconds", "forward_per_sample",
                "backward_per_sample"):
        assert col in table.columns, col
    assert len(summary) == 2 == len(table)
    curves = pd.read_csv(ev / "error_curves.csv")
    assert list(curves.columns) == ["attack", "norm", "eps", "error"]
    assert (ev / "error_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lip = json.loads((ev / "lipschitz.json").read_text())
    assert lip["max_jacobian_norm"] == pytest.approx(lip["weight_norm_product"], rel=1e-4)

    # a second call reuses: the attack is not run again and the files are untouched
    stamp = (ev / "linear_budget-l2" / "per_sample.csv").stat().st_mtime_ns
    evaluate(_cfg(run, ["linear_budget"], ["l2", "linf"]))
    assert CALLS["n"] == calls
    assert (ev / "linear_budget-l2" / "per_sample.csv").stat().st_mtime_ns == stamp
    evaluate(_cfg(run, ["linear_budget"], "l2", force=True))
    assert CALLS["n"] > calls

    # another attack on the same norm joins the merged files, with a worst case per image
    evaluate(_cfg(run, ["liar"], "l2"))
    table = pd.read_csv(ev / "summary.csv")
    assert set(zip(table["attack"], table["norm"])) == {
        ("linear_budget", "l2"), ("linear_budget", "linf"), ("liar", "l2"), ("worst_case", "l2")}
    worst = table[table["attack"] == "worst_case"].iloc[0]
    ours = table[(table["attack"] == "linear_budget") & (table["norm"] == "l2")].iloc[0]
    assert worst["median_distance"] == pytest.approx(ours["median_distance"])  # liar fails everywhere
    liar_s = json.loads((ev / "liar-l2" / "summary.json").read_text())
    assert liar_s["checks"]["unbounded_success"] is False and liar_s["success_rate"] == 0.0
    assert "unbounded_success" in table[table["attack"] == "liar"]["checks_failed"].iloc[0]



def test_worst_case_row_reads_every_members_thresholds_at_one_eps_whatever_their_order(fake_run, caplog):
    """Two attacks of one norm summarised at different eps, with different thresholds, on 25 and 15 images:
    the worst case is over the 15 images both evaluated, read at the smaller eps and at the union of the
    thresholds, and says so in a warning. Its numbers are the per-image minimum's, and on those images it is
    never less severe than either member (it used to take eps and thresholds from the member sorting first)."""
    from robust_cli.eval_app import evaluate

    run, model, x, y = fake_run
    evaluate(_cfg(run, ["linear_budget"], "l2", lipschitz=False, eps={"l2": 0.9}))
    with caplog.at_level("WARNING", logger="robust_cli.reporting.tables"):
        evaluate(_cfg(run, ["linear_budget_twin"], "l2", lipschitz=False, n_examples=15, eps={"l2": 0.4},
                      thresholds={"l2": [0.3]}))
    ev = run / "eval"
    table = pd.read_csv(ev / "summary.csv").set_index("attack")
    worst = table.loc["worst_case"]
    assert worst["n"] == 15 and worst["eps"] == 0.4
    assert "at the smallest, 0.4" in caplog.text and "over the 15 images every attack evaluated" in caplog.text
    d = {a: pd.read_csv(ev / f"{a}-l2" / "per_sample.csv").set_index("index")["distance"]
         for a in ("linear_budget", "linear_budget_twin")}
    common = d["linear_budget_twin"].index  # the 15 images
    per_image = np.minimum(d["linear_budget"].loc[common].to_numpy(), d["linear_budget_twin"].to_numpy())
    assert worst["error_at_eps"] == pytest.approx(error_at(per_image, 0.4))
    member_thresholds = {c for a in d for c in table.columns
                         if c.startswith("robust_acc@") and not pd.isna(table.loc[a, c])}
    assert "robust_acc@0.3" in member_thresholds and len(member_thresholds) > 1
    for column in member_thresholds:
        t = float(column.split("@")[1])
        assert worst[column] == pytest.approx(1 - error_at(per_image, t))
        for a in d:  # on the common images no member is more robust than the worst case says
            assert worst[column] <= 1 - error_at(d[a].loc[common].to_numpy(), t)

def test_eval_recomputes_after_retraining_and_refreshes_error_at_a_new_eps(fake_run):
    """The cache is keyed on the model's weights: a retrained model (force=true) is attacked again. A new
    ``eps.<norm>`` does not need the attack: ``error_at_eps`` is recomputed from the stored distances."""
    from robust_cli.eval_app import evaluate
    from robust_cli.evaluation.curves import error_at

    run, model, x, y = fake_run
    CALLS["n"] = 0
    evaluate(_cfg(run, ["linear_budget"], "l2"))
    calls = CALLS["n"]
    path = run / "eval" / "linear_budget-l2" / "summary.json"

    evaluate(_cfg(run, ["linear_budget"], "l2", eps={"l2": 0.123}))
    assert CALLS["n"] == calls  # not attacked again
    stored = json.loads(path.read_text())
    distances = pd.read_csv(path.parent / "per_sample.csv")["distance"].to_numpy()
    assert stored["eps"] == 0.123 and stored["error_at_eps"] == pytest.approx(error_at(distances, 0.123))
    assert pd.read_csv(run / "eval" / "summary.csv")["error_at_eps"].iloc[0] == pytest.approx(stored["error_at_eps"])

    with torch.no_grad():
        model.fc.weight.mul_(1.5)  # "retrained"
    evaluate(_cfg(run, ["linear_budget"], "l2", eps={"l2": 0.123}))
    assert CALLS["n"] > calls


def test_eval_threshold_override_replaces_one_norm(fake_run):
    """``thresholds.l2=[...]`` replaces the data set's l2 thresholds in summary.json and summary.csv; ``[]``
    removes a norm's; the others keep the data set's (the fake run's stored config has none: MNIST's)."""
    from robust_cli.eval_app import evaluate

    run, *_ = fake_run
    evaluate(_cfg(run, ["linear_budget"], ["l2", "linf"], lipschitz=False,
                  thresholds={"l2": [0.05, 0.1], "linf": []}))
    s = json.loads((run / "eval" / "linear_budget-l2" / "summary.json").read_text())
    assert list(s["robust_accuracy"]) == ["0.05", "0.1"]
    assert json.loads((run / "eval" / "linear_budget-linf" / "summary.json").read_text())["robust_accuracy"] == {}
    table = pd.read_csv(run / "eval" / "summary.csv")
    assert [c for c in table.columns if c.startswith("robust_acc@")] == ["robust_acc@0.05", "robust_acc@0.1"]
    d = pd.read_csv(run / "eval" / "linear_budget-l2" / "per_sample.csv")["distance"].to_numpy()
    row = table[table["norm"] == "l2"].iloc[0]
    assert row["robust_acc@0.1"] == pytest.approx(1 - error_at(d, 0.1))


def test_a_reused_result_gets_the_new_thresholds_without_attacking_again(fake_run):
    """A second eval with only ``thresholds.l2=[...]`` changed reuses the attack's distances and rewrites its
    robust accuracies from them (no stale columns in summary.csv, no new attack calls)."""
    from robust_cli.eval_app import evaluate

    run, *_ = fake_run
    evaluate(_cfg(run, ["linear_budget"], "l2", lipschitz=False))
    calls = CALLS["n"]
    evaluate(_cfg(run, ["linear_budget"], "l2", lipschitz=False, thresholds={"l2": [0.07]}))
    assert CALLS["n"] == calls  # reused
    s = json.loads((run / "eval" / "linear_budget-l2" / "summary.json").read_text())
    d = pd.read_csv(run / "eval" / "linear_budget-l2" / "per_sample.csv")["distance"].to_numpy()
    assert s["robust_accuracy"] == {"0.07": pytest.approx(1 - error_at(d, 0.07))}
    table = pd.read_csv(run / "eval" / "summary.csv")
    assert [c for c in table.columns if c.startswith("robust_acc@")] == ["robust_acc@0.07"]


def test_eval_unsupported_norm_singly_is_an_error_in_a_list_skipped(fake_run):
    from robust_cli.eval_app import evaluate

    run, *_ = fake_run
    with pytest.raises(UserError, match="does not support norm=linf"):
        evaluate(_cfg(run, ["liar"], "linf", lipschitz=False))
    evaluate(_cfg(run, ["liar", "linear_budget"], ["linf"], lipschitz=False))
    assert not (run / "eval" / "liar-linf").exists() and (run / "eval" / "linear_budget-linf").is_dir()
    with pytest.raises(UserError, match="unknown norm"):
        evaluate(_cfg(run, ["liar"], "l3"))


def test_other_settings_than_stored_are_refused_more_images_recomputed_force_replaces(fake_run):
    """A stored result is never silently replaced by one of other settings: fewer images or other options
    are refused in one line naming them (before any attack runs), more images only add work, force=true
    replaces."""
    from robust_cli.eval_app import evaluate

    run, *_ = fake_run
    evaluate(_cfg(run, ["linear_budget"], "l2", lipschitz=False, n_examples=20))
    result = run / "eval" / "linear_budget-l2"
    before = {p.name: p.read_bytes() for p in result.iterdir()}
    calls = CALLS["n"]
    with pytest.raises(UserError, match=r"^linear_budget-l2 was evaluated with n_examples=20 \(now 10\), "
                                        r"search_steps=12 \(now 5\); force=true replaces the stored result"):
        evaluate(_cfg(run, ["linear_budget"], "l2", lipschitz=False, n_examples=10, search_steps=5))
    assert CALLS["n"] == calls and {p.name: p.read_bytes() for p in result.iterdir()} == before
    evaluate(_cfg(run, ["linear_budget"], "l2", lipschitz=False, n_examples=25))  # only adds images
    assert json.loads((result / "summary.json").read_text())["n"] == 25
    evaluate(_cfg(run, ["linear_budget"], "l2", lipschitz=False, n_examples=10, force=True))
    assert json.loads((result / "summary.json").read_text())["n"] == 10


def test_fixed_mode_end_to_end_reports_robust_accuracy_at_exactly_the_budgets(fake_run):
    """``mode=fixed eps.linf=[a,b]``: one attack per budget, no search; robust accuracy at each budget is the
    exact one of the linear model (the stand-in attack is exact in linf), and nothing says "resolution"."""
    from robust_cli.eval_app import evaluate

    run, model, x, y = fake_run
    exact = minimal_distance(model, x[:25], y[:25], "linf").numpy()
    exact[0] = 0.0  # misclassified clean
    budgets = [float(np.quantile(exact[1:], 0.3)), float(np.quantile(exact[1:], 0.7))]
    evaluate(_cfg(run, ["linear_budget"], "linf", mode="fixed", eps={"linf": budgets}, lipschitz=False))
    s = json.loads((run / "eval" / "linear_budget-linf" / "summary.json").read_text())
    assert s["mode"] == "fixed" and s["fixed_eps"] == budgets and s["search_resolution"] == 0
    assert "resolution_valid" not in s["checks"] and "search" not in s  # no search, nothing to resolve
    d = pd.read_csv(run / "eval" / "linear_budget-linf" / "per_sample.csv")["distance"].to_numpy()
    for eps in budgets:
        # an image is broken at eps exactly when its minimal distance is within eps (up to float32 rounding)
        near = np.abs(exact - eps) <= 1e-6 * max(eps, 1.0)
        assert np.array_equal((d <= eps)[~near], (exact <= eps)[~near])
    assert np.all(np.isinf(d[exact > max(budgets) * (1 + 1e-6)]))  # never attacked past the largest budget



class _ValueInBand(torch.nn.Module):
    """Two classes on ``[B,1,1,1]`` images: class 1 iff the one value lies in ``(low, high)``."""

    def __init__(self, low: float, high: float):
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.flatten(1)[:, :1]
        z = torch.minimum(v - self.low, self.high - v)
        return torch.cat([torch.zeros_like(z), z], dim=1)


def test_fixed_mode_counts_an_image_broken_at_a_budget_whose_float32_size_rounds_above_it():
    """An adversarial found at the budget 0.3 whose size is 0.29999999702 in float64 (``x0 + e`` rounded in
    float32) has a float32 size of 0.30000001192, above 0.3: it is still an error at 0.3 (robust accuracy 0, not
    1), and its distance is recorded at 0.3 at most. Images the budget did not break stay ``inf``."""
    e = torch.nextafter(torch.tensor(0.3), torch.tensor(-1.0))  # fixed_eps._at_most(0.3, float32)
    x0 = next(v for v in torch.linspace(0.01, 0.6, 400)  # a value where x0 + e rounds up past 0.3 in float32
              if float(((v + e).double() - v.double()).float()) > 0.3)
    model = _ValueInBand(float(x0) + 0.2, 0.6).eval()

    def shift(model, x, y, *, norm, eps, **options):  # moves the value by the whole budget
        return (x + eps.view(-1, 1, 1, 1)).clamp(0, 1)

    shift.budget, shift.norms, shift.__name__ = True, ("l2",), "shift"
    x = torch.full((2, 1, 1, 1), float(x0))
    x[1] = 0.9  # shifted to 1 (clipped): past the band, not broken
    y = torch.zeros(2, dtype=torch.long)
    res = run_attack(model, x, y, shift, "l2", {}, budgets=[0.3])
    d = res.frame["distance"].to_numpy()
    assert d[0] <= 0.3 and d[0] == pytest.approx(0.3, rel=1e-6) and np.isinf(d[1])
    assert error_at(d, 0.3) == 0.5
    assert res.frame["adv_pred"].tolist() == [1, 0]  # the model's own verdict on the adversarial

def test_a_fixed_budget_result_is_cross_checked_at_its_budgets_only():
    """A fixed-budget attack's size is that of the adversarial found at the smallest breaking budget, not a
    minimal distance: a single-step attack with smaller distances is no violation unless it breaks an image at
    a smaller budget."""
    from robust_cli.reporting.tables import _checks_at_budgets

    fgsm = np.array([0.05, 0.12, 0.25, np.inf])
    same_budgets = {"fgsm": fgsm, "pgd": np.array([0.09, 0.2, 0.3, np.inf])}  # larger sizes, same budgets
    out = _checks_at_budgets(same_budgets, "pgd", [0.1, 0.2, 0.3], "linf")
    assert out["pgd"]["at_least_single_step"]["ok"] is True
    assert checks_mod.cross_checks(same_budgets, "linf")["pgd"]["at_least_single_step"]["ok"] is False
    weaker = {"fgsm": fgsm, "pgd": np.array([0.09, 0.2, np.inf, np.inf])}  # fgsm breaks image 2 at 0.3
    out = _checks_at_budgets(weaker, "pgd", [0.1, 0.2, 0.3], "linf")
    assert out["pgd"]["at_least_single_step"]["violation_fraction"] == pytest.approx(1 / 4)
    assert set(_checks_at_budgets(weaker, "fgsm", [0.1], "linf")) <= {"fgsm"}  # only its own checks


def test_a_search_coarser_than_the_threshold_gap_fails_a_named_check(fake_run, caplog):
    """The eps search's achieved resolution against the thresholds: a tolerance wider than the gap between two
    thresholds fails ``resolution_valid`` (in summary.json's checks and summary.csv's checks_failed, and as a
    warning); the default 1% tolerance passes it."""
    from robust_cli.eval_app import evaluate

    run, model, x, y = fake_run
    close = {"l2": [0.1, 0.105, 0.3]}
    evaluate(_cfg(run, ["linear_budget"], "l2", lipschitz=False, thresholds=close))
    s = json.loads((run / "eval" / "linear_budget-l2" / "summary.json").read_text())
    assert s["checks"]["resolution_valid"] == {"ok": True, "coarser_than_gap": 0}
    assert s["search"]["resolution_max"] <= 0.01 * pd.read_csv(
        run / "eval" / "linear_budget-l2" / "per_sample.csv")["distance"].max() * (1 + 1e-4)
    with caplog.at_level("WARNING", logger="robust_cli.eval"):
        evaluate(_cfg(run, ["linear_budget"], "l2", lipschitz=False, thresholds=close, eps_tol=0.05, force=True))
    s = json.loads((run / "eval" / "linear_budget-l2" / "summary.json").read_text())
    assert s["search"]["resolution_max"] > 0.005  # the gap between 0.1 and 0.105
    assert s["checks"]["resolution_valid"]["ok"] is False and s["checks"]["resolution_valid"]["coarser_than_gap"] > 0
    assert "resolution_valid" in pd.read_csv(run / "eval" / "summary.csv")["checks_failed"].iloc[0]
    assert any("more coarsely than the smallest gap" in r.getMessage() for r in caplog.records)
