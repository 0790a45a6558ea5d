"""Targeted evaluation: the attack gets a target per image, success is the model predicting it (re-checked by
the evaluation), and the summary reports success and median distance per target."""

from __future__ import annotations

import math

import pytest
import torch

from linear_reference import make_problem, minimal_distance
from robust_cli.attacks.contract import register_attack
from robust_cli.attacks.geometry import enforce_budget
from robust_cli.attacks.pgd import pgd
from robust_cli.evaluation.runner import choose_targets, run_attack
from robust_cli.evaluation.summary import per_target


@register_attack(norms=("linf",), budget=True)
def toward(model, x, y, *, norm, eps, targeted=False):
    """linf step ``eps * sign(w_t - w_s)`` from the predicted class ``s`` to the target ``t = y`` (targeted)
    or to the other class (untargeted, 2 classes): exact for a 2-class linear model inside the box."""
    w = getattr(model, "model", model).fc.weight  # through the runner's CountingModel
    src = model(x).argmax(1)
    dst = y if targeted else 1 - y
    a = (w[dst] - w[src]).view_as(x)
    e = torch.as_tensor(eps, dtype=x.dtype).expand(x.shape[0]).view(-1, 1, 1, 1)
    return enforce_budget(x + e * a.sign(), x, e.flatten(), norm).clamp(0, 1)


def test_choose_targets_never_the_label_and_repeatable():
    y = torch.arange(300) % 10
    t = choose_targets(y, 10, "random", seed=3)
    assert not (t == y).any() and torch.equal(t, choose_targets(y, 10, "random", seed=3))
    assert set(t.tolist()) == set(range(10))
    assert torch.equal(choose_targets(y, 10, "next", 0), (y + 1) % 10)


def test_two_classes_targeted_distance_is_the_exact_one():
    model, x, y = make_problem(n=20, in_shape=(1, 4, 4), num_classes=2, seed=1)
    targets = choose_targets(y, 2, "next", 0)
    res = run_attack(model, x, y, toward, "linf", {"targeted": True}, search_steps=30, targets=targets)
    exact = minimal_distance(model, x, y, "linf").double().numpy()
    got = res.frame["distance"].to_numpy()
    finite = exact < math.inf
    assert finite.sum() >= 10
    assert (got[finite] >= exact[finite] - 1e-6).all()  # never below the exact minimum
    assert (got[finite] <= exact[finite] + 2 * res.resolution + 1e-6).all()  # and within the search's step
    assert (res.frame["target"] == 1 - res.frame["label"]).all()


def test_three_classes_pgd_success_is_the_target_per_the_model():
    model, x, y = make_problem(n=30, in_shape=(1, 4, 4), num_classes=3, seed=2)
    targets = choose_targets(y, 3, "random", 0)
    res = run_attack(model, x, y, pgd, "linf", {"targeted": True, "steps": 20}, search_steps=12, targets=targets)
    f = res.frame
    hit = f["distance"].between(1e-12, math.inf, inclusive="left") & (f["distance"] < math.inf)
    assert hit.sum() > 0
    assert (f.loc[hit, "adv_pred"] == f.loc[hit, "target"]).all()  # the model's verdict: the target
    # reaching one given class is never easier than leaving the true one: the exact untargeted minimum bounds it
    exact = minimal_distance(model, x, y, "linf").double().numpy()
    assert (f["distance"].to_numpy() >= exact - 1e-6).all()
    stats = per_target(f)
    assert sum(s["n"] for s in stats.values()) == int((f["label"] == f["clean_pred"]).sum())
    for t, s in stats.items():
        mine = f[(f["target"] == int(t)) & (f["label"] == f["clean_pred"])]
        assert s["success_rate"] == pytest.approx((mine["distance"] < math.inf).mean())
