"""The exact trust-region step as first written (``robust_cli/attacks/trust_region.py`` before its plane
multiplier became a warm-started Newton iteration): every plane solve sorts all ``2 D K`` breakpoints. Kept as
the reference the faster solver must reproduce (``tests/test_trust_region.py``)."""

from __future__ import annotations

import torch


def _plane_multiplier(base: torch.Tensor, g: torch.Tensor, p: torch.Tensor, q: torch.Tensor,
                      top: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """``lam`` ``[b]`` with ``F(lam) = level`` for ``F(lam) = sum_i g_i z_i(base_i - lam g_i)``.

    ``z_i(v)`` rises with slope 1 on the intervals ``[p_ik, q_ik]`` of ``v`` (``p, q`` ``[b,D,K]``) and is flat
    elsewhere; ``top`` ``[b]`` is ``F(-inf)``. On ``lam`` each interval is one where ``F`` falls with slope
    ``-g_i^2``: the breakpoints are sorted and ``F`` at each is a cumulative sum, so the crossing is exact
    up to rounding. Where ``level`` is out of ``F``'s range: the end nearest to it.
    """
    bsz = base.shape[0]
    gk = g[..., None]
    safe = gk.abs() > 0
    gs = torch.where(safe, gk, torch.ones_like(gk))
    a, c = (base[..., None] - q) / gs, (base[..., None] - p) / gs  # lam where z_i reaches q / p
    lo = torch.where(safe, torch.minimum(a, c), torch.zeros_like(a)).reshape(bsz, -1)
    hi = torch.where(safe, torch.maximum(a, c), torch.zeros_like(a)).reshape(bsz, -1)
    w = torch.where(safe & (q > p), gk * gk, torch.zeros_like(a)).reshape(bsz, -1)
    pos, order = torch.cat([lo, hi], 1).sort(1)
    slope = torch.cat([-w, w], 1).gather(1, order).cumsum(1)  # dF/dlam right after each breakpoint
    f = torch.cat([top[:, None], top[:, None] + (slope[:, :-1] * pos.diff(dim=1)).cumsum(1)], 1)
    j = ((f >= level[:, None]).sum(1) - 1).clamp(0, pos.shape[1] - 1)  # last breakpoint with F >= level
    fj, pj, sj = (t.gather(1, j[:, None]).squeeze(1) for t in (f, pos, slope))
    lam = torch.where(sj < 0, pj + (level - fj) / torch.where(sj < 0, sj, -torch.ones_like(sj)), pj)
    nxt = pos.gather(1, (j + 1).clamp(max=pos.shape[1] - 1)[:, None]).squeeze(1)
    return torch.minimum(lam, torch.where(j + 1 < pos.shape[1], nxt, lam))


def _top(g: torch.Tensor, lo: torch.Tensor | float, hi: torch.Tensor | float) -> torch.Tensor:
    """``F(-inf)`` ``[b]``: every ``z_i`` at the bound that ``g_i`` favours."""
    lo, hi = torch.as_tensor(lo, dtype=g.dtype), torch.as_tensor(hi, dtype=g.dtype)
    return torch.where(g > 0, g * hi, g * lo).sum(1)


def _l2_point(x0, x, g, level, s):
    """The l2 minimiser for ``s = 1 / (1 + mu)`` ``[b]``: ``clip(s x0 + (1-s) x - lam g)`` on the plane."""
    base = s[:, None] * x0 + (1 - s[:, None]) * x
    zeros = torch.zeros_like(base)[..., None]
    lam = _plane_multiplier(base, g, zeros, zeros + 1, _top(g, 0.0, 1.0), level)
    return (base - lam[:, None] * g).clamp(0, 1)


def _soft(v, x0, t):
    """``argmin_z |z - x0| + (z - v)^2 / (2t)`` elementwise (``t`` ``[b,1]``)."""
    return torch.where(v > x0 + t, v - t, torch.where(v < x0 - t, v + t, x0))


def _l1_point(x0, x, g, level, t):
    """The l1 minimiser for ``t = 1 / (2 mu)`` ``[b]``: ``clip(soft(x - lam g; x0, t))`` on the plane."""
    tt = t[:, None]
    p = torch.stack([-tt.expand_as(x0), x0 + tt], -1)  # z = clip(soft(v)) rises on [-t, x0-t] and [x0+t, 1+t]
    q = torch.stack([x0 - tt, 1 + tt.expand_as(x0)], -1)
    lam = _plane_multiplier(x, g, p, q, _top(g, 0.0, 1.0), level)
    return _soft(x - lam[:, None] * g, x0, tt).clamp(0, 1)


def _linf_point(x0, x, g, level, eps):
    """The shortest step onto the plane inside ``[x0 - eps, x0 + eps] & [0,1]`` (``eps`` ``[b]``), and whether
    that box reaches the plane (``[b]`` bool)."""
    lo, hi = (x0 - eps[:, None]).clamp(min=0), (x0 + eps[:, None]).clamp(max=1)
    top, bottom = _top(g, lo, hi), _top(-g, lo, hi).neg()
    lam = _plane_multiplier(x, g, lo[..., None], hi[..., None], top, level)
    reach = (level <= top * (1 + 1e-9) + 1e-12) & (level >= bottom - bottom.abs() * 1e-9 - 1e-12)
    return torch.minimum(torch.maximum(x - lam[:, None] * g, lo), hi), reach


def _length(z, x):
    return (z - x).norm(dim=1)


def trust_region_step(x0: torch.Tensor, x: torch.Tensor, g: torch.Tensor, level: torch.Tensor,
                      radius: torch.Tensor, norm: str, unconstrained: torch.Tensor | None = None,
                      iters: int = 14) -> torch.Tensor:
    """The exact solution ``z`` ``[b,D]`` of the module's problem for ``norm`` in l2, linf, l1.

    Args:
        x0: ``[b,D]`` the clean images; x: ``[b,D]`` the iterates; g: ``[b,D]`` the boundary normals.
        level: ``[b]`` the plane ``g . z = level``; radius: ``[b]`` the l2 trust region around ``x``.
        unconstrained: ``[b,D]`` or None, the minimiser on the plane without the region (``mu = 0``;
            ``bb.project_on_plane``, computed here where None); kept where it lies inside the region.
        iters: bisection rounds of the outer multiplier, geometric on ``s = 1 / (1 + mu)`` in [1e-8, 1] (l2)
            or ``t = 1 / (2 mu)`` in [1e-8, 1e3] (l1; below the range: the shortest step), then two
            regula falsi rounds on the step length (the plane is hit exactly either way; the multiplier sets
            how much of the region is used); for ``eps``, the objective itself, ``iters + 6`` rounds on
            ``[0, ||x - x0||_inf + r]``, which holds every point of the region.

    Returns:
        ``[b,D]`` in [0,1], in the dtype of ``x`` (the solve runs in float64: the breakpoints span many
        orders of magnitude once the region is small).
    """
    dtype = x.dtype
    x0, x, g, level, radius = (t.double() for t in (x0, x, g, level, radius))
    if norm not in ("l2", "l1", "linf"):
        raise ValueError(f"trust_region_step: no exact step for {norm!r}")
    if unconstrained is None:
        from robust_cli.attacks.bb import project_on_plane  # noqa: PLC0415 - bb imports this module

        unconstrained = project_on_plane(x0[:, None, None], g[:, None, None], level, norm).flatten(1)
    out = unconstrained.double()
    # the shortest step onto the plane (mu -> inf): the l2 point with s = 0, where the region must hold it
    shortest = _l2_point(x0, x, g, level, torch.zeros_like(level))
    fits = _length(shortest, x) <= radius
    towards = x + (shortest - x) * (radius / _length(shortest, x).clamp_min(1e-300)).clamp(max=1)[:, None]
    free_ok = _length(out, x) <= radius  # the region does not bind: mu = 0
    out = torch.where(free_ok[:, None], out, towards)
    rows = (~free_ok & fits).nonzero().squeeze(1)  # the rows where the multiplier search is needed
    if rows.numel() == 0:
        return out.to(dtype)
    x0, x, g, level, radius = (t[rows] for t in (x0, x, g, level, radius))
    best = shortest[rows]  # feasible on these rows
    if norm == "linf":
        # every point of the region lies within ||x - x0||_inf + r of x0: the optimal eps does too
        lo, hi = torch.zeros_like(level), ((x - x0).abs().amax(1) + radius).clamp(max=1)
        for _ in range(iters + 6):  # eps is the objective itself: finer than the l2 / l1 multipliers
            mid = (lo + hi) / 2
            z, reach = _linf_point(x0, x, g, level, mid)
            ok = reach & (_length(z, x) <= radius)
            hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid)
            best = torch.where(ok[:, None], z, best)
    else:
        point = _l2_point if norm == "l2" else _l1_point
        # l2: s in (0, 1] (s = 1: mu = 0); l1: t in (0, inf) (t -> inf: mu -> 0). The step grows with s / t;
        # the bisection is geometric (mu spans orders of magnitude as the region shrinks)
        lo = torch.full_like(level, 1e-8)
        hi = torch.ones_like(level) if norm == "l2" else torch.full_like(level, 1e3)
        len_lo, len_hi = torch.zeros_like(level), torch.full_like(level, torch.inf)
        for k in range(iters + 2):
            if k < iters or not torch.isfinite(len_hi).all():
                mid = (lo * hi).sqrt()
            else:  # the last two rounds interpolate ||z - x|| = r linearly in log t (regula falsi)
                frac = ((radius - len_lo) / (len_hi - len_lo).clamp_min(1e-300)).clamp(0.05, 0.95)
                mid = lo * (hi / lo) ** frac
            z = point(x0, x, g, level, mid)
            length = _length(z, x)
            ok = length <= radius
            lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
            len_lo, len_hi = torch.where(ok, length, len_lo), torch.where(ok, len_hi, length)
            best = torch.where(ok[:, None], z, best)
    out[rows] = best
    return out.to(dtype)
