"""B&B's exact trust-region step (``robust_cli.attacks.trust_region``): on small random problems it is
feasible (on the plane, inside the region and the box) and at least as good as scipy's SLSQP from several
starts; without a binding region it is the minimiser on the plane; and B&B with it on the linear reference
model (``linear_reference``) ends within 1.05x of the exact optimum and never below it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linear_reference import make_problem, minimal_distance
from robust_cli.attacks import list_attacks
from robust_cli.attacks.bb import project_on_plane
from robust_cli.attacks.best import perturbation_size
from robust_cli.attacks.trust_region import trust_region_step

torch.set_num_threads(1)
ORD = {"l2": 2, "l1": 1, "linf": np.inf}


def _problem(b=12, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, d, generator=g, dtype=torch.float64)
    x = (x0 + 0.3 * torch.randn(b, d, generator=g, dtype=torch.float64)).clamp(0, 1)
    normal = torch.randn(b, d, generator=g, dtype=torch.float64)
    level = (normal * x).sum(1) + 0.2 * torch.randn(b, generator=g, dtype=torch.float64)
    radius = 0.05 + 0.5 * torch.rand(b, generator=g, dtype=torch.float64)
    return x0, x, normal, level, radius


def _scipy_best(x0, x, g, level, r, norm, starts=6):
    """The smallest feasible objective SLSQP finds (epigraph form for l1 / linf); inf where none."""
    from scipy.optimize import minimize

    d = x0.size
    rng = np.random.default_rng(0)
    plane = {"type": "eq", "fun": lambda v: g @ v[:d] - level}
    region = {"type": "ineq", "fun": lambda v: r * r - ((v[:d] - x) ** 2).sum()}
    best = np.inf
    for _ in range(starts):
        z0 = np.clip(x + 0.01 * rng.standard_normal(d), 0, 1)
        if norm == "l2":
            res = minimize(lambda v: ((v - x0) ** 2).sum(), z0, method="SLSQP", bounds=[(0, 1)] * d,
                           constraints=[plane, region], options={"maxiter": 500, "ftol": 1e-12})
        else:
            k = d if norm == "l1" else 1  # l1: one bound per value; linf: one for all
            cost = (lambda v: v[d:].sum()) if norm == "l1" else (lambda v: v[d])
            epi = [{"type": "ineq", "fun": lambda v: v[d:] - (v[:d] - x0)},
                   {"type": "ineq", "fun": lambda v: v[d:] + (v[:d] - x0)}]
            res = minimize(cost, np.r_[z0, np.ones(k)], method="SLSQP", bounds=[(0, 1)] * d + [(0, None)] * k,
                           constraints=[plane, region, *epi], options={"maxiter": 500, "ftol": 1e-12})
        z = res.x[:d]
        if abs(g @ z - level) < 1e-7 and ((z - x) ** 2).sum() <= r * r + 1e-9 and z.min() >= -1e-9 \
                and z.max() <= 1 + 1e-9:
            best = min(best, np.linalg.norm(z - x0, ORD[norm]))
    return best


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_step_is_feasible_and_no_worse_than_slsqp(norm):
    pytest.importorskip("scipy")
    x0, x, g, level, r = _problem()
    z = trust_region_step(x0, x, g, level, r, norm)
    assert z.min() >= 0 and z.max() <= 1
    compared = 0
    for i in range(len(x0)):
        ref = _scipy_best(*(t[i].numpy() for t in (x0, x, g)), float(level[i]), float(r[i]), norm)
        if not np.isfinite(ref):
            continue  # the plane is out of reach: the step goes towards it, checked below
        compared += 1
        zi = z[i].numpy()
        assert abs(g[i].numpy() @ zi - float(level[i])) < 1e-6, "not on the plane"
        assert np.linalg.norm(zi - x[i].numpy()) <= float(r[i]) * (1 + 1e-9), "outside the region"
        assert np.linalg.norm(zi - x0[i].numpy(), ORD[norm]) <= ref * (1 + 1e-4) + 1e-9
    assert compared >= len(x0) // 2


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_unreachable_plane_gives_a_step_of_the_region_towards_it(norm):
    x0, x, g, level, _ = _problem(seed=1)
    r = torch.full_like(level, 1e-3)  # far too small to reach any of the planes
    z = trust_region_step(x0, x, g, level, r, norm)
    step = (z - x).norm(dim=1)
    assert torch.allclose(step, r, rtol=1e-6) or bool((step <= r * (1 + 1e-9)).all())
    # it moves g . z towards the level
    before, after = (g * x).sum(1) - level, (g * z).sum(1) - level
    assert bool((after.abs() <= before.abs() + 1e-12).all())


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_large_region_gives_the_minimiser_on_the_plane(norm):
    x0, x, g, level, _ = _problem(seed=2)
    free = project_on_plane(x0[:, None, None], g[:, None, None], level, norm).flatten(1)
    z = trust_region_step(x0, x, g, level, torch.full_like(level, 100.0), norm)
    size = (z - x0).norm(p=ORD[norm], dim=1)
    assert torch.allclose(size, (free - x0).norm(p=ORD[norm], dim=1), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_bb_with_the_exact_step_is_near_the_exact_optimum_of_the_linear_model(norm):
    model, x, y = make_problem(n=12, in_shape=(1, 6, 6), num_classes=3, seed=0)
    start = list_attacks()["deepfool"](model, x, y, norm="l2")
    out = list_attacks()["bb"](model, x, y, norm=norm, steps=200, step="exact", x_init=start)
    assert out.min() >= 0 and out.max() <= 1
    with torch.no_grad():
        assert bool((model(out).argmax(1) != y).all())
    ratio = perturbation_size(out, x, norm).double() / minimal_distance(model, x, y, norm)
    assert ratio.min() >= 1 - 1e-4, f"below the exact optimum: {ratio.min():.6f}"
    assert ratio.max() <= 1.05, f"worst ratio {ratio.max():.4f}"


def _degenerate_problem(seed, b=48, d=40):
    """Random problems shaped like B&B's on images: many values at 0 or 1 (a background), the iterate equal
    to the clean image on many of them (hundreds of breakpoints at one multiplier), some zero normals,
    radii from tiny to none, levels near and far."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, d, generator=g, dtype=torch.float64)
    x0 = torch.where(torch.rand(b, d, generator=g, dtype=torch.float64) < 0.4, (x0 > 0.8).double(), x0)
    step = 0.2 * torch.randn(b, d, generator=g, dtype=torch.float64)
    x = torch.where(torch.rand(b, d, generator=g, dtype=torch.float64) < 0.5, x0, (x0 + step).clamp(0, 1))
    normal = torch.randn(b, d, generator=g, dtype=torch.float64)
    normal = torch.where(torch.rand(b, d, generator=g, dtype=torch.float64) < 0.1, 0.0, normal)
    level = (normal * x).sum(1) + normal.norm(dim=1) * 0.3 * torch.randn(b, generator=g, dtype=torch.float64)
    radius = 10 ** (-3 + 3.5 * torch.rand(b, generator=g, dtype=torch.float64))
    return x0, x, normal, level, radius


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_no_worse_than_the_bisecting_sorting_reference(norm):
    """Against the reference (every plane solve by sorting the breakpoints, the outer multiplier by 16-20
    bisection rounds), on problems with crowded breakpoints: every step is feasible (on the plane, inside
    the region and the box), never farther from ``x0`` than the reference's beyond 1e-6 relative (the
    search's tolerance), and closer on most rows that search at all (the root search ends nearer the
    radius than bisection does)."""
    from trust_region_reference import trust_region_step as reference

    closer = searched = 0
    for seed in range(6):
        x0, x, g, level, r = _degenerate_problem(seed)
        z, ref = trust_region_step(x0, x, g, level, r, norm), reference(x0, x, g, level, r, norm)
        assert z.min() >= 0 and z.max() <= 1
        assert bool(((z - x).norm(dim=1) <= r * (1 + 1e-9)).all()), "outside the region"
        reaches = ((g * ref).sum(1) - level).abs() <= 1e-9 * (1 + level.abs())
        assert bool((((g * z).sum(1) - level).abs()[reaches] <= 1e-7 * (1 + level.abs()[reaches])).all())
        size, ref_size = ((t - x0).norm(p=ORD[norm], dim=1) for t in (z, ref))
        assert bool((size <= ref_size * (1 + 1e-6) + 1e-12).all()), f"seed {seed}: {(size / ref_size).max()}"
        binds = reaches & ((ref - x).norm(dim=1) > r * (1 - 1e-3))  # the region binds: a search ran
        searched += int(binds.sum())
        closer += int((size < ref_size * (1 - 1e-9))[binds].sum())
    assert searched >= 20 and closer >= searched // 2, (closer, searched)


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_newton_and_sort_give_the_same_plane_point(norm, monkeypatch):
    """Every row through the sort (``newton=0``: the reference's solver) or through Newton as far as it goes
    (``newton=60``; the last few rows may still be sorted): the same step."""
    import robust_cli.attacks.trust_region as tr

    x0, x, g, level, r = _degenerate_problem(7)
    steps = {}
    for newton in (0, 60):
        monkeypatch.setattr(tr._plane_multiplier, "__defaults__", (None, newton))
        steps[newton] = tr.trust_region_step(x0, x, g, level, r, norm)
    assert (steps[0] - steps[60]).abs().max() <= 1e-9


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_bb_with_the_new_step_ends_where_the_reference_does(norm, monkeypatch):
    """Whole B&B trajectories on the linear reference model: the same end points with either solver."""
    import robust_cli.attacks.bb as bb_module
    from trust_region_reference import trust_region_step as reference

    model, x, y = make_problem(n=12, in_shape=(1, 6, 6), num_classes=3, seed=1)
    start = list_attacks()["deepfool"](model, x, y, norm="l2")
    ours = bb_module.bb(model, x, y, norm=norm, steps=60, step="exact", x_init=start)
    monkeypatch.setattr(bb_module, "trust_region_step", reference)
    theirs = bb_module.bb(model, x, y, norm=norm, steps=60, step="exact", x_init=start)
    size, ref_size = (perturbation_size(t, x, norm).double() for t in (ours, theirs))
    assert torch.allclose(size, ref_size, rtol=1e-5, atol=0)


# --- l0: the Lagrangian-dual step against the brute-forced optimum of tiny problems


def _l0_problem(b=64, channels=1, pixels=6, seed=0):
    """Tiny l0 step problems ``[b, channels * pixels]`` (channel-major, as an image flattened): the iterate
    moved on a few pixels of a partly saturated clean image, a plane through a point of the box, radii from
    the shortest step onto it to 4 times that."""
    g = torch.Generator().manual_seed(seed)
    d = channels * pixels
    x0 = torch.rand(b, d, generator=g, dtype=torch.float64)
    x0 = torch.where(torch.rand(b, d, generator=g, dtype=torch.float64) < 0.3, (x0 > 0.5).double(), x0)
    moved = (torch.rand(b, 1, pixels, generator=g) < 0.4).expand(b, channels, pixels).reshape(b, d)
    x = torch.where(moved, torch.rand(b, d, generator=g, dtype=torch.float64), x0)
    normal = torch.randn(b, d, generator=g, dtype=torch.float64)
    target = torch.where(torch.rand(b, d, generator=g) < 0.5, torch.rand(b, d, generator=g, dtype=torch.float64), x)
    level = (normal * target).sum(1)  # a plane through a point of the box: reachable
    from robust_cli.attacks.trust_region import _l2_point, _Plane

    shortest, _ = _l2_point(x0, x, _Plane.of(normal, level), torch.zeros_like(level))
    reach = (shortest - x).norm(dim=1)
    radius = reach * (1 + 3 * torch.rand(b, generator=g, dtype=torch.float64))  # the plane is in reach
    return x0, x, normal, level, radius


def _l0_brute_force(x0, x, g, level, r, channels):
    """The fewest changed pixels of a point on the plane, in the region and the box (one row, float64
    numpy), over every set of free pixels: the others stay clean and the free ones take the shortest
    box-constrained step onto the plane (``clip(x - lam g)``, ``lam`` by bisection)."""
    d = x0.size
    pixels = d // channels
    best = np.inf
    for mask in range(1 << pixels):
        free = np.repeat(np.array([(mask >> p) & 1 for p in range(pixels)], bool)[None], channels, 0).ravel()
        rest = level - g[~free] @ x0[~free]
        budget = r * r - ((x0[~free] - x[~free]) ** 2).sum()
        gf, xf = g[free], x[free]
        lo_val, hi_val = gf[gf < 0].sum(), gf[gf > 0].sum()
        if budget < -1e-12 or not lo_val - 1e-12 <= rest <= hi_val + 1e-12:
            continue
        lo, hi = -1e6, 1e6
        for _ in range(200):
            lam = (lo + hi) / 2
            if gf @ np.clip(xf - lam * gf, 0, 1) > rest:
                lo = lam
            else:
                hi = lam
        z = np.clip(xf - lam * gf, 0, 1)
        if ((z - xf) ** 2).sum() <= budget * (1 + 1e-9) + 1e-12:
            best = min(best, bin(mask).count("1"))
    return best


@pytest.mark.parametrize("channels,pixels", [(1, 6), (2, 4)])
def test_l0_step_is_feasible_and_mostly_the_brute_forced_optimum(channels, pixels):
    x0, x, g, level, r = _l0_problem(channels=channels, pixels=pixels)
    z = trust_region_step(x0, x, g, level, r, "l0", channels=channels)
    assert z.min() >= 0 and z.max() <= 1
    assert bool(((g * z).sum(1) - level).abs().le(1e-7 * (1 + level.abs())).all()), "not on the plane"
    assert bool(((z - x).norm(dim=1) <= r * (1 + 1e-9) + 1e-12).all()), "outside the region"
    ours = (z != x0).view(len(z), channels, -1).any(1).sum(1)
    optimum = torch.tensor([_l0_brute_force(*(t[i].numpy() for t in (x0, x, g)), float(level[i]), float(r[i]),
                                            channels) for i in range(len(z))])
    assert bool((ours >= optimum).all()), "fewer pixels than the brute force: the brute force is wrong"
    # the dual of a combinatorial problem need not be optimal (on these problems it is, on every row); the
    # shortest step alone is optimal on 48% / 30% of them, the dual without the touch-up is off the plane
    assert (ours == optimum).double().mean() >= 0.9, f"optimal on {(ours == optimum).double().mean():.2f}"
    assert (ours - optimum).max() <= 1


def test_l0_region_step_is_used_and_beats_the_scaled_step():
    """Where the region binds (the minimiser on the plane alone lies outside it) the step stays on the plane
    and changes fewer pixels in all than ``step=scaled``'s point (the knapsack blended into the region, the
    union of both supports; off the plane)."""
    x0, x, g, level, r = _l0_problem(seed=3)
    free = project_on_plane(x0[:, None, :, None], g[:, None, :, None], level, "l0").flatten(1)
    binds = (free - x).norm(dim=1) > r
    assert binds.double().mean() >= 0.3
    z = trust_region_step(x0, x, g, level, r, "l0")[binds]
    scaled = x + (free - x) * (r / (free - x).norm(dim=1)).clamp(max=1)[:, None]
    x0b, xb, gb, lb, rb = (t[binds] for t in (x0, x, g, level, r))
    assert bool(((gb * z).sum(1) - lb).abs().le(1e-7 * (1 + lb.abs())).all())
    ours, theirs = ((t != x0b).sum(1) for t in (z, scaled[binds]))
    assert ours.sum() < theirs.sum(), f"{ours.sum()} pixels against the scaled step's {theirs.sum()}"


def test_l0_unreachable_plane_gives_a_step_of_the_region_towards_it():
    x0, x, g, level, r = _l0_problem(seed=4)
    r = r * 1e-3  # far too small to reach the plane
    z = trust_region_step(x0, x, g, level, r, "l0")
    assert bool(((z - x).norm(dim=1) <= r * (1 + 1e-9)).all())
    before, after = (g * x).sum(1) - level, (g * z).sum(1) - level
    assert bool((after.abs() < before.abs()).all())


@pytest.mark.parametrize("step", ["exact", "scaled"])
def test_bb_l0_on_the_linear_model_is_adversarial_in_the_box_and_near_the_optimum(step):
    model, x, y = make_problem(n=12, in_shape=(2, 4, 4), num_classes=3, seed=2)
    start = list_attacks()["jsma"](model, x, y, norm="l0")
    out = list_attacks()["bb"](model, x, y, norm="l0", steps=300, step=step, x_init=start)
    assert out.min() >= 0 and out.max() <= 1
    with torch.no_grad():
        assert bool((model(out).argmax(1) != y).all())
    size = perturbation_size(out, x, "l0").double()
    assert bool((size <= perturbation_size(start, x, "l0").double()).all())
    if step == "exact":
        # one channel only: the reference's optimum counts values (pixels for the 1-channel problem)
        model1, x1, y1 = make_problem(n=12, in_shape=(1, 6, 6), num_classes=3, seed=2)
        start1 = list_attacks()["jsma"](model1, x1, y1, norm="l0")
        out1 = list_attacks()["bb"](model1, x1, y1, norm="l0", steps=300, step=step, x_init=start1)
        ratio = perturbation_size(out1, x1, "l0").double() / minimal_distance(model1, x1, y1, "l0")
        assert ratio.min() >= 1 - 1e-9 and ratio.max() <= 1.2, f"{ratio.tolist()}"
