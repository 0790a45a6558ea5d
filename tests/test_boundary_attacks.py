"""FAB, FAB-T, EAD, DeepFool's per-step clip and the high-confidence attack on the exact linear reference.

On ``f(x) = W x + b`` (linear_reference.py) the box-constrained minimal distance is known: a minimal-norm
attack must return misclassified points in [0,1] whose norm is never below it and close above it.
"""

from __future__ import annotations

import re

import pytest
import torch
from linear_reference import make_problem, minimal_distance

from robust_cli.attacks.deepfool import deepfool
from robust_cli.attacks.ead import ead
from robust_cli.attacks.fab import fab, fab_t, hyperplane_step, nearest_hyperplane
from robust_cli.attacks.geometry import batch_norm
from robust_cli.attacks.high_confidence import high_confidence, high_confidence_steps, nearest_boundary_class

torch.set_num_threads(1)
EAD_FAST = {"steps": 200, "lr": 0.001}  # the small step converges on the linear model (see test below)


def _ratio(model, x, y, adv, norm):
    with torch.no_grad():
        assert (model(adv).argmax(1) != y).all()
    assert adv.min() >= 0 and adv.max() <= 1
    return batch_norm(adv - x, norm).double() / minimal_distance(model, x, y, norm)


@pytest.mark.parametrize("num_classes", [3, 10])
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("attack", [fab, fab_t], ids=["fab", "fab_t"])
def test_fab_within_5_percent_of_the_optimum(attack, norm, num_classes):
    model, x, y = make_problem(n=12, num_classes=num_classes)
    r = _ratio(model, x, y, attack(model, x, y, norm=norm, steps=20), norm)
    assert (r >= 1 - 1e-5).all() and (r <= 1.05).all(), r


def test_hyperplane_step_is_the_exact_box_projection():
    """l2 and linf against the linear reference's KKT bisection; l1 against its knapsack."""
    model, x, y = make_problem(n=8, num_classes=2)
    w = (model.fc.weight[1 - y] - model.fc.weight[y]).detach()
    logits = model(x).detach()
    gap = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, (1 - y)[:, None]).squeeze(1)
    for norm in ("l2", "linf", "l1"):
        d = hyperplane_step(x.flatten(1), w, gap, norm)
        assert torch.allclose((w * d).sum(1), gap, atol=1e-4)
        assert ((x.flatten(1) + d) >= -1e-6).all() and ((x.flatten(1) + d) <= 1 + 1e-6).all()
        assert torch.allclose(batch_norm(d, norm).double(), minimal_distance(model, x, y, norm), rtol=1e-4)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("max_step", [None, 0.5, 0.1])
def test_deepfool_with_clip_within_5_percent(norm, max_step):
    model, x, y = make_problem(n=12, num_classes=10)
    r = _ratio(model, x, y, deepfool(model, x, y, norm=norm, max_step=max_step, steps=200), norm)
    assert (r >= 1 - 1e-5).all() and (r <= 1.05).all(), r


def test_deepfool_default_is_bitwise_unchanged_when_the_clip_is_off():
    model, x, y = make_problem(n=12, num_classes=10)
    for norm in ("l2", "linf"):
        assert torch.equal(deepfool(model, x, y, norm=norm), deepfool(model, x, y, norm=norm, max_step=None))
    clipped = deepfool(model, x, y, norm="l2", max_step=1e-3, steps=3)
    assert not torch.equal(clipped, deepfool(model, x, y, norm="l2", steps=3))


def test_ead_never_below_and_mostly_at_the_l1_optimum():
    """EAD's elastic-net objective is not the l1 objective: typically at the optimum, at worst ~1.4x."""
    model, x, y = make_problem(n=8, num_classes=3)
    r = _ratio(model, x, y, ead(model, x, y, **EAD_FAST), "l1")
    assert (r >= 1 - 1e-5).all() and r.median() <= 1.05 and r.max() <= 1.5, r


def test_targeted_variants_reach_the_target():
    model, x, y = make_problem(n=8, num_classes=4)
    target = (y + 1) % 4
    for adv in (fab(model, x, target, norm="l2", targeted=True, steps=30),
                fab(model, x, target, norm="linf", targeted=True, steps=30),
                ead(model, x, target, targeted=True, steps=100, search_steps=6, const_init=1.0),
                high_confidence(model, x, target, targeted=True, steps=20, confidence=0.6)):
        with torch.no_grad():
            assert (model(adv).argmax(1) == target).all()
        assert adv.min() >= 0 and adv.max() <= 1


def test_confident_over_scaled_model_does_not_defeat_them():
    """Logits x1000 (softmax saturated, margins in the hundreds): the boundaries, and the results, stay."""
    model, x, y = make_problem(n=8, num_classes=3)
    with torch.no_grad():
        model.fc.weight.mul_(1000.0)
        model.fc.bias.mul_(1000.0)
    for attack, norm, opts, bound in ((fab, "l2", {"steps": 20}, 1.05), (fab_t, "linf", {"steps": 20}, 1.05),
                                      (deepfool, "l2", {"max_step": 0.5}, 1.05),
                                      (ead, "l1", {**EAD_FAST, "const_init": 1e-6}, 1.5)):
        r = _ratio(model, x, y, attack(model, x, y, norm=norm, **opts), norm)
        assert (r >= 1 - 1e-5).all() and (r <= bound).all(), (attack.__name__, r)
    adv = high_confidence(model, x, y, steps=20, confidence=0.9)
    with torch.no_grad():
        assert (model(adv).argmax(1) != y).all()


@pytest.mark.parametrize("training", [True, False])
def test_mode_and_parameter_grads_untouched(training):
    model, x, y = make_problem(n=4, num_classes=3)
    model.train(training)
    sentinel = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, s in zip(model.parameters(), sentinel):
        p.grad = s.clone()
    for attack, norm, opts in ((fab, "l1", {"steps": 3, "restarts": 2}), (fab_t, "l2", {"steps": 3}),
                               (ead, "l1", {"steps": 3, "search_steps": 2}), (high_confidence, "l2", {}),
                               (deepfool, "l2", {"max_step": 0.1})):
        with torch.no_grad():
            adv = attack(model, x, y, norm=norm, **opts)
        assert model.training is training and not adv.requires_grad
        assert all(torch.equal(p.grad, s) for p, s in zip(model.parameters(), sentinel))
        assert all(p.requires_grad for p in model.parameters())


def test_high_confidence_reaches_the_confidence_and_picks_the_nearest_boundary():
    model, x, y = make_problem(n=12, num_classes=5)
    target = nearest_boundary_class(model, x, y)
    # the nearest unconstrained linear boundary, computed here in closed form
    w = model.fc.weight.detach()
    logits = model(x).detach()
    dist = (logits.gather(1, y[:, None]) - logits) / (w[None] - w[y][:, None]).norm(dim=2)
    assert torch.equal(target, dist.scatter(1, y[:, None], float("inf")).argmin(1))
    for c in (0.5, 0.9, 0.99):
        x_hat = high_confidence_steps(model, x, target, c, steps=20)
        p = torch.softmax(model(x_hat), 1).gather(1, target[:, None]).squeeze(1)
        assert (p >= c).all() and x_hat.min() >= 0 and x_hat.max() <= 1, p
    per_sample = torch.linspace(0.5, 0.95, 12)
    x_hat = high_confidence_steps(model, x, target, per_sample, steps=20)
    assert (torch.softmax(model(x_hat), 1).gather(1, target[:, None]).squeeze(1) >= per_sample).all()


def test_high_confidence_core_is_differentiable_when_asked():
    """``create_graph=True``: the output carries a graph reaching the parameters (the critic's use)."""
    model, x, y = make_problem(n=4, num_classes=3)
    target = nearest_boundary_class(model, x, y)
    x_hat = high_confidence_steps(model, x, target, 0.9, steps=3, create_graph=True)
    (g,) = torch.autograd.grad(x_hat.sum(), model.fc.weight)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert not high_confidence_steps(model, x, target, 0.9, steps=3).requires_grad


@pytest.mark.parametrize("override", ["attack.fab.steps=0", "attack.fab.alpha_max=2.0", "attack.fab_t.eta=0.5",
                                      "attack.ead.decision=l3", "attack.ead.search_steps=0",
                                      "attack.high_confidence.confidence=1.5", "attack.deepfool.max_step=-1"])
def test_bad_options_fail_at_compose_time(override, hydra_compose):
    from robust_cli.config import check_config
    from robust_cli.errors import UserError

    cfg = hydra_compose(config_name="eval", overrides=["run=x", f"attack={override.split('.')[1]}", override])
    with pytest.raises(UserError, match=re.escape(override.split("=")[0])):
        check_config(cfg)


def test_a_bad_option_is_one_line_from_the_command_line(tmp_path):
    from cli_helpers import robust

    res = robust("eval", f"run={tmp_path}", "attack=fab", "attack.fab.beta=1.5", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == ["robust: error: attack.fab.beta=1.5: must be >= 0 and <= 1"]


@pytest.mark.slow  # ~35 s; every attack of this file has fast linear-model tests
def test_eval_fab_and_ead_end_to_end(tmp_path):
    """``robust eval attack=[fab,ead]`` on a one-epoch quickstart run: files written, distances recomputable."""
    import json

    from cli_helpers import robust

    res = robust("train", "experiment=quickstart", "epochs=1", f"out_dir={tmp_path}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = [p.parent for p in (tmp_path / "train").rglob("model.pt")]
    res = robust("eval", f"run={run}", "attack=[fab,ead]", "norm=[l2,l1]", "n_examples=8",
                 "attack.fab.steps=10", "attack.ead.steps=20", "attack.ead.search_steps=3", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    done = sorted(p.name for p in (run / "eval").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert done == ["ead-l1", "fab-l1", "fab-l2"]
    for name in done:
        summary = json.loads((run / "eval" / name / "summary.json").read_text())
        assert summary, name


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fab_class_choice_by_bounds_equals_projecting_onto_every_hyperplane(norm):
    """Eq. 7 inside the box with Hölder-bound pruning picks the class (and step) that the exact projection onto
    all ``m`` hyperplanes picks, including hyperplanes the box cannot reach and binary (box-face) iterates."""
    gen = torch.Generator().manual_seed(1)
    b, m, d = 64, 9, 49
    for trial in range(12):
        z = torch.rand(b, d, generator=gen)
        if trial % 3 == 0:
            z = (z > 0.5).float()  # every value on a box face: many hyperplanes unreachable
        w = torch.randn(b, m, d, generator=gen) * torch.rand(b, m, 1, generator=gen) * 3
        g = torch.randn(b, m, generator=gen) * (3 if trial % 2 else 0.3)
        every = hyperplane_step(z.repeat_interleave(m, 0), w.reshape(b * m, d), -g.reshape(-1), norm).view(b, m, d)
        norms = batch_norm(every.reshape(b * m, d), norm).view(b, m)
        pick, step = nearest_hyperplane(z, w, g, norm)
        assert torch.equal(pick, norms.argmin(1))
        assert torch.equal(step, every[torch.arange(b), pick])


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fab_eq7_picks_the_least_hoelder_ratio_and_stays_within_5_percent(norm):
    """``nearest="eq7"``: the class of least ``|g_l| / ||w_l||_q`` (eq. 7 as printed, the box ignored), its
    exact box projection as the step; on the linear model FAB with that choice still ends within 1.05x of the
    optimum (never below it), and in l1, where the box binds, the two choices part."""
    gen = torch.Generator().manual_seed(2)
    b, m, d = 32, 9, 49
    z = torch.rand(b, d, generator=gen)
    w = torch.randn(b, m, d, generator=gen) * torch.rand(b, m, 1, generator=gen) * 3
    g = torch.randn(b, m, generator=gen)
    q = {"l2": 2, "linf": 1, "l1": float("inf")}[norm]
    pick, step = nearest_hyperplane(z, w, g, norm, "eq7")
    assert torch.equal(pick, (g.double().abs() / torch.linalg.vector_norm(w.double(), ord=q, dim=2)).argmin(1))
    rows = torch.arange(b)
    assert torch.equal(step, hyperplane_step(z, w[rows, pick], -g[rows, pick], norm))
    model, x, y = make_problem(n=12, num_classes=10)
    r = _ratio(model, x, y, fab(model, x, y, norm=norm, steps=20, nearest="eq7"), norm)
    assert (r >= 1 - 1e-5).all() and (r <= 1.05).all(), r
