"""The adaptive eps search: distances to a stated tolerance per image, on cases with exact answers.

On a two-class linear model the smallest adversarial in each norm is known in closed form
(``tests/linear_reference.py``); a budget attack that takes the exact best step within eps succeeds exactly
above it, so the searched distance must be within the tolerance of it, and never below it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from linear_reference import make_problem, minimal_distance

from robust_cli.attacks.contract import register_attack
from robust_cli.attacks.geometry import batch_norm, enforce_budget
from robust_cli.attacks.pgd import pgd
from robust_cli.evaluation.eps_search import search_distance
from robust_cli.evaluation.runner import CountingModel, run_attack


def _direction(model, y):
    lin = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    w = lin.weight.detach()
    return torch.where(y[:, None] == 0, w[1] - w[0], w[0] - w[1])


@register_attack(norms=("linf", "l2"), budget=True)
def exact_step(model, x, y, *, norm, eps):
    """The best step within eps on a 2-class linear model with no binding box (exact in linf and l2)."""
    a = _direction(model, y).view_as(x)
    e = torch.as_tensor(eps, dtype=x.dtype).expand(x.shape[0]).view(-1, 1, 1, 1)
    step = a.sign() if norm == "linf" else a / a.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    with torch.enable_grad():  # one forward + backward, as a real gradient attack would cost
        xr = x.detach().requires_grad_(True)
        torch.autograd.grad(model(xr).sum(), xr)
    return enforce_budget(x + e * step, x, e.flatten(), norm)


def _problem(seed=0, n=24):
    model, x, y = make_problem(n=n, in_shape=(1, 4, 4), num_classes=2, seed=seed)
    x = 0.5 + (x - 0.5) * 0.2  # towards grey: the box never binds, the exact step is the optimum
    return model, x, y


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("eps_tol", [None, 1e-3])
def test_searched_distance_is_the_exact_one_within_tolerance(norm, eps_tol):
    model, x, y = _problem()
    exact = minimal_distance(model, x, y, norm)
    found = search_distance(exact_step, model, x, y, norm, method="adaptive", steps=20, eps_tol=eps_tol)
    # rtol (1%) is of the bracket's upper end, which lies up to 1% above the exact distance (on an AVX2 CPU one
    # image ended 1.008% above it, within 1% of its upper end)
    tol = 1e-3 if eps_tol else 0.01 * exact * 1.01
    d = batch_norm(found.x_adv - x, norm).double()
    assert (model(found.x_adv).argmax(1) != y).all()
    assert (d >= exact * (1 - 1e-5)).all()  # a verified adversarial is never below the optimum
    assert (d <= exact + tol * (1 + 1e-4)).all(), (d - exact).max()
    assert (found.resolution.double() <= tol * (1 + 1e-4)).all()  # the achieved resolution meets the ask


def test_pgd_search_meets_tolerance_at_a_fraction_of_bisection():
    model, x, y = _problem(seed=2)
    exact = minimal_distance(model, x, y, "linf")
    params = {"steps": 20}
    new, old = CountingModel(model), CountingModel(model)
    found = search_distance(pgd, model, x, y, "linf", params, method="adaptive", attack_model=new)
    search_distance(pgd, model, x, y, "linf", params, method="bisection", attack_model=old)
    assert (found.resolution <= 0.01 * found.eps * (1 + 1e-4)).all()
    d = batch_norm(found.x_adv - x, "linf").double()
    assert (d <= exact * 1.01 + 1e-6).all() and (d >= exact * (1 - 1e-5)).all()
    assert new.forward_samples < old.forward_samples / 2, (new.forward_samples, old.forward_samples)


def test_upper_bracket_from_a_minimal_norm_distance_is_used():
    """A tight upper bracket (a minimal-norm attack's distance) is tried first: one round resolves it."""
    model, x, y = _problem(seed=3)
    exact = minimal_distance(model, x, y, "l2").float()
    with_up, without = CountingModel(model), CountingModel(model)
    a = search_distance(exact_step, model, x, y, "l2", method="adaptive", attack_model=with_up, upper=exact * 1.001)
    b = search_distance(exact_step, model, x, y, "l2", method="adaptive", attack_model=without)
    assert with_up.forward_samples < without.forward_samples
    assert torch.allclose(a.eps, b.eps, rtol=0.011)


def test_run_attack_records_resolution_and_tolerance():
    model, x, y = _problem(seed=4, n=12)
    res = run_attack(model, x, y, exact_step, "linf", eps_search="adaptive", rtol=0.02)
    assert res.resolutions.shape == (12,) and (res.resolutions <= res.tolerances * (1 + 1e-4)).all()
    assert (res.tolerances > 0).all()


@pytest.mark.parametrize("value", ["0"])
def test_bad_eps_tol_fails_at_compose_time(value, tmp_path):
    out = subprocess.run([sys.executable, "-m", "robust_cli.cli", "eval", f"run={tmp_path}", "attack=pgd",
                          f"eps_tol={value}"], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert f"eps_tol={value}" in out.stderr and "Traceback" not in out.stderr


def test_pgd_keeps_an_adversarial_x_init_and_never_leaves_the_ball():
    """The warm start is a candidate: a tiny-step PGD that cannot reach the boundary returns it."""
    model, x, y = _problem(seed=5, n=12)
    exact = minimal_distance(model, x, y, "linf").float()
    eps = exact * 1.05
    warm = exact_step(model, x, y, norm="linf", eps=eps)
    assert (model(warm).argmax(1) != y).all()
    cold = pgd(model, x, y, norm="linf", eps=eps, steps=1, step_size=1e-3, single_step=False)
    got = pgd(model, x, y, norm="linf", eps=eps, steps=1, step_size=1e-3, single_step=False, x_init=warm)
    assert (model(cold).argmax(1) == y).all()
    assert (model(got).argmax(1) != y).all()
    assert (batch_norm(got - x, "linf") <= eps * (1 + 1e-6)).all()
