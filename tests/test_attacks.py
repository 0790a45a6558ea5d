"""Attacks against the exact box-constrained minimal perturbations of a linear model (linear_reference.py).

On ``f(x) = W x + b`` the optimum is known in every norm, so: a minimal-norm attack can be held to a ratio
of it, a budget attack must succeed just above it and can never succeed below it (anything else is a bug in
the projection or in the bookkeeping), and the searches along a straight path have closed-form crossings.
"""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest
import torch
from linear_reference import make_problem, minimal_distance

from robust_cli.attacks import list_attacks
from robust_cli.attacks.deepfool import deepfool
from robust_cli.attacks.fgm import fgm
from robust_cli.attacks.fgsm import fgsm
from robust_cli.attacks.geometry import batch_norm, project, project_ball
from robust_cli.attacks.ifgsm import bim, ifgsm
from robust_cli.attacks.losses import margin
from robust_cli.attacks.noise import noise
from robust_cli.attacks.pgd import pgd
from robust_cli.attacks.stability import stability
from robust_cli.evaluation.eps_search import search_eps

BATCHES = [1, 24]


# the 0.1% slack of the tests below needs converged iterates: more steps than the defaults
PGD = {"steps": 50, "step_size": 0.2}


def problem(n: int, num_classes: int = 3, seed: int = 0, squeeze: float | None = None):
    """``make_problem`` cut to ``n`` images; ``squeeze`` pulls them towards grey so the box does not bind."""
    model, x, y = make_problem(n=24, num_classes=num_classes, seed=seed)
    if squeeze is not None:
        x = 0.5 + squeeze * (x - 0.5)
        with torch.no_grad():
            y = model(x).argmax(1)
    return model, x[:n], y[:n]


def fooled(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def gaps_and_directions(model, x, y):
    """``(gap [B,K], a [B,K,d])``: ``f_y - f_j`` and ``w_j - w_y`` in float64 (``x + r`` leaves y iff some
    ``a_j . r >= gap_j``, ``j != y``)."""
    w = model.fc.weight.detach().double()
    logits = x.flatten(1).double() @ w.T + model.fc.bias.detach().double()
    gap = logits.gather(1, y[:, None]) - logits
    return gap, w[None, :, :] - w[y][:, None, :]


def first_crossing_along(model, x, y, direction):
    """Closed form ``s*`` ``[B]``: the smallest ``s >= 0`` with ``x + s * direction`` misclassified (inf: none)."""
    gap, a = gaps_and_directions(model, x, y)
    rate = (a * direction.flatten(1).double()[:, None, :]).sum(-1)  # [B, K]
    s = torch.where(rate > 0, gap / rate, torch.full_like(gap, float("inf")))
    s = s.scatter(1, y[:, None], float("inf"))
    return s.min(1).values


# ------------------------------------------------------------------ minimal-norm attacks


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("num_classes", [3, 10])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_within_5_percent_of_exact_optimum(n, num_classes, norm):
    model, x, y = problem(n, num_classes)
    x_adv = deepfool(model, x, y, norm=norm)
    assert fooled(model, x_adv, y).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    ratio = batch_norm(x_adv - x, norm).double() / minimal_distance(model, x, y, norm)
    assert (ratio >= 1 - 1e-5).all(), ratio.min()  # nothing beats the optimum
    assert (ratio <= 1.05).all(), ratio.max()


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("norm", ["l0", "l1", "l2", "linf"])
def test_noise_is_adversarial_and_never_below_optimum(n, norm):
    model, x, y = problem(n)
    x_adv = noise(model, x, y, norm=norm, restarts=3, seed=0)
    ok = fooled(model, x_adv, y)
    assert ok.float().mean() >= 0.5  # 36 values in [0,1] and 3 classes: random noise does fool most
    assert torch.equal(x_adv[~ok], x[~ok])  # failures hand back the input
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    opt = minimal_distance(model, x, y, norm)
    assert (batch_norm(x_adv - x, norm).double()[ok] >= opt[ok] * (1 - 1e-5)).all()


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_noise_stops_at_the_first_crossing_of_its_ray(norm):
    """Unboxed, the noise path is the ray ``x + t u``: the returned ``r`` must sit just past its crossing."""
    model, x, y = problem(24, squeeze=0.2)
    steps = 8
    x_adv = noise(model, x, y, norm=norm, restarts=2, search_steps=steps, seed=1)
    # only where the ray stayed inside the box (far out, clipping bends the path; the test is about the search)
    ray = fooled(model, x_adv, y) & ((x_adv > 0) & (x_adv < 1)).flatten(1).all(1)
    assert ray.float().mean() >= 0.5
    s = first_crossing_along(model, x, y, x_adv - x)[ray]  # in units of the returned r
    assert (s <= 1 + 1e-4).all() and (s >= 1 / (1 + 2.0**-steps) - 1e-4).all(), s


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("with_reference", [False, True])
def test_stability_first_misclassified_point_towards_nearest_other_label(n, norm, with_reference):
    model, x, y = problem(n)
    if with_reference:
        _, ref_x, _ = make_problem(n=40, seed=5)
        with torch.no_grad():
            ref_y = model(ref_x).argmax(1)
    else:
        ref_x, ref_y = x, y
    grid, steps = 8, 6
    x_adv = stability(model, x, y, norm=norm, reference=(ref_x, ref_y) if with_reference else None,
                      grid=grid, search_steps=steps)
    # brute-force nearest point of another label
    p = 2 if norm == "l2" else float("inf")
    d = (x.flatten(1)[:, None, :] - ref_x.flatten(1)[None, :, :]).norm(p=p, dim=-1)
    d = torch.where(ref_y[None, :] == y[:, None], float("inf"), d)
    has = torch.isfinite(d.min(1).values)
    z = ref_x[d.argmin(1)]
    seg = z - x
    s_star = first_crossing_along(model, x, y, seg)  # closed form on the segment, in units of z - x
    reach = has & (s_star <= 1)
    r = x_adv - x
    s = (r * seg).flatten(1).sum(1) / seg.flatten(1).pow(2).sum(1).clamp_min(1e-30)
    assert torch.allclose(r, s.view(-1, 1, 1, 1) * seg, atol=1e-5)  # on the segment towards z
    assert fooled(model, x_adv, y)[reach].all()
    assert torch.equal(x_adv[~reach], x[~reach])
    tol = 1.0 / (grid * 2**steps)
    assert (s[reach].double() >= s_star[reach] - 1e-5).all()
    assert (s[reach].double() <= s_star[reach] + tol + 1e-5).all()
    if not with_reference and n == 1:
        assert torch.equal(x_adv, x)  # a batch of one holds no other label


# ------------------------------------------------------------------ budget attacks

BUDGET = [  # (attack, norm, kwargs, problem options)
    (fgsm, "linf", {}, {"num_classes": 2}),
    (fgm, "l2", {}, {"num_classes": 2, "squeeze": 0.02}),
    (ifgsm, "linf", {"steps": 20}, {"num_classes": 2}),
    (bim, "l2", {"steps": 20}, {"num_classes": 2}),
    (pgd, "linf", PGD, {"num_classes": 2}),
    (pgd, "l2", PGD, {"num_classes": 2}),
]


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("attack,norm,kwargs,opts", BUDGET, ids=lambda v: getattr(v, "__name__", None))
def test_budget_attacks_succeed_just_above_the_optimum(n, attack, norm, kwargs, opts):
    """Two classes: the loss gradient points along ``w_j - w_y``, so these attacks reach the exact optimum
    (FGM only where the box does not bind: one unprojected step)."""
    model, x, y = problem(n, **opts)
    # 0.1% above the optimum, and at least 2e-5 above it: the squeezed FGM problem has an image 3e-4 from
    # the boundary, where 0.1% moves its float32 logits by ~1e-6, their own rounding (a tie on some CPUs)
    eps = torch.maximum(minimal_distance(model, x, y, norm) * (1 + 1e-3),
                        minimal_distance(model, x, y, norm) + 2e-5).float()
    x_adv = attack(model, x, y, norm=norm, eps=eps, **kwargs)
    assert fooled(model, x_adv, y).all()
    assert (batch_norm(x_adv - x, norm) <= eps * (1 + 1e-6)).all()


@pytest.mark.parametrize("attack,norm,kwargs,opts", BUDGET[:2], ids=["fgsm", "fgm"])
def test_single_step_attacks_see_confident_points(attack, norm, kwargs, opts):
    """The same two-class problem with logits times 1000 (margins in the hundreds, where the float32 CE
    gradient is exactly 0 and its square underflows): same decisions, same optimum, so the single-step
    attacks must still fool every image just above it (they use the scale-free direction)."""
    model, x, y = problem(24, **opts)
    with torch.no_grad():
        model.fc.weight.mul_(1000.0)
        model.fc.bias.mul_(1000.0)
        assert (model(x).argmax(1) == y).all()
    eps = (minimal_distance(model, x, y, norm) * (1 + 1e-3)).float()
    x_adv = attack(model, x, y, norm=norm, eps=eps, **kwargs)
    assert fooled(model, x_adv, y).all()


@pytest.mark.parametrize("attack,norm", [(pgd, "linf"), (pgd, "l2"), (ifgsm, "linf"), (ifgsm, "l2")])
def test_margin_loss_attacks_multiclass_just_above_the_optimum(attack, norm):
    """Three classes: ascending the CW margin reaches the optimum unless the start's runner-up class is not
    the nearest boundary (a local optimum of every gradient attack): (almost) all points."""
    model, x, y = problem(24)
    eps = (minimal_distance(model, x, y, norm) * (1 + 1e-3)).float()
    kw = PGD if attack is pgd else {"steps": 20}
    x_adv = attack(model, x, y, norm=norm, eps=eps, loss="margin", **kw)
    assert fooled(model, x_adv, y).float().mean() >= 0.85


def test_sparse_l1_pgd_reaches_the_knapsack_optimum():
    """One value per step (l1_top below 1/d) is coordinate ascent: it fills the fractional knapsack."""
    model, x, y = problem(24, num_classes=2)
    eps = (minimal_distance(model, x, y, "l1") * 1.05).float()
    x_adv = pgd(model, x, y, norm="l1", eps=eps, steps=100, step_size=0.05, random_start=False, l1_top=0.01)
    assert fooled(model, x_adv, y).float().mean() >= 0.9
    assert (batch_norm(x_adv - x, "l1") <= eps * (1 + 1e-6)).all()


ALL_BUDGET = [(fgsm, "linf"), (fgm, "l2"), (ifgsm, "linf"), (ifgsm, "l2"), (bim, "linf"),
              (pgd, "linf"), (pgd, "l2"), (pgd, "l1")]


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("attack,norm", ALL_BUDGET, ids=lambda v: getattr(v, "__name__", None))
def test_no_false_success_below_the_optimum(n, attack, norm):
    model, x, y = problem(n)
    eps = (minimal_distance(model, x, y, norm) * 0.95).float()
    for loss, kw in (("ce", {}), ("margin", {"steps": 10} if attack in (pgd, ifgsm, bim) else {})):
        x_adv = attack(model, x, y, norm=norm, eps=eps, loss=loss, **kw)
        assert not fooled(model, x_adv, y).any()
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert (batch_norm(x_adv - x, norm) <= eps * (1 + 1e-6)).all()


@pytest.mark.parametrize("attack,norm", [(fgsm, "linf"), (pgd, "linf"), (pgd, "l2"), (ifgsm, "l2")])
def test_targeted_reaches_the_target_exactly_above_the_optimum(attack, norm):
    """Two classes: the target is the only other class, so the optimum is the same as untargeted."""
    model, x, y = problem(24, num_classes=2)
    opt = minimal_distance(model, x, y, norm)
    target = 1 - y
    kw = PGD if attack is pgd else ({"steps": 20} if attack is ifgsm else {})
    hit = attack(model, x, target, norm=norm, eps=(opt * (1 + 1e-3)).float(), targeted=True, **kw)
    miss = attack(model, x, target, norm=norm, eps=(opt * 0.95).float(), targeted=True, **kw)
    with torch.no_grad():
        assert (model(hit).argmax(1) == target).all()
        assert (model(miss).argmax(1) == y).all()


@pytest.mark.parametrize("attack,norm", [(pgd, "linf"), (pgd, "l2"), (ifgsm, "linf"), (bim, "l2")])
@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_iterative_attacks_succeed_wherever_the_single_step_does(attack, norm, loss):
    """Steps far too short to reach the ball's corner (10 x 0.01 eps): only the single-step point can succeed,
    and it is a candidate, so every image FGSM/FGM breaks at an eps is broken by the iterative attack too."""
    model, x, y = problem(24, num_classes=10)
    single = fgsm if norm == "linf" else fgm
    opt = minimal_distance(model, x, y, norm).float()
    broken = 0
    for factor in (1.05, 1.5, 2.5, 4.0):
        eps = opt * factor
        one = fooled(model, single(model, x, y, norm=norm, eps=eps, loss=loss), y)
        many = fooled(model, attack(model, x, y, norm=norm, eps=eps, loss=loss, steps=10, step_size=0.01), y)
        assert (many | ~one).all()
        broken += int(one.sum())
    assert broken >= 10  # the comparison is not empty


def test_cosine_schedule_closed_form_and_madry_reach():
    """``sum_t (1 + cos(pi t / n)) / 2 = (n + 1) / 2`` (the cosines of t = 0..n-1 add up to 1); the default
    PGD steps add up to at least Madry's 2.5 eps, and the constant schedule is ``step_size`` every step."""
    from robust_cli.attacks.pgd import step_schedule

    for n in (1, 2, 7, 50):
        assert sum(step_schedule(0.3, n, "cosine")) == pytest.approx(0.3 * (n + 1) / 2)
        assert step_schedule(0.3, n, "constant") == [0.3] * n
    params = inspect.signature(pgd).parameters
    steps, size = params["steps"].default, params["step_size"].default
    assert sum(step_schedule(size, steps, params["schedule"].default)) >= 2.5
    with pytest.raises(ValueError):
        step_schedule(0.1, 3, "linear")


def test_seeded_random_start_is_reproducible_and_leaves_global_rng_alone():
    model, x, y = problem(8)
    state = torch.get_rng_state()
    a = pgd(model, x, y, norm="l2", eps=0.2, steps=3, seed=3)
    b = pgd(model, x, y, norm="l2", eps=0.2, steps=3, seed=3)
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)


def test_scalar_eps_equals_constant_per_sample_eps():
    model, x, y = problem(24)
    a = ifgsm(model, x, y, norm="l2", eps=0.3)
    b = ifgsm(model, x, y, norm="l2", eps=torch.full((24,), 0.3))
    assert torch.equal(a, b)


def reference_projection(v, x, eps, norm):
    """Float64 bisection on the KKT multiplier (the textbook form the sorted closed form must match)."""
    v, lo, hi = v.flatten(1).double(), -x.flatten(1).double(), (1 - x).flatten(1).double()
    if norm == "l2":
        def at(c):
            return torch.minimum(torch.maximum(v * c[:, None], lo), hi)
        a, b = torch.zeros(len(v), dtype=torch.float64), torch.ones(len(v), dtype=torch.float64)
    else:
        def at(t):
            return torch.minimum(torch.maximum(v.sign() * (v.abs() - t[:, None]).clamp_min(0), lo), hi)
        a, b = torch.zeros(len(v), dtype=torch.float64), v.abs().amax(1)
    p = {"l2": 2, "l1": 1}[norm]
    for _ in range(100):
        mid = (a + b) / 2
        over = at(mid).norm(p=p, dim=1) > eps.double()
        if norm == "l2":  # norm grows with c
            b, a = torch.where(over, mid, b), torch.where(over, a, mid)
        else:  # mass shrinks with tau
            a, b = torch.where(over, mid, a), torch.where(over, b, mid)
    return at(a if norm == "l2" else b).view_as(x)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_projection_matches_kkt_bisection(norm):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 4, 4, generator=g)
    x[:, :, 0] = 0.0  # values on the box faces
    v = torch.randn(64, 1, 4, 4, generator=g) * torch.rand(64, 1, 1, 1, generator=g) * 2
    v[:, :, 1, :2] = 0.0  # zero entries
    eps = torch.rand(64, generator=g) * (1.5 if norm == "l2" else 4)
    got = project(v, x, eps, norm)
    want = reference_projection(v, x, eps, norm)
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert (batch_norm(got, norm) <= eps * (1 + 1e-5) + 1e-6).all()
    assert ((x + got) >= 0).all() and ((x + got) <= 1 + 1e-6).all()


def _duchi_l1(v, eps):
    """The l1-ball projection by sorting (Duchi et al. 2008, Fig. 1), float64, row by row."""
    out = []
    for row, e in zip(v.flatten(1).double(), eps.double()):
        if row.abs().sum() <= e:
            out.append(row)
            continue
        u = row.abs().sort(descending=True).values
        c = u.cumsum(0)
        k = torch.arange(1, len(u) + 1, dtype=torch.float64)
        r = int((u * k > c - e).nonzero().max())
        theta = (c[r] - e) / (r + 1)
        out.append(row.sign() * (row.abs() - theta).clamp_min(0))
    return torch.stack(out).view_as(v)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_ball_projection_without_the_box(norm):
    """``project_ball`` ignores the box: where the box does not bind it is ``project``; where it does, it is
    the textbook ball projection (linf clamp, l2 rescale, l1 by Duchi's sort), outside the box."""
    g = torch.Generator().manual_seed(1)
    v = torch.randn(64, 1, 4, 4, generator=g) * torch.rand(64, 1, 1, 1, generator=g)
    v[:, :, 1, :2] = 0.0
    eps = torch.rand(64, generator=g) * {"linf": 0.5, "l2": 1.5, "l1": 4}[norm]
    got = project_ball(v, eps, norm)
    unbinding = torch.full_like(v, 0.5)
    assert torch.allclose(got, project(v * 0.1, unbinding, eps * 0.1, norm) * 10, atol=1e-5)
    if norm == "l1":
        want = _duchi_l1(v, eps)
    elif norm == "l2":
        want = v.double() * (eps.double() / batch_norm(v, "l2").double()).clamp_max(1)[:, None, None, None]
    else:
        want = torch.maximum(torch.minimum(v, eps[:, None, None, None]), -eps[:, None, None, None])
    assert torch.allclose(got.double(), want.double(), atol=1e-5)
    assert (batch_norm(got, norm) <= eps * (1 + 1e-5) + 1e-6).all()
    inside = batch_norm(v, norm) <= eps
    assert torch.equal(got[inside], v[inside])
    with pytest.raises(ValueError, match="l0"):
        project_ball(v, eps, "l0")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_search_eps_around_pgd_recovers_exact_distance(norm):
    model, x, y = problem(24, num_classes=2)
    opt = minimal_distance(model, x, y, norm)
    hi = float(opt.max()) * 2
    dist, x_adv = search_eps(pgd, model, x, y, norm, 0.0, hi, 12, PGD, return_adv=True)
    ratio = dist.double() / opt
    assert (ratio >= 1 - 1e-5).all(), ratio.min()  # a verified success below the optimum is impossible
    assert (ratio <= 1.05).all(), ratio.max()
    assert fooled(model, x_adv, y).all()
    assert (batch_norm(x_adv - x, norm) <= dist * (1 + 1e-6)).all()


def test_search_eps_reports_zero_for_misclassified_and_inf_for_failures():
    model, x, y = problem(6, num_classes=2)
    wrong = (y + 1) % 2
    wrong[3:] = y[3:]
    dist = search_eps(fgsm, model, x, wrong, "linf", 0.0, 1e-4, steps=3)
    assert (dist[:3] == 0).all()  # labelled wrongly: misclassified without an attack
    tiny = minimal_distance(model, x[3:], y[3:], "linf") > 1e-4
    assert torch.isinf(dist[3:][tiny]).all()


# ------------------------------------------------------------------ side effects and configuration

CALLS = [
    (fgsm, {"norm": "linf", "eps": 0.1}), (fgm, {"norm": "l2", "eps": 0.5}),
    (ifgsm, {"norm": "l2", "eps": 0.5}), (bim, {"norm": "linf", "eps": 0.1}),
    (pgd, {"norm": "l1", "eps": 1.0, "steps": 3}), (pgd, {"norm": "linf", "eps": 0.1, "steps": 3}),
    (deepfool, {"norm": "linf"}), (noise, {"norm": "l0", "restarts": 1}),
    (stability, {"norm": "l2"}),
]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("attack,kwargs", CALLS, ids=lambda v: getattr(v, "__name__", None))
def test_attacks_leave_mode_and_parameter_grads_alone(attack, kwargs, training):
    model, x, y = problem(5)
    model.train(training)
    sentinel = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, s in zip(model.parameters(), sentinel):
        p.grad = s.clone()
    x_in = x.clone()
    with torch.no_grad():  # the evaluation may call attacks under no_grad: they must still work
        x_adv = attack(model, x, y, **kwargs)
    assert model.training is training
    assert all(torch.equal(p.grad, s) for p, s in zip(model.parameters(), sentinel))
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(x, x_in) and not x_adv.requires_grad and x_adv.shape == x.shape


@pytest.mark.parametrize("attack,kwargs", CALLS, ids=lambda v: getattr(v, "__name__", None))
def test_attacks_leave_batchnorm_statistics_alone(attack, kwargs):
    """A conv net with BatchNorm in train mode: attacks run it in eval mode, so running stats stay put."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3)).train()
    x = torch.rand(6, 1, 6, 6)
    y = torch.randint(0, 3, (6,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_adv = attack(model, x, y, **kwargs)
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_registry_and_schemas_match_functions():
    """Every registered attack has a schema; each schema field is a keyword of the function with the same
    default, and the YAML name / target agree with it."""
    import importlib

    attacks = list_attacks()
    mine = {"fgsm", "fgm", "ifgsm", "bim", "pgd", "deepfool", "noise", "stability"}
    assert mine <= set(attacks)
    assert {n for n in mine if attacks[n].budget} == {"fgsm", "fgm", "ifgsm", "bim", "pgd"}
    for name in mine:
        fn = attacks[name]
        schema = importlib.import_module(fn.__module__).SCHEMAS[name]
        params = inspect.signature(fn).parameters
        for f in fields(schema):
            if f.name == "_target_":
                assert f.default == f"{fn.__module__}.{name}"
            elif f.name == "name":
                assert f.default == name
            else:
                assert f.name not in ("norm", "eps")
                assert params[f.name].default == f.default, (name, f.name)


def test_attack_configs_compose_side_by_side_and_run(hydra_compose):
    from hydra.errors import ConfigCompositionException
    from hydra.utils import get_method
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    bad_config = (ConfigCompositionException, OmegaConfBaseException)

    names = ["fgsm", "fgm", "ifgsm", "bim", "pgd", "deepfool", "noise", "stability"]
    cfg = hydra_compose("eval", overrides=[f"attack=[{','.join(names)}]"])
    assert sorted(cfg.attack) == sorted(names)
    model, x, y = problem(4)
    for name in names:
        opts = OmegaConf.to_container(cfg.attack[name])
        fn = get_method(opts.pop("_target_"))
        assert opts.pop("name") == name
        if "steps" in opts:
            opts["steps"] = 2  # keep it quick: the options are checked, not the attack
        extra = {"eps": 0.1} if fn.budget else {}
        x_adv = fn(model, x, y, norm=fn.norms[0], **extra, **opts)
        assert x_adv.shape == x.shape
    with pytest.raises(bad_config):  # a misspelled option fails at compose time
        hydra_compose("eval", overrides=["attack=[pgd]", "attack.pgd.stepz=3"])
    with pytest.raises(bad_config):  # so does a wrong type
        hydra_compose("eval", overrides=["attack=[pgd]", "attack.pgd.steps=many"])


def test_margin_helper_sign():
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0]])
    assert torch.allclose(margin(logits, torch.tensor([0, 0])), torch.tensor([1.0, -3.0]))


def test_norms_with_narrows_the_norms_by_option():
    from robust_cli.attacks.contract import norms_with, register_attack
    from robust_cli.attacks.fmn import fmn

    assert norms_with(fmn, {"projection": "advlib"}) == (("l1", "l2", "linf"), " with projection=advlib")
    assert norms_with(fmn, {"projection": "ball", "steps": 3}) == (fmn.norms, "")
    assert norms_with(fmn, {}) == (fmn.norms, "")
    with pytest.raises(ValueError, match="unknown norms"):
        register_attack(norms=("l2",), budget=False, option_norms={"p": {"x": ("l1",)}})
