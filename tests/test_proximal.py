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


def _l0_by_enumeration(u, lam, groups):
    """Exact prox of lam * (number of non-zero groups): try every set of kept groups."""
    best, best_val = None, np.inf
    for keep in itertools.product([False, True], repeat=len(groups)):
        z = np.zeros_like(u)
        for g, k in zip(groups, keep):
            if k:
                z[g] = u[g]
        val = lam * sum(keep) + 0.5 * np.sum((z - u) ** 2)
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
