"""The proximal operators of PDPGD against their definition (thesis eq 5.4) and the exact l1-ball projection.

``prox_{lam f}(u) = argmin_z lam f(z) + 0.5 ||z - u||^2`` is minimised independently here: numerically
(scipy, several starts) for the convex norms and the radial l2/3 group operator, by enumerating supports for
the l0 operators, and on a dense 1-D grid for the separable l2/3 operator.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from robust_cli.attacks import proximal as P

NORM_FNS = {
    "l1": lambda z: np.abs(z).sum(),
    "l2": lambda z: np.linalg.norm(z),
    "linf": lambda z: np.abs(z).max(),
}


def _objective(z, u, lam, f):
    return lam * f(z) + 0.5 * np.sum((z - u) ** 2)


def _numeric_prox(u, lam, f):
    """Best of Powell runs from several starts (0, u, random) on the 1-strongly convex objective."""
    rng = np.random.default_rng(0)
    starts = [np.zeros_like(u), u.copy()] + [rng.normal(size=u.shape) for _ in range(3)]
    best = None
    for s in starts:
        res = minimize(_objective, s, args=(u, lam, f), method="Powell",
                       options={"xtol": 1e-10, "ftol": 1e-14, "maxiter": 20000})
        if best is None or res.fun < best.fun:
            best = res
    return best.x, best.fun


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_convex_prox_matches_definition(norm):
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    lam = torch.tensor([0.05, 0.3, 0.7, 1.5, 3.0, 10.0], dtype=torch.float64)
    z = P.PROX[norm](u, lam)
    f = NORM_FNS[norm]
    for i in range(u.shape[0]):
        ui, zi = u[i].numpy(), z[i].numpy()
        z_num, f_num = _numeric_prox(ui, lam[i].item(), f)
        f_ours = _objective(zi, ui, lam[i].item(), f)
        # the closed form is at least as good as the numerical minimum; and if it is the minimiser, 1-strong
        # convexity gives F(z_num) - F(z_ours) >= 0.5 ||z_num - z_ours||^2
        assert f_ours <= f_num + 1e-9
        assert 0.5 * np.sum((zi - z_num) ** 2) <= f_num - f_ours + 1e-9
    # the batch applies each row's own weight
    for i in range(u.shape[0]):
        assert torch.allclose(z[i : i + 1], P.PROX[norm](u[i : i + 1], lam[i].item()))


def test_linf_prox_is_moreau_of_l1_projection():
    """eq 5.11: prox_{lam ||.||_inf}(u) + lam * proj_{B1}(u / lam) = u, with the projection in the unit ball."""
    gen = torch.Generator().manual_seed(2)
    u = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    lam = torch.tensor([0.1, 0.5, 2.0, 50.0], dtype=torch.float64)
    proj = lam[:, None] * P.project_l1_ball(u / lam[:, None], 1.0)
    assert torch.allclose(P.prox_linf(u, lam) + proj, u, atol=1e-12)
    # lam large enough: the whole vector is inside the l1 ball of radius lam, so the prox is 0
    assert torch.allclose(P.prox_linf(u[3:], 50.0), torch.zeros_like(u[3:]), atol=1e-12)


def _l0_by_enumeration(u, lam, groups, d=1.0):
    """Exact prox of lam * (number of non-zero groups) in the metric ``d`` (a kept group stays ``u``): try every
    set of kept groups."""
    best, best_val = None, np.inf
    for keep in itertools.product([False, True], repeat=len(groups)):
        z = np.zeros_like(u)
        for g, k in zip(groups, keep):
            if k:
                z[g] = u[g]
        val = lam * sum(keep) + 0.5 * np.sum(d * (z - u) ** 2)
        if val < best_val:
            best, best_val = z, val
    return best, best_val


def test_l0_prox_matches_enumeration():
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    lam = torch.linspace(0.05, 1.5, 8, dtype=torch.float64)
    z = P.prox_l0(u, lam)
    for i in range(8):
        ref, _ = _l0_by_enumeration(u[i].numpy(), lam[i].item(), [[j] for j in range(6)])
        np.testing.assert_allclose(z[i].numpy(), ref, atol=0)



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_kept_is_the_bool_masked_product_bit_for_bit(dtype):
    """``_kept`` (the hard thresholds' float-indicator product) gives ``u * (score > threshold)`` exactly: NaN,
    ±inf and -0 in ``u``, ties at the threshold, a score broadcast over channels and a per-sample threshold."""
    gen = torch.Generator().manual_seed(5)
    u = (torch.randn(6, 3, 4, 4, generator=gen) * 0.5).to(dtype)
    u.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0]).to(dtype)
    score = u.float().abs().amax(dim=1, keepdim=True).nan_to_num(nan=0.2)
    threshold = torch.tensor([0.0, 0.1, 0.2, 0.4, 1.0, float("inf")]).view(6, 1, 1, 1)
    score[1, 0, 0, 0] = 0.1  # a tie: not kept
    got, ref = P._kept(u, score, threshold), u * (score > threshold)
    assert got.dtype == ref.dtype == dtype
    assert torch.equal(got.isnan(), ref.isnan())
    assert torch.equal(got.nan_to_num(nan=7.0), ref.nan_to_num(nan=7.0))
    assert torch.equal(got.signbit(), ref.signbit())  # the zeros keep their signs too

def test_l0_group_prox_matches_enumeration():
    """Pixel groups: [B, C=3, H=2, W=2] -> 4 groups of 3 values; the cost counts changed pixels."""
    gen = torch.Generator().manual_seed(4)
    u = torch.randn(8, 3, 2, 2, generator=gen, dtype=torch.float64)
    lam = torch.linspace(0.1, 3.0, 8, dtype=torch.float64)
    z = P.prox_l0_group(u, lam)
    idx = np.arange(12).reshape(3, 2, 2)
    groups = [idx[:, h, w].tolist() for h in range(2) for w in range(2)]
    for i in range(8):
        ref, _ = _l0_by_enumeration(u[i].numpy().ravel(), lam[i].item(), groups)
        np.testing.assert_allclose(z[i].numpy().ravel(), ref, atol=0)
    # the thesis's literal max-threshold variant agrees with the exact operator on one channel
    u1 = u[:, :1]
    assert torch.equal(P.prox_l0_group_max(u1, lam), P.prox_l0(u1, lam))
    assert torch.equal(P.prox_l0_group(u1, lam), P.prox_l0(u1, lam))


def test_l0_group_prox_in_a_diagonal_metric_matches_enumeration():
    """Pixel groups [B, C=3, H=2, W=2] in a metric spread over three decades: keep a pixel iff its metric-weighted
    squares exceed 2 lam, the best of all 16 kept sets; the unit metric gives ``prox_l0_group`` bit for bit."""
    gen = torch.Generator().manual_seed(13)
    u = torch.randn(8, 3, 2, 2, generator=gen, dtype=torch.float64)
    d = _spread_metric(gen, u.shape, 3.0)
    lam = torch.linspace(0.02, 2.0, 8, dtype=torch.float64)
    z = P.prox_l0_group_diagonal(u, lam, d)
    idx = np.arange(12).reshape(3, 2, 2)
    groups = [idx[:, h, w].tolist() for h in range(2) for w in range(2)]
    kept = 0
    for i in range(8):
        ref, _ = _l0_by_enumeration(u[i].numpy().ravel(), lam[i].item(), groups, d[i].numpy().ravel())
        np.testing.assert_allclose(z[i].numpy().ravel(), ref, atol=0)
        kept += int((ref != 0).any())
    assert kept > 0  # the weights leave some pixels kept and zero others
    assert (z == 0).any()
    # the metric matters: the plain operator at the same lam keeps other pixels
    assert not torch.equal(z, P.prox_l0_group(u, lam))
    assert torch.equal(P.prox_l0_group_diagonal(u, lam, torch.ones_like(u)), P.prox_l0_group(u, lam))
    for dt in (torch.bfloat16, torch.float16):  # half inputs: the test in float32, the values kept as given
        zh = P.prox_l0_group_diagonal(u.to(dt), lam, d.to(dt))
        assert zh.dtype == dt and ((zh == 0) | (zh == u.to(dt))).all()


def test_l23_prox_matches_grid_search():
    """Separable: each value minimises lam |z|^(2/3) + 0.5 (z - a)^2 on its own; a dense grid is the reference."""
    a = torch.linspace(-4, 4, 41, dtype=torch.float64)
    grid = torch.linspace(-5, 5, 200_001, dtype=torch.float64)
    for lam in (0.05, 0.4, 1.3):
        z = P.prox_l23(a[None], lam)[0]
        obj = lam * grid.abs().pow(2 / 3)[None, :] + 0.5 * (grid[None, :] - a[:, None]) ** 2
        best_val, best_at = obj.min(dim=1)
        ours = lam * z.abs().pow(2 / 3) + 0.5 * (z - a) ** 2
        assert torch.all(ours <= best_val + 1e-9)
        assert (z - grid[best_at]).abs().max() < 1e-3
        # below the threshold 1.4756 lam^(3/4) everything is zeroed; above it nothing is
        thr = (2 / 3) * (24 * lam**3) ** 0.25
        far = (a.abs() - thr).abs() > 1e-3
        assert torch.equal((z != 0)[far], (a.abs() > thr)[far])


def test_l23_group_prox_matches_definition():
    gen = torch.Generator().manual_seed(5)
    u = torch.randn(5, 3, 1, 2, generator=gen, dtype=torch.float64)
    lam = torch.tensor([0.05, 0.2, 0.5, 1.0, 2.0], dtype=torch.float64)
    z = P.prox_l23_group(u, lam)

    def f(v):
        return sum(np.linalg.norm(v.reshape(3, 2)[:, j]) ** (2 / 3) for j in range(2))

    for i in range(5):
        ui, zi = u[i].numpy().ravel(), z[i].numpy().ravel()
        _, f_num = _numeric_prox(ui, lam[i].item(), f)
        assert _objective(zi, ui, lam[i].item(), f) <= f_num + 1e-8


def test_l1_ball_projection_is_exact():
    """p is the projection onto the convex ball iff p is in it and (v - p).(q - p) <= 0 for every q in it;
    the ball is the hull of its 2n vertices +-radius e_i, so checking the vertices suffices."""
    gen = torch.Generator().manual_seed(6)
    v = torch.randn(6, 9, generator=gen, dtype=torch.float64) * torch.tensor([0.1, 1, 1, 3, 5, 0.01])[:, None]
    radius = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.01, 1.0], dtype=torch.float64)
    p = P.project_l1_ball(v, radius)
    n = v.shape[1]
    for i in range(6):
        assert p[i].abs().sum() <= radius[i] + 1e-12
        verts = torch.cat([torch.eye(n), -torch.eye(n)]).double() * radius[i]
        assert ((verts - p[i]) @ (v[i] - p[i])).max() <= 1e-12
        if v[i].abs().sum() <= radius[i]:
            assert torch.equal(p[i], v[i])
        else:
            assert torch.isclose(p[i].abs().sum(), radius[i], atol=1e-12)
    # an independent reference: bisection on the threshold theta with sum (|v| - theta)_+ = radius
    lo, hi = torch.zeros(6, dtype=torch.float64), v.abs().amax(1)
    for _ in range(200):
        mid = (lo + hi) / 2
        too_big = (v.abs() - mid[:, None]).clamp_min(0).sum(1) > radius
        lo, hi = torch.where(too_big, mid, lo), torch.where(too_big, hi, mid)
    ref = torch.sign(v) * (v.abs() - hi[:, None]).clamp_min(0)
    outside = v.abs().sum(1) > radius
    assert torch.allclose(p[outside], ref[outside], atol=1e-12)


def test_zero_weight_is_identity():
    u = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    for name, fn in P.PROX.items():
        assert torch.allclose(fn(u, 0.0), u, atol=1e-12), name


# ---- the operators in a diagonal metric (PDPGD's exact step in Adam's metric) ------------------------------


def _metric_objective(z, u, lam, d, f):
    return lam * f(z) + 0.5 * np.sum(d * (z - u) ** 2)


def _spread_metric(gen: torch.Generator, shape, decades: float) -> torch.Tensor:
    """Positive weights log-uniform over ``decades`` decades (Adam's ``sqrt(v) + eps`` spans many)."""
    return torch.pow(10.0, -decades * torch.rand(shape, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_diagonal_metric_prox_matches_definition(norm):
    """``argmin_z lam ||z|| + 0.5 sum d (z - u)^2`` minimised numerically (Powell, several starts): ours is at
    least as good, and by strong convexity (modulus min d) within reach of the numerical minimiser."""
    gen = torch.Generator().manual_seed(7)
    u = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    d = _spread_metric(gen, (6, 5), 2.0)
    lam = torch.tensor([0.01, 0.1, 0.3, 0.8, 2.0, 20.0], dtype=torch.float64)
    z = P.DIAGONAL[norm](u, lam, d)
    f = NORM_FNS[norm]
    rng = np.random.default_rng(0)
    for i in range(6):
        ui, zi, di = u[i].numpy(), z[i].numpy(), d[i].numpy()
        best = None
        for s in [np.zeros_like(ui), ui.copy()] + [rng.normal(size=ui.shape) for _ in range(3)]:
            res = minimize(_metric_objective, s, args=(ui, lam[i].item(), di, f), method="Powell",
                           options={"xtol": 1e-12, "ftol": 1e-15, "maxiter": 40000})
            best = res if best is None or res.fun < best.fun else best
        f_ours = _metric_objective(zi, ui, lam[i].item(), di, f)
        assert f_ours <= best.fun + 1e-9
        assert 0.5 * di.min() * np.sum((zi - best.x) ** 2) <= best.fun - f_ours + 1e-9
    assert (z[-1] == 0).all()  # lam above ||d u|| (l2) / sum d |u| (linf): the zero vector
    # every value moves towards 0 and keeps its sign: z stays in any box around 0 that holds u
    assert ((z * u >= 0) & (z.abs() <= u.abs())).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_diagonal_metric_prox_with_unit_metric_is_the_plain_prox(norm):
    gen = torch.Generator().manual_seed(8)
    u = torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64)
    lam = torch.tensor([0.0, 0.05, 0.5, 2.0, 50.0], dtype=torch.float64)
    z = P.DIAGONAL[norm](u, lam, torch.ones_like(u))
    assert torch.allclose(z, P.PROX[norm](u, lam), atol=1e-12)
    assert torch.equal(z[0], u[0])  # lam = 0: the identity


def _l2_bisection(u, lam, d):
    """The root of ``t ||z(t)|| = lam``, ``z(t) = d u / (d + t)``, by 200 bisections (float64 reference)."""
    a = d * u
    lo, hi = torch.zeros_like(lam), lam * d.amax(1) / ((a.norm(dim=1) - lam).clamp_min(1e-300))
    for _ in range(200):
        mid = (lo + hi) / 2
        below = mid * (a / (d + mid[:, None])).norm(dim=1) < lam
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return torch.where((a.norm(dim=1) > lam)[:, None], a / (d + hi[:, None]), torch.zeros_like(a))


@pytest.mark.parametrize("decades", [0.0, 2.0, 4.0, 8.0])
def test_l2_diagonal_newton_converges_in_its_fixed_steps(decades):
    """``L2_NEWTON_STEPS`` Newton steps against bisection on metrics spread over up to eight decades: float32 (the
    attacks' dtype) at its rounding floor, float64 within 1e-7 and quadratic (one more step: 1e-12); one step
    fewer is not enough on the spread metrics (the count is not idle); a constant metric takes one step."""
    gen = torch.Generator().manual_seed(9)
    B, n = 256, 200
    u = torch.randn(B, n, generator=gen, dtype=torch.float64) * torch.rand(B, 1, generator=gen, dtype=torch.float64)
    d = _spread_metric(gen, (B, n), decades)
    # weights from 5% to 95% of the zero threshold ||d u||: rows with a small z are the hard ones
    lam = (d * u).norm(dim=1) * (0.05 + 0.9 * torch.rand(B, generator=gen, dtype=torch.float64))
    ref = _l2_bisection(u, lam, d)

    def worst(z):
        return ((z.double() - ref).norm(dim=1) / ref.norm(dim=1)).max().item()

    steps = P.L2_NEWTON_STEPS
    assert worst(P.prox_l2_diagonal(u.float(), lam.float(), d.float())) <= 1e-5
    assert worst(P.prox_l2_diagonal(u, lam, d)) <= 1e-7
    assert worst(P.prox_l2_diagonal(u, lam, d, newton_steps=steps + 1)) <= 1e-12
    if decades > 0:
        assert worst(P.prox_l2_diagonal(u.float(), lam.float(), d.float(), newton_steps=steps - 1)) > 1e-5
    else:
        assert worst(P.prox_l2_diagonal(u, lam, d, newton_steps=1)) <= 1e-12


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_proximal_adam_iterations_converge_to_the_exact_step(norm):
    """The thesis's inexact step (proximal Adam's inner iterations in ``primal_steps.proximal_step``) run long
    enough reaches what the exact operator in Adam's metric gives in one call: the same minimiser."""
    from robust_cli.attacks.primal_steps import proximal_step

    gen = torch.Generator().manual_seed(10)
    x = torch.rand(4, 1, 4, 4, generator=gen, dtype=torch.float64)
    v = (x + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1) - x  # in the box
    denom = _spread_metric(gen, x.shape, 1.0)
    mu = torch.tensor([0.001, 0.01, 0.05, 0.2], dtype=torch.float64)
    exact = proximal_step(P.PROX[norm], v, x, mu, denom, 0, 0.0, exact=P.in_diagonal_metric(norm))
    iterated = proximal_step(P.PROX[norm], v, x, mu, denom, 20000, 0.0)
    assert torch.allclose(exact, iterated, atol=1e-7)
    assert ((x + exact) >= 0).all() and ((x + exact) <= 1).all()
    assert not torch.allclose(exact, proximal_step(P.PROX[norm], v, x, mu, denom, 5, 1e-2), atol=1e-4)


def test_diagonal_metric_prox_in_half_precision():
    """bf16 / fp16 inputs (the attacks' ``precision=``): computed in float32, returned in the input's dtype."""
    gen = torch.Generator().manual_seed(11)
    u = torch.randn(4, 30, generator=gen)
    d = torch.rand(4, 30, generator=gen) + 0.1
    lam = torch.tensor([0.1, 0.5, 1.0, 3.0])
    for name in ("l2", "linf"):
        ref = P.DIAGONAL[name](u, lam, d)
        for dt in (torch.bfloat16, torch.float16):
            z = P.DIAGONAL[name](u.to(dt), lam, d.to(dt))
            assert z.dtype == dt and torch.isfinite(z).all()
            assert torch.allclose(z.float(), ref, atol=0.05, rtol=0.05), (name, dt)


def test_in_diagonal_metric_names_each_operator_form():
    """Elementwise operators weigh each value by ``lam / d_i``; l2, linf and the pixel-group hard threshold have
    their own forms; the thesis's literal pixel threshold and the pixel-group l2/3 have none (PDPGD iterates)."""
    gen = torch.Generator().manual_seed(12)
    u = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    d = torch.rand(u.shape, generator=gen, dtype=torch.float64) + 0.1
    lam = torch.tensor([0.05, 0.2, 1.0], dtype=torch.float64)
    for name in P.SEPARABLE:
        assert torch.equal(P.in_diagonal_metric(name)(u, lam, d), P.PROX[name](u, lam.view(-1, 1, 1, 1) / d))
    assert P.in_diagonal_metric("l2") is P.prox_l2_diagonal and P.in_diagonal_metric("linf") is P.prox_linf_diagonal
    assert P.in_diagonal_metric("l0_group") is P.prox_l0_group_diagonal
    for name in ("l0_group_max", "l23_group"):
        assert P.in_diagonal_metric(name) is None


def _linf_level_by_sort(u, lam, d):
    """Reference: the level ``tau`` of ``sum d (|u| - tau)_+ = lam`` from the magnitudes sorted in decreasing
    order: ``tau = (sum_{i<=k} d_i s_i - lam) / sum_{i<=k} d_i`` for the largest ``k`` with
    ``sum_{i<=k} d_i (s_i - s_k) <= lam``."""
    s, order = u.abs().sort(dim=1, descending=True)
    w = d.gather(1, order)
    cw, cws = w.cumsum(1), (w * s).cumsum(1)
    k = (cws - s * cw <= lam[:, None]).sum(1).clamp_min(1)
    at = (k - 1)[:, None]
    return ((cws.gather(1, at).squeeze(1) - lam) / cw.gather(1, at).squeeze(1)).clamp_min(0)


@pytest.mark.parametrize("magnitudes", ["gaussian", "geometric", "ties"])
def test_linf_diagonal_newton_reaches_the_sorted_solution(magnitudes, monkeypatch):
    """Newton's level against the sort-based one, float64, on Gaussian rows, on magnitudes spread geometrically
    (each step drops few values from the active set) and on rows with repeated magnitudes, with the cap lowered
    to 30 steps (a cap reached leaves a lower level, which the comparison would catch): far below the cap."""
    gen = torch.Generator().manual_seed(13)
    B, n = 64, 300
    u = torch.randn(B, n, generator=gen, dtype=torch.float64)
    if magnitudes == "geometric":
        u = u.sign() * torch.pow(0.97, torch.rand(B, n, generator=gen, dtype=torch.float64) * n)
    elif magnitudes == "ties":
        u = u.sign() * torch.randint(1, 5, (B, n), generator=gen).double() / 4
    d = _spread_metric(gen, (B, n), 3.0)
    lam = (d * u.abs()).sum(1) * torch.rand(B, generator=gen, dtype=torch.float64)
    assert P.LINF_NEWTON_MAX_STEPS > 30
    monkeypatch.setattr(P, "LINF_NEWTON_MAX_STEPS", 30)
    z = P.prox_linf_diagonal(u, lam, d)
    tau = _linf_level_by_sort(u, lam, d)
    assert torch.allclose(z, u.sign() * torch.minimum(u.abs(), tau[:, None]), rtol=0, atol=1e-12)
