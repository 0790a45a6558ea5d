"""APGD, APGD-T, Square and the AutoAttack cascade against exact answers; fixed-eps evaluation; model checks.

The linear reference (tests/linear_reference.py) gives every image's exact minimal adversarial size, box
included: a budget attack must succeed on every image at an eps just above it and can succeed on none below.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from linear_reference import make_problem, minimal_distance
from robust_cli.attacks.geometry import batch_norm
from robust_cli.attacks.losses import is_adversarial


def _success(model, x, y, x_adv, eps, norm) -> torch.Tensor:
    with torch.no_grad():
        adv = is_adversarial(model(x_adv), y)
    return adv & (batch_norm(x_adv - x, norm) <= eps)


@pytest.mark.parametrize("norm,above", [("linf", 1.001), ("l2", 1.001), ("l1", 1.05)])
def test_apgd_ce_finds_the_exact_boundary_of_a_binary_linear_model(norm, above):
    """Two classes: CE is a monotone function of the margin, so its maximiser over ball ∩ box is the optimum."""
    from robust_cli.attacks.apgd import apgd

    model, x, y = make_problem(n=16, in_shape=(3, 4, 4), num_classes=2, seed=3)
    opt = minimal_distance(model, x, y, norm).float()
    assert torch.isfinite(opt).all()
    for factor, expect in ((above, True), (0.999, False)):
        eps = opt * factor
        ok = _success(model, x, y, apgd(model, x, y, norm=norm, eps=eps, steps=100), eps, norm)
        assert bool(ok.all()) if expect else not bool(ok.any()), f"{norm} x{factor}: {ok.float().mean():.2f}"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_t_finds_the_exact_boundary_of_a_multiclass_linear_model(norm):
    """Five classes: the nearest class's half-space is one target's DLR-T maximiser; APGD-T tries them all."""
    from robust_cli.attacks.apgd import apgd_t

    model, x, y = make_problem(n=16, in_shape=(3, 4, 4), num_classes=5, seed=3)
    opt = minimal_distance(model, x, y, norm).float()
    for factor, expect in ((1.01, True), (0.99, False)):
        eps = opt * factor
        ok = _success(model, x, y, apgd_t(model, x, y, norm=norm, eps=eps, steps=50), eps, norm)
        assert bool(ok.all()) if expect else not bool(ok.any())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_dlr_is_never_below_the_optimum_and_apgd_t_covers_what_it_misses(norm):
    """Untargeted DLR (eq. 6) ascends towards the runner-up class, which need not be the class of the nearest
    boundary, so APGD-DLR alone is not exact on a multi-class linear model (the reason AutoAttack adds
    APGD-T): here it breaks >= 85% of the images at 1.01x their optimum (torchattacks 3.5.1's APGD-DLR, same
    problem and steps: 0-38%), none below it, and APGD-T breaks the rest."""
    from robust_cli.attacks.apgd import apgd, apgd_t

    model, x, y = make_problem(n=16, in_shape=(3, 4, 4), num_classes=5, seed=3)
    opt = minimal_distance(model, x, y, norm).float()
    below = _success(model, x, y, apgd(model, x, y, norm=norm, eps=opt * 0.99, steps=100, loss="dlr"),
                     opt * 0.99, norm)
    assert not bool(below.any())
    eps = opt * 1.01
    dlr = _success(model, x, y, apgd(model, x, y, norm=norm, eps=eps, steps=100, loss="dlr"), eps, norm)
    assert dlr.float().mean() >= 0.85
    rest = ~dlr
    targeted = _success(model, x[rest], y[rest], apgd_t(model, x[rest], y[rest], norm=norm, eps=eps[rest],
                                                        steps=50), eps[rest], norm)
    assert bool(targeted.all())


def test_square_linf_finds_the_exact_boundary_and_l2_stays_in_budget():
    """linf: the optimum is a vertex of the ball (box aside), which Square's ``±eps`` windows reach by random
    search with 1000 queries. l2 (a random-weight model has no spatial structure to exploit, so no exactness
    is claimed): within budget, never below the optimum, and the margin goes down."""
    from robust_cli.attacks.losses import margin
    from robust_cli.attacks.square import square

    model, x, y = make_problem(n=16, in_shape=(3, 4, 4), num_classes=2, seed=3)
    opt = minimal_distance(model, x, y, "linf").float()
    assert bool(_success(model, x, y, square(model, x, y, norm="linf", eps=opt * 1.01, n_queries=1000),
                         opt * 1.01, "linf").all())
    assert not bool(_success(model, x, y, square(model, x, y, norm="linf", eps=opt * 0.99, n_queries=300),
                             opt * 0.99, "linf").any())
    opt2 = minimal_distance(model, x, y, "l2").float()
    x_adv = square(model, x, y, norm="l2", eps=opt2 * 0.99, n_queries=200)
    assert bool((batch_norm(x_adv - x, "l2") <= opt2 * 0.99).all())
    assert not bool(_success(model, x, y, x_adv, opt2 * 0.99, "l2").any())
    with torch.no_grad():
        assert bool((margin(model(x_adv), y) < margin(model(x), y)).all())


def test_square_l2_breaks_a_linear_model_at_twice_its_optimum_where_the_reference_needs_three():
    """Exactness is out of reach for l2 random search on a random-weight model (no spatial structure):
    scripts/bench_square_linear.py measures torchattacks' Square l2 breaking none of these 16 images at
    2x the optimum (all at 3x) with 1000 queries, ours 14/16 at 2x. Guard that strength, re-verified."""
    from robust_cli.attacks.square import square

    model, x, y = make_problem(n=16, in_shape=(3, 10, 10), num_classes=2, seed=3)
    eps = minimal_distance(model, x, y, "l2").float() * 2.0
    ok = _success(model, x, y, square(model, x, y, norm="l2", eps=eps, n_queries=1000), eps * (1 + 1e-5), "l2")
    assert int(ok.sum()) >= 12, int(ok.sum())


def test_the_cascade_never_attacks_a_broken_image_again():
    """Per-image eps: 1.05 x the optimum on half the images (APGD breaks exactly those), 0.9 x on the rest
    (nothing can). Each later member must receive exactly the unbroken half, and each image is attacked by
    the first member once."""
    from robust_cli.attacks.apgd import apgd
    from robust_cli.attacks.autoattack import cascade

    model, x, y = make_problem(n=12, in_shape=(3, 4, 4), num_classes=2, seed=3)
    opt = minimal_distance(model, x, y, "linf").float()
    breakable = torch.arange(12) % 2 == 0
    eps = torch.where(breakable, opt * 1.05, opt * 0.9)
    received: list[torch.Tensor] = []

    def spy(model, xs, ys, *, norm, eps, **options):
        received.append(xs.clone())
        return apgd(model, xs, ys, norm=norm, eps=eps, steps=30)

    spy.budget, spy.norms = True, ("linf",)
    x_adv, robust = cascade(model, x, y, norm="linf", eps=eps, members=[("a", spy, {}), ("b", spy, {}),
                                                                         ("c", spy, {})])
    assert torch.equal(robust, ~breakable)
    assert len(received) == 3 and torch.equal(received[0], x)
    for later in received[1:]:
        assert torch.equal(later, x[~breakable])  # only the images no member broke
    assert bool(_success(model, x, y, x_adv, eps, "linf")[breakable].all())


def test_autoattack_is_exact_on_a_linear_model_and_stops_when_all_are_broken():
    from robust_cli.attacks.autoattack import autoattack, ensemble

    model, x, y = make_problem(n=8, in_shape=(3, 4, 4), num_classes=5, seed=3)
    opt = minimal_distance(model, x, y, "linf").float()
    for factor, expect in ((1.01, True), (0.99, False)):
        eps = opt * factor
        out = autoattack(model, x, y, norm="linf", eps=eps, steps=20, n_queries=100)
        ok = _success(model, x, y, out, eps, "linf")
        assert bool(ok.all()) if expect else not bool(ok.any())
    names = [m[0] for m in ensemble("standard", "linf")]
    assert names == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert [m[0] for m in ensemble("plus", "l2")] == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert [m[2]["eot"] for m in ensemble("rand", "linf")] == [20, 20]
    assert "square" not in [m[0] for m in ensemble("standard", "l1")]


def test_fixed_eps_equals_the_distance_curve_read_at_the_same_eps():
    """Same attack (APGD, exact on this model): robust accuracy at fixed eps = 1 - err(eps) of the distance
    mode's curve, at eps chosen between the per-image optima farther than the search resolution."""
    from robust_cli.attacks.apgd import apgd
    from robust_cli.evaluation.curves import error_at
    from robust_cli.evaluation.runner import run_attack

    model, x, y = make_problem(n=16, in_shape=(3, 4, 4), num_classes=2, seed=3)
    opt = np.sort(minimal_distance(model, x, y, "linf").numpy())
    gaps = np.diff(opt)
    picks = np.argsort(gaps)[-3:]  # the three widest gaps between consecutive optima
    budgets = sorted(float((opt[i] + opt[i + 1]) / 2) for i in picks)
    params = {"steps": 50}
    dist = run_attack(model, x, y, apgd, "linf", params, search_steps=14)
    assert dist.resolution < gaps[picks].min() / 2
    fixed = run_attack(model, x, y, apgd, "linf", params, budgets=budgets)
    d_dist = dist.frame["distance"].to_numpy()
    d_fixed = fixed.frame["distance"].to_numpy()
    for eps in budgets:
        acc_dist, acc_fixed = 1 - error_at(d_dist, eps), 1 - error_at(d_fixed, eps)
        assert acc_fixed == acc_dist
        assert acc_fixed == float(np.mean(opt > eps))  # and both are exact
    assert fixed.resolution == 0.0


def test_fixed_eps_attacks_only_the_images_a_smaller_budget_left():
    from robust_cli.evaluation.fixed_eps import attack_at_budgets
    from robust_cli.attacks.apgd import apgd

    model, x, y = make_problem(n=10, in_shape=(3, 4, 4), num_classes=2, seed=3)
    opt = minimal_distance(model, x, y, "linf").float()
    sizes = []

    def spy(model, xs, ys, *, norm, eps, **options):
        sizes.append(len(xs))
        return apgd(model, xs, ys, norm=norm, eps=eps, steps=30)

    srt = opt.sort().values
    lo, hi = float(srt[4] + srt[5]) / 2, float(opt.max()) * 1.01  # lo between two optima: 5 below it
    found = attack_at_budgets(spy, model, x, y, "linf", [hi, lo])
    below_lo = int((opt <= lo).sum())
    assert sizes == [10, 10 - below_lo]  # ascending: the small budget first, then only what it left
    assert bool(torch.isfinite(found.eps).all())
    from robust_cli.evaluation.fixed_eps import _at_most

    assert float(_at_most(0.1, torch.float32)) <= 0.1


class _DropoutModel(nn.Module):
    """A model that keeps dropout on in eval mode (a randomised defense)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(nn.functional.dropout(x, 0.3, training=True))


class _SoftmaxModel(nn.Module):
    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(x).softmax(1)


def test_model_checks_flag_randomised_and_softmax_models():
    from robust_cli.evaluation.checks import failed_checks, model_output_checks

    model, x, _ = make_problem(n=8, in_shape=(3, 4, 4), num_classes=5, seed=3)
    plain = model_output_checks(model, x)
    assert failed_checks(plain) == []
    random = model_output_checks(_DropoutModel(model), x)
    assert failed_checks(random) == ["deterministic_model"]
    assert random["deterministic_model"]["disagreeing_fraction"] > 0
    assert failed_checks(model_output_checks(_SoftmaxModel(model), x)) == ["logit_output"]


def test_apgd_weaker_than_fgsm_is_flagged():
    from robust_cli.evaluation.checks import cross_checks

    fgsm = np.array([0.1, 0.2, np.inf])
    out = cross_checks({"apgd": np.array([0.1, 0.3, np.inf]), "fgsm": fgsm}, "linf")
    assert out["apgd"]["at_least_single_step"]["ok"] is False
    assert cross_checks({"autoattack": np.array([0.05, 0.2, 0.3]), "fgsm": fgsm}, "linf")["autoattack"][
        "at_least_single_step"]["ok"] is True


@pytest.mark.parametrize("overrides,message", [
    (["mode=fixd"], "mode=fixd: expected one of distance, fixed"),
    (["eps.linf=[0.1,0.2]"], "eps.linf=[0.1, 0.2]: a list of eps needs mode=fixed"),
    (["mode=fixed", "eps.linf=[0.1,-1]"], "eps.linf=[0.1, -1]: must be >= 0"),
    (["attack=autoattack", "attack.autoattack.version=fast"],
     "attack.autoattack.version='fast': expected one of standard, plus, rand"),
    (["attack=apgd", "attack.apgd.loss=margin"], "attack.apgd.loss='margin': expected one of ce, dlr"),
    (["attack=apgd", "attack.apgd.momentum=1.5"], "attack.apgd.momentum=1.5: must be > 0 and < 1"),
    (["attack=square", "attack.square.n_queries=0"], "attack.square.n_queries=0: must be >= 1"),
])
def test_bad_options_fail_at_compose_time(overrides, message, hydra_compose):
    from robust_cli.config import check_config
    from robust_cli.errors import UserError

    cfg = hydra_compose(config_name="eval", overrides=["run=x", *overrides])
    with pytest.raises(UserError, match=re.escape(message)):
        check_config(cfg)


@pytest.mark.slow  # ~10 s (a subprocess); the same check_config path is tested above in-process
def test_a_bad_mode_is_one_line_from_the_command_line(tmp_path):
    from cli_helpers import robust

    res = robust("eval", f"run={tmp_path}", "attack=apgd", "mode=search", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == ["robust: error: mode=search: expected one of distance, fixed"]
    assert list(tmp_path.iterdir()) == []


def test_square_stays_within_its_query_budget_and_takes_no_gradient():
    from robust_cli.attacks.square import square
    from robust_cli.evaluation.runner import CountingModel

    model, x, y = make_problem(n=6, in_shape=(3, 4, 4), num_classes=3, seed=1)
    opt = minimal_distance(model, x, y, "linf").float()
    for norm in ("linf", "l2"):
        counted = CountingModel(model)
        square(counted, x, y, norm=norm, eps=opt * 0.9, n_queries=40)  # below the optimum: all 40 queries run
        assert counted.forward_samples == 40 * x.shape[0] and counted.backward_samples == 0


@pytest.mark.parametrize("name", ["apgd", "apgd_t", "square", "autoattack"])
def test_the_new_attacks_keep_the_attack_contract(name):
    """``model.training`` untouched, no parameter gradient, output in [0,1] within eps (CONTRIBUTING.md)."""
    from robust_cli.attacks import list_attacks

    fn = list_attacks()[name]
    model, x, y = make_problem(n=5, in_shape=(3, 4, 4), num_classes=5, seed=2)
    model.train()
    eps = minimal_distance(model, x, y, "l2").float() * 1.2
    small = {"square": {"n_queries": 20}, "autoattack": {"steps": 3, "n_queries": 20}}.get(name, {"steps": 5})
    out = fn(model, x, y, norm="l2", eps=eps, **small)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert out.min() >= 0 and out.max() <= 1 and bool((batch_norm(out - x, "l2") <= eps).all())


def test_apgd_checkpoints_are_the_papers_at_100_iterations_and_autoattacks_at_10():
    from robust_cli.attacks.apgd_schedule import checkpoints

    # Croce & Hein 2020 §3.1: p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (w_j = p_j N at N = 100)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]  # whole iterations, as the released code counts
    assert checkpoints(1000)[:3] == [220, 410, 570]
