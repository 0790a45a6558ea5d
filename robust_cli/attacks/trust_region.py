"""The trust-region step of Brendel & Bethge (2019, "Accurate, reliable and fast robustness evaluation",
§3, eq. 2), batched in torch: exact in l2, linf and l1; in l0 through its Lagrangian dual.

At the iterate ``x`` (``[b,D]``, the images flattened) with boundary normal ``g`` the step solves::

    z = argmin_z ||z - x0||_p   s.t.   g . z = level,   ||z - x||_2 <= r,   z in [0,1]^D

jointly (the paper's problem; foolbox solves it per image with numba optimisers). Its Lagrangian with a
multiplier ``lam`` for the plane and ``mu >= 0`` for the region separates over coordinates:

- l2: ``z = clip(s x0 + (1 - s) x - lam g)`` with ``s = 1 / (1 + mu)`` (``lam`` rescaled);
- l1: ``z = clip(soft(x - lam g; x0, t))`` with ``t = 1 / (2 mu)``, ``soft`` the soft threshold of width ``t``
  around ``x0`` (the minimiser of ``|z - x0| + (z - v)^2 / (2t)``);
- linf: for a radius ``eps``, ``z = clip(x - lam g, max(0, x0 - eps), min(1, x0 + eps))``, the shortest
  step onto the plane inside the eps-box, and ``eps`` the smallest radius whose step fits the region
  (foolbox's linf solver bisects over ``eps``).

For a fixed ``mu`` (or ``eps``) each ``z_i`` is piecewise linear and non-increasing along ``lam g_i``, so
``g . z(lam)`` is a non-increasing piecewise-linear function of ``lam`` with ``2 D K`` breakpoints; its
``lam`` for the plane is found exactly (``_plane_multiplier``): Newton steps on that function, from the
previous outer round's ``lam`` (l2, l1) or 0 (linf), until a step stays inside one linear piece (then it
hit the plane exactly), safeguarded by a bracket; the rare rows not settled in a few steps sort the
breakpoints (``_sorted_multiplier``, the first version's only solver). The step length ``||z - x||_2`` is
non-increasing in ``mu`` (for ``mu1 < mu2`` the two optimality inequalities add up to
``(mu1 - mu2)(|d1|^2 - |d2|^2) <= 0``) and non-increasing in ``eps`` for linf, so the outer multiplier is
found by a bracketing root search on the length (``_outer_search``: regula falsi, Illinois); ``mu = 0`` is
tried first (the region does not bind: the minimiser on the
plane, ``bb.project_on_plane``). Where even the shortest step onto the plane (``mu -> inf``) is longer
than ``r``, the plane cannot be reached: that shortest step is scaled to length ``r`` (a step towards the
boundary, as foolbox's ``optimize_boundary_s_t_trustregion`` but without its own multiplier search).

l0 (pixels: a pixel counts once however many of its ``C`` channels change) makes eq. 2 combinatorial. Its
Lagrangian, divided by ``mu`` (``tau = 1 / mu``, ``nu = lam / (2 mu)``), separates over pixels::

    min_z  tau [z_p != x0_p] + ||z_p - (x_p - nu g_p)||^2   over z_p in [0,1]^C

so each pixel either keeps its clean value or takes its clipped l2 step ``clip(x_p - nu g_p)``, whichever is
cheaper (``_l0_point``); the dual function is concave in ``(lam, mu)``. foolbox's reference implementation
(``L0BrendelBethgeAttack``) maximises it with Nelder-Mead per image; here, batched: for each ``tau`` of a
geometric bisection (the region's condition ``||z - x|| <= r``, monotone as ``mu``'s supergradient) the
plane's ``nu`` is bracketed by a geometric bisection on ``|nu|`` (``g . z(nu)`` is non-increasing, with a
jump where a pixel switches), and of the two bracketing points one value is moved onto the plane (the
"touch-up", as the reference's: the value whose change leaves the fewest changed pixels inside box and
region). The feasible point with the fewest pixels over the ``tau`` rounds is the step. It is not
guaranteed optimal (a duality gap), but on tiny problems brute-forced in the tests it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch


def _reciprocal(g: torch.Tensor) -> torch.Tensor:
    """``1 / g`` elementwise, 0 where ``g = 0`` (no inf, no NaN)."""
    safe = g != 0
    return torch.where(safe, 1 / torch.where(safe, g, torch.ones_like(g)), torch.zeros_like(g))


def _sorted_multiplier(base: torch.Tensor, g: torch.Tensor, p: torch.Tensor, q: torch.Tensor,
                      top: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """``lam`` ``[b]`` with ``F(lam) = level`` for ``F(lam) = sum_i g_i z_i(base_i - lam g_i)``, by sorting.

    ``z_i(v)`` rises with slope 1 on the intervals ``[p_ik, q_ik]`` of ``v`` (``p, q`` ``[b,D,K]``) and is flat
    elsewhere; ``top`` ``[b]`` is ``F(-inf)``. On ``lam`` each interval is one where ``F`` falls with slope
    ``-g_i^2``: the breakpoints are sorted and ``F`` at each is a cumulative sum, so the crossing is exact
    up to rounding. Where ``level`` is out of ``F``'s range: the end nearest to it. The fallback of
    ``_plane_multiplier`` (a sort of all ``2 D K`` breakpoints: the costly part of a step).
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


class _Pieces(NamedTuple):
    """``z_i(v)`` for ``v = base_i - lam g_i``: rising with slope 1 on the intervals ``[p_ik, q_ik]`` of ``v``
    (``p, q`` ``[b,D,K]`` or broadcastable, disjoint, increasing in ``k``), flat elsewhere."""

    p: torch.Tensor
    q: torch.Tensor
    z: Callable[[torch.Tensor], torch.Tensor]  # v -> z(v) [b,D]
    region: Callable[[torch.Tensor], torch.Tensor]  # v -> [b,D] int8: the intervals' ends below v (odd: inside)


class _Plane(NamedTuple):
    """The plane ``g . z = level`` and what every solve on it reuses: ``g^2``, and ``F(-inf)`` / ``F(inf)``
    ``[b]`` for the [0,1] box (``top01`` / ``bottom01``: every ``z_i`` at the bound ``g_i`` favours / opposes)."""

    g: torch.Tensor
    g2: torch.Tensor
    level: torch.Tensor
    top01: torch.Tensor
    bottom01: torch.Tensor

    @classmethod
    def of(cls, g: torch.Tensor, level: torch.Tensor) -> _Plane:
        return cls(g, g * g, level, g.clamp(min=0).sum(1), g.clamp(max=0).sum(1))

    def rows(self, rows: torch.Tensor) -> _Plane:
        return _Plane(*(t[rows] for t in self))


def _plane_multiplier(base: torch.Tensor, plane: _Plane, pieces: _Pieces, top: torch.Tensor,
                      bottom: torch.Tensor, guess: torch.Tensor | None = None, newton: int = 8) -> torch.Tensor:
    """``lam`` ``[b]`` with ``F(lam) = level`` for ``F(lam) = sum_i g_i z_i(base_i - lam g_i)``, exactly.

    ``z_i`` as ``pieces``; ``top`` / ``bottom`` ``[b]`` are ``F(-inf)`` / ``F(inf)``. ``F`` is piecewise linear
    and non-increasing: between two breakpoints it is linear with slope ``-sum g_i^2`` over the coordinates
    strictly inside an interval. A safeguarded Newton iteration from ``guess`` (the previous outer round's
    ``lam``: the solution moves little between rounds; else 0) keeps a bracket ``F(A) >= level >= F(C)`` and
    steps by the local slope (regula falsi on the bracket, Illinois-weighted, where that step leaves it); a
    Newton step that lands in the same linear piece as the point it started from (every coordinate in the
    same interval or gap at both points) hit ``F = level`` exactly, up to rounding: the solution, at ``O(D K)``
    per iteration where sorting the ``2 D K`` breakpoints costs ``O(D K log(D K))`` with a large constant. The
    first step uses the slope on the side it goes (``lam = 0`` or a previous solution may sit on hundreds of
    breakpoints at once). Rows not settled after ``newton`` iterations, or after 3 once no more than an eighth
    of the rows is left (the batch would iterate for them), are solved by the sort (``_sorted_multiplier``).
    Out of ``F``'s range: the end nearest to ``level``.
    """
    g, level = plane.g, plane.level
    # the bracket of all breakpoints: lam below `first` puts every z_i at its favoured end (F = top)
    ginv = _reciprocal(g)
    p_first, q_last = pieces.p[..., 0], pieces.q[..., -1]
    up_g = g > 0
    first = ((base - torch.where(up_g, q_last, p_first)) * ginv).amin(1)  # g = 0 adds a 0: harmless
    last = ((base - torch.where(up_g, p_first, q_last)) * ginv).amax(1)
    above, below = level >= top, level <= bottom  # out of range (or at its end): the end nearest to level
    done = above | below
    lam = torch.where(above, first, torch.where(below, last, torch.zeros_like(level) if guess is None else guess))
    lam = torch.minimum(torch.maximum(lam, first), last)
    if bool(done.all()):
        return lam
    lo_a, f_a, hi_c, f_c = first, top, last, bottom  # the bracket: F(lo_a) >= level >= F(hi_c)
    region_prev, stepped, side = None, torch.zeros_like(done), torch.zeros_like(level, dtype=torch.int8)
    for it in range(newton + 1):
        v = torch.addcmul(base, lam[:, None], g, value=-1)
        region = pieces.region(v)
        if region_prev is not None:  # the Newton step stayed in its piece: lam is the solution
            done = done | (stepped & ~(region != region_prev).any(1))
        left = int((~done).sum())
        if it == newton or left == 0 or (it >= 3 and left * 8 <= len(done)):
            break  # the last few rows (crowded breakpoints) cost less sorted than iterated with the batch
        f = (g * pieces.z(v)).sum(1)
        inside = (region & 1).bool()  # strictly inside an interval: -dF/dlam = sum g_i^2 over these
        done = done | (f == level)
        up = f > level
        if it == 0:  # lam = 0 or a previous solution may sit on many breakpoints at once (z_i = x_i at a
            # bound, hundreds of them on MNIST): the slope on the side the step goes counts those entering
            vk = v[..., None]
            at_p, at_q = (vk == pieces.p).any(-1), (vk == pieces.q).any(-1)
            moves = g != 0
            rises = (g < 0) == up[:, None]  # v_i rises as lam moves towards the level
            enter_p, enter_q = at_p & rises & moves, at_q & ~rises & moves
            inside = inside | enter_p | enter_q
            region = region + enter_p.to(torch.int8) - enter_q.to(torch.int8)  # the piece the step starts in
        slope = torch.where(inside, plane.g2, 0.0).sum(1)
        # Illinois: an end kept twice in a row after a regula falsi step counts half (no stagnation)
        f_a = torch.where(~up & (side < 0), level + (f_a - level) / 2, f_a)
        f_c = torch.where(up & (side > 0), level + (f_c - level) / 2, f_c)
        lo_a, f_a = torch.where(up, lam, lo_a), torch.where(up, f, f_a)
        hi_c, f_c = torch.where(up, hi_c, lam), torch.where(up, f_c, f)
        step = lam + (f - level) / torch.where(slope > 0, slope, torch.ones_like(slope))
        stepped = (slope > 0) & (step >= lo_a) & (step <= hi_c)
        falsi = lo_a + (f_a - level) / (f_a - f_c).clamp_min(1e-300) * (hi_c - lo_a)
        side = torch.where(stepped, 0, torch.where(up, 1, -1)).to(torch.int8)
        lam = torch.where(done, lam, torch.where(stepped, step, falsi))
        region_prev = region
    if not bool(done.all()):
        rows = (~done).nonzero().squeeze(1)
        p, q = (t[rows] if t.dim() and t.shape[0] == base.shape[0] else t for t in (pieces.p, pieces.q))
        lam[rows] = _sorted_multiplier(base[rows], g[rows], p, q, top[rows], level[rows])
    return lam


def _l2_point(x0, x, plane, s, guess=None):
    """The l2 minimiser for ``s = 1 / (1 + mu)`` ``[b]``: ``clip(s x0 + (1-s) x - lam g)`` on the plane, and
    its ``lam`` (``guess``: a nearby one, where known)."""
    base = torch.lerp(x, x0, s[:, None])
    zero = base.new_zeros(1, 1, 1)
    pieces = _Pieces(zero, zero + 1, lambda v: v.clamp(0, 1), lambda v: (v > 0).to(torch.int8) + (v >= 1))
    lam = _plane_multiplier(base, plane, pieces, plane.top01, plane.bottom01, guess)
    return (base - lam[:, None] * plane.g).clamp(0, 1), lam


def _soft(v, x0, t):
    """``argmin_z |z - x0| + (z - v)^2 / (2t)`` elementwise (``t`` ``[b,1]``)."""
    return torch.where(v > x0 + t, v - t, torch.where(v < x0 - t, v + t, x0))


def _l1_point(x0, x, plane, t, guess=None):
    """The l1 minimiser for ``t = 1 / (2 mu)`` ``[b]``: ``clip(soft(x - lam g; x0, t))`` on the plane, and its
    ``lam``."""
    tt = t[:, None]
    below, above, top = x0 - tt, x0 + tt, 1 + tt
    # z = clip(soft(v)) rises on [-t, x0 - t] and [x0 + t, 1 + t]
    p, q = torch.stack([-tt.expand_as(x0), above], -1), torch.stack([below, top.expand_as(x0)], -1)

    def region(v):
        return ((v > -tt).to(torch.int8) + (v >= below)) + ((v > above).to(torch.int8) + (v >= top))

    pieces = _Pieces(p, q, lambda v: _soft(v, x0, tt).clamp(0, 1), region)
    lam = _plane_multiplier(x, plane, pieces, plane.top01, plane.bottom01, guess)
    return _soft(x - lam[:, None] * plane.g, x0, tt).clamp(0, 1), lam


def _linf_point(x0, x, plane, eps, guess=None):
    """The shortest step onto the plane inside ``[x0 - eps, x0 + eps] & [0,1]`` (``eps`` ``[b]``), whether
    that box reaches the plane (``[b]`` bool), and its ``lam``."""
    g, level = plane.g, plane.level
    lo, hi = (x0 - eps[:, None]).clamp(min=0), (x0 + eps[:, None]).clamp(max=1)
    favours, g_lo, g_hi = g > 0, g * lo, g * hi
    top, bottom = torch.where(favours, g_hi, g_lo).sum(1), torch.where(favours, g_lo, g_hi).sum(1)
    pieces = _Pieces(lo[..., None], hi[..., None], lambda v: torch.minimum(torch.maximum(v, lo), hi),
                     lambda v: (v > lo).to(torch.int8) + (v >= hi))
    lam = _plane_multiplier(x, plane, pieces, top, bottom, guess)
    reach = (level <= top * (1 + 1e-9) + 1e-12) & (level >= bottom - bottom.abs() * 1e-9 - 1e-12)
    return torch.minimum(torch.maximum(x - lam[:, None] * g, lo), hi), reach, lam


_ONE = torch.ones(())


def _l0_point(x0: torch.Tensor, x: torch.Tensor, g: torch.Tensor, nu: torch.Tensor,
              tau: torch.Tensor) -> torch.Tensor:
    """The l0 Lagrangian's minimiser ``[b,C,P]`` for ``nu``, ``tau`` ``[b]`` (``x0``, ``x``, ``g`` ``[b,C,P]``).

    Pixel by pixel, ``argmin_z tau [z_p != x0_p] + ||z_p - u_p||^2`` over the box, ``u = x - nu g``: the pixel
    keeps its clean value where ``||x0_p - u_p||^2 <= tau + ||clip(u_p) - u_p||^2``, else moves to
    ``clip(u_p)`` (the l2 step from ``x``, clipped to the box).
    """
    u = torch.addcmul(x, nu[:, None, None], g, value=-1)
    moved = u.clamp(0, 1)
    # ||x0 - u||^2 - ||moved - u||^2 = (x0 - moved) . (x0 + moved - 2u), per pixel
    extra = (x0 - moved) * torch.add(x0 + moved, u, alpha=-2)
    if extra.shape[1] > 1:
        extra = extra.sum(1, keepdim=True)
    # 1 where the pixel keeps x0 (lerp returns either end exactly; torch.where is ~10x slower on CPU here)
    return torch.lerp(moved, x0, torch.heaviside(tau[:, None, None] - extra, _ONE.to(extra)))


def _l0_brackets(x0: torch.Tensor, x: torch.Tensor, g: torch.Tensor, level: torch.Tensor, tau: torch.Tensor,
                 guess: torch.Tensor, rounds: int, widen: int = 6
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The minimisers of ``_l0_point`` on either side of the plane for this ``tau`` ``[b]``: ``(z_near,
    z_far, nu)``, ``z`` ``[b,C,P]`` with ``g . z`` on the side of ``level`` that ``nu = 0`` gives and on the
    other side, ``rounds`` geometric bisection rounds of ``|nu|`` apart (relative ``2^-rounds``).

    ``g . z(nu)`` is non-increasing in ``nu`` (a supergradient of the concave dual function in ``lam``), with
    jumps where a pixel switches between its clean value and its step: the plane is bracketed, not always
    hit; ``_l0_touch_up`` closes the gap. The sign of ``nu`` is that of ``g . z(0) - level``; ``|nu|``
    starts at ``|guess|`` (the previous ``tau``'s, or the l2 estimate ``|g . z(0) - level| / ||g||^2`` where
    that is 0) and grows or shrinks by 2, 4, 16, 256, ... (at most ``widen`` times: up to ``2^(2^widen - 1)``)
    until the bracket holds the level; rows with a wide bracket get a coarser bisection.
    """
    dims = (1, 2)
    z0 = _l0_point(x0, x, g, torch.zeros_like(level), tau)
    f0 = (g * z0).sum(dims) - level
    sign = torch.where(f0 >= 0, 1.0, -1.0).to(level.dtype)
    l2_guess = f0.abs() / (g * g).sum(dims).clamp_min(torch.finfo(level.dtype).tiny)
    m = torch.where(guess != 0, guess.abs(), l2_guess)
    m = torch.where(m > 0, m, torch.ones_like(m))
    lo, hi = torch.zeros_like(m), torch.full_like(m, torch.inf)

    def side(m, lo, hi):  # the bracket's ends after testing |nu| = m (near: still on nu = 0's side)
        near = sign * ((g * _l0_point(x0, x, g, sign * m, tau)).sum(dims) - level) > 0
        return torch.where(near, m, lo), torch.where(near, hi, m)

    factor = 2.0
    for _ in range(widen):  # the bracket: near(lo), far(hi); lo > 0 so the bisection can be geometric
        lo, hi = side(m, lo, hi)
        if bool(((lo > 0) & torch.isfinite(hi)).all()):
            break
        m = torch.where(torch.isinf(hi), m * factor, torch.where(lo > 0, m, m / factor))
        factor = factor * factor  # 2, 4, 16, 256, ...: |nu| spans orders of magnitude between rows
    lo = torch.where(lo > 0, lo, hi / factor)  # never near at any tested |nu|: the level sits at ~0
    hi = torch.where(torch.isfinite(hi), hi, lo)  # never far: the plane is out of reach at this tau
    for _ in range(rounds):
        lo, hi = side((lo * hi).sqrt(), lo, hi)
    return _l0_point(x0, x, g, sign * lo, tau), _l0_point(x0, x, g, sign * hi, tau), sign * lo


def _l0_touch_up(z: torch.Tensor, x0: torch.Tensor, x: torch.Tensor, g: torch.Tensor, ginv: torch.Tensor,
                 level: torch.Tensor, r2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``z`` ``[b,C,P]`` moved onto the plane by changing one value: ``(z', ok [b], pixels [b])``.

    Of the values ``i`` whose change ``(level - g . z) / g_i`` keeps ``z'`` in the box and in the region
    (``r2``: the squared radius), the one that leaves the fewest changed pixels, then the shortest step
    ``||z' - x||``; ``ok`` is False where none does (``z'`` is then ``z``). ``pixels`` counts the pixels of
    ``z'`` that differ from ``x0``; ``ginv`` is ``1 / g`` (0 where ``g = 0``).
    """
    b = z.shape[0]
    gap = level - (g * z).sum((1, 2))
    new = torch.addcmul(z, gap[:, None, None], ginv)
    d_old, d_new = z - x, new - x
    new_len2 = (d_old * d_old).sum((1, 2))[:, None, None] + (d_new * d_new - d_old * d_old)
    changed = z != x0
    per_pixel = changed.sum(1, keepdim=True)  # [b,1,P] changed channels
    pixels = (per_pixel > 0).sum((1, 2))
    # a pixel stays changed where another of its channels is; the value's own change decides the rest
    new_pixels = pixels[:, None, None] - (per_pixel > 0).to(z.dtype) + (per_pixel - changed.to(per_pixel.dtype)
                                                                      + (new != x0).to(per_pixel.dtype) > 0)
    valid = (ginv != 0) & (new >= 0) & (new <= 1) & (new_len2 <= r2[:, None, None])
    # fewest pixels first; the step length (under half a pixel once divided by the region) breaks ties; an
    # invalid value scores the dtype's largest number (arithmetic: torch.where is slow on CPU here)
    big = torch.finfo(z.dtype).max
    score = new_pixels + 0.5 * new_len2 / r2.clamp_min(torch.finfo(r2.dtype).tiny)[:, None, None]
    score = torch.addcmul(score, (~valid).to(z.dtype), _ONE.to(z) * big).reshape(b, -1)
    best, at = score.min(1)
    ok = best < big
    out = z.reshape(b, -1).clone()
    out.scatter_(1, at[:, None], torch.where(ok[:, None], new.reshape(b, -1).gather(1, at[:, None]),
                                             out.gather(1, at[:, None])))
    return out.view_as(z), ok, torch.where(ok, best.floor().long(), pixels)


def _l0_region_step(x0: torch.Tensor, x: torch.Tensor, g: torch.Tensor, level: torch.Tensor,
                    radius: torch.Tensor, best: torch.Tensor, iters: int, rounds: int,
                    tau_range: tuple[float, float], search_dtype: torch.dtype) -> torch.Tensor:
    """The l0 step where the region binds (``[b,C,P]``; ``best``: a feasible point, the shortest step):
    a geometric bisection on ``tau = 1 / mu`` in ``tau_range`` (per channel of a pixel) for the largest
    ``tau`` whose point (``_l0_brackets`` then ``_l0_touch_up``) lies on the plane inside the region (the
    dual's optimality condition ``||z - x|| = r``), keeping the feasible point with the fewest changed pixels
    seen on the way (ties: the larger ``tau``). The search for ``nu`` runs in ``search_dtype`` (the images'
    dtype: which pixels move and where is decided as well in float32, at half the cost), the touch-up and
    the checks in the dtype of ``x`` (float64: the plane is met to the precision of ``level``, which
    matters once the region is tiny)."""
    ch = x0.shape[1]
    count = (best != x0).any(1).sum(1)
    r2 = radius * radius
    ginv = _reciprocal(g)
    lo, hi = (torch.full_like(level, ch * t) for t in tau_range)
    low = tuple(t.to(search_dtype) for t in (x0, x, g))
    nu = torch.zeros_like(level, dtype=search_dtype)
    for _ in range(iters):
        mid = (lo * hi).sqrt()
        z_near, z_far, nu = _l0_brackets(*low, level.to(search_dtype), mid.to(search_dtype), nu, rounds)
        pick, pick_ok, pick_n = _l0_touch_up(z_near.to(x.dtype), x0, x, g, ginv, level, r2)
        z, ok, n = _l0_touch_up(z_far.to(x.dtype), x0, x, g, ginv, level, r2)
        better = ok & (~pick_ok | (n < pick_n))
        pick = torch.lerp(pick, z, better.to(z.dtype)[:, None, None])
        pick_ok, pick_n = pick_ok | ok, torch.where(better, n, pick_n)
        lo, hi = torch.where(pick_ok, mid, lo), torch.where(pick_ok, hi, mid)
        take = pick_ok & (pick_n <= count)
        best = torch.lerp(best, pick, take.to(best.dtype)[:, None, None])
        count = torch.where(take, pick_n, count)
    return best


def _length(z, x):
    return (z - x).norm(dim=1)


#: the outer search stops on a row once its step uses all but this fraction of the region's radius ...
OUTER_RTOL = 1e-7
#: ... or once its bracket has closed to this fraction of the parameter (a jump of the length)
OUTER_CLOSED = 1e-7
#: a multiplier bracket wider than this ratio is bisected geometrically first (l1's ``t`` spans decades)
GEOMETRIC_RATIO = 8.0


def _outer_search(evaluate: Callable, good: torch.Tensor, bad: torch.Tensor, len_good: torch.Tensor,
                  len_bad: torch.Tensor, radius: torch.Tensor, guess: torch.Tensor, best: torch.Tensor, *,
                  scale: str, rounds: int) -> torch.Tensor:
    """The point of the longest step that fits: the outer parameter where the step's length reaches ``radius``.

    ``evaluate(param, guess, rows) -> (z [n,D], length [n], ok [n], lam [n])`` solves the inner problem of
    the rows ``rows`` ``[n]`` at their outer parameter ``param`` ``[n]`` (``ok``: the step fits the region and
    hits the plane; ``guess``/``lam``: the plane's multiplier, a warm start for the next solve). The length
    is monotone in the parameter between ``good`` (``len_good <= radius``) and ``bad`` (``len_bad > radius``),
    both ``[b]``, in either order (the end lengths may be estimates). The root of ``length = radius`` is kept
    bracketed and found by regula falsi with the Illinois rule (an end kept twice in a row counts half, so
    neither end stalls), on a scale where the length is close to linear:

    - ``square``: ``length^2`` against ``param^2`` (l2's ``s``: without the box, ``||z(s) - x||^2 =
      ||shortest - x||^2 + s^2 ||P (x0 - x)||^2``, ``P`` the projection along the plane, so the first
      interpolation is the solution);
    - ``geometric``: ``length^2`` against ``param``, with the geometric middle while the bracket spans more
      than ``GEOMETRIC_RATIO`` (l1's ``t``: piecewise quadratic, over decades);
    - ``log_length``: ``log(length / radius)`` against ``param`` (linf's radius ``eps``: on MNIST the length
      is flat at the shortest step's over most of the bracket and rises by 10^4 near its other end, where
      regula falsi on the length itself crawls).

    Only the rows still open are solved: a row stops once its kept step is within ``OUTER_RTOL`` of the
    radius, or its bracket has closed to ``OUTER_CLOSED`` of the parameter (a jump of the length, where a
    degenerate plane solve switches); at most ``rounds`` solves. Returns ``best`` ``[b,D]`` (feasible; kept
    where no solve fits) replaced by the point of each row's last fitting solve. On B&B's MNIST steps this
    takes 2-2.5x fewer plane solves than the bisection it replaced and ends closer to the radius.
    """
    def fn(length, r):  # < 0 where the step fits, > 0 where it does not: its root is sought
        if scale == "log_length":
            return torch.log(length.clamp_min(1e-300) / r)
        return length.square() - r.square()

    u_good, u_bad = (good.square(), bad.square()) if scale == "square" else (good, bad)
    f_good, f_bad = fn(len_good, radius), fn(len_bad, radius)
    # +1: the last round moved the good end (the bad one was kept), -1: the reverse
    kept = torch.zeros_like(radius, dtype=torch.int8)
    rows = torch.arange(len(radius), device=radius.device)
    for _ in range(rounds):
        ug, ub, fg, fb, r = u_good[rows], u_bad[rows], f_good[rows], f_bad[rows], radius[rows]
        frac = (-fg / (fb - fg).clamp_min(1e-300)).nan_to_num_(0.5).clamp_(1e-3, 1 - 1e-3)
        u = torch.lerp(ug, ub, frac)
        if scale == "geometric":
            u = torch.where(torch.maximum(ug, ub) > GEOMETRIC_RATIO * torch.minimum(ug, ub), (ug * ub).sqrt(), u)
        z, length, ok, guess_rows = evaluate(u.sqrt() if scale == "square" else u, guess[rows], rows)
        guess[rows] = guess_rows
        best[rows] = torch.where(ok[:, None], z, best[rows])
        f = fn(length, r)
        k = kept[rows]
        # Illinois: the end kept for the second time in a row moves half way towards the root
        fb = torch.where(ok & (k > 0), fb / 2, fb)
        fg = torch.where(~ok & (k < 0), fg / 2, fg)
        u_good[rows], f_good[rows] = torch.where(ok, u, ug), torch.where(ok, f, fg)
        u_bad[rows], f_bad[rows] = torch.where(ok, ub, u), torch.where(ok, fb, f.clamp_min(1e-300))
        kept[rows] = torch.where(ok, 1, -1).to(torch.int8)
        closed = (u_bad[rows] - u_good[rows]).abs() <= OUTER_CLOSED * u_good[rows].abs()
        rows = rows[~(ok & (r - length <= OUTER_RTOL * r)) & ~closed]
        if rows.numel() == 0:
            break
    return best


def trust_region_step(x0: torch.Tensor, x: torch.Tensor, g: torch.Tensor, level: torch.Tensor,
                      radius: torch.Tensor, norm: str, unconstrained: torch.Tensor | None = None,
                      iters: int | None = None, channels: int = 1, rounds: int = 10,
                      tau_range: tuple[float, float] = (1e-6, 1e3)) -> torch.Tensor:
    """The solution ``z`` ``[b,D]`` of the module's problem for ``norm``: exact in l2, linf, l1; in l0 the
    dual's (``_l0_region_step``).

    Args:
        x0: ``[b,D]`` the clean images; x: ``[b,D]`` the iterates; g: ``[b,D]`` the boundary normals.
        level: ``[b]`` the plane ``g . z = level``; radius: ``[b]`` the l2 trust region around ``x``.
        unconstrained: ``[b,D]`` or None, the minimiser on the plane without the region (``mu = 0``;
            ``bb.project_on_plane``, computed here where None); kept where it lies inside the region.
        iters: at most ``iters + 2`` solves of the outer multiplier's search (``_outer_search``) on
            ``s = 1 / (1 + mu)`` in [0, 1] (l2) or ``t = 1 / (2 mu)`` in [1e-8, 1e3] (l1; below the range: the
            shortest step), and ``iters + 6`` on ``eps``, the objective itself (linf), between the free
            minimiser's radius and ``||x - x0||_inf + r``, which holds every point of the region (the plane is
            hit exactly either way; the multiplier sets how much of the region is used). None: 14; in l0, 6
            rounds of ``tau`` (its values near the optimum give the same pixels: on recorded MNIST steps
            6 / 8 / 14 rounds changed 5310 / 5309 / 5309 values in all).
        channels: l0 only: ``D = channels * P``, channel-major (an image flattened); l0 counts pixels.
        rounds: l0 only: geometric bisection rounds of ``|nu|`` per ``tau`` (the touch-up closes the gap).
        tau_range: l0 only: the bracket of ``tau`` per channel (the shortest step is the ``tau -> 0`` end).

    Returns:
        ``[b,D]`` in [0,1], in the dtype of ``x`` (the solve runs in float64: the breakpoints span many
        orders of magnitude once the region is small; l0's search for ``nu`` in the dtype of ``x``).
    """
    dtype = x.dtype
    x0, x, g, level, radius = (t.double() for t in (x0, x, g, level, radius))
    if iters is None:
        iters = 6 if norm == "l0" else 14
    if norm not in ("l2", "l1", "linf", "l0"):
        raise ValueError(f"trust_region_step: no step for {norm!r}")
    if unconstrained is None:
        from robust_cli.attacks.bb import project_on_plane  # noqa: PLC0415 - bb imports this module

        images = x0.reshape(len(x0), channels, -1, 1)  # [b,C,P,1]: l0 counts a pixel's channels together
        gi = g.reshape(images.shape)
        unconstrained = project_on_plane(images, gi, level, norm).flatten(1)
    out = unconstrained.double()
    # the shortest step onto the plane (mu -> inf): the l2 point with s = 0, where the region must hold it
    plane = _Plane.of(g, level)
    shortest, lam = _l2_point(x0, x, plane, torch.zeros_like(level))
    fits = _length(shortest, x) <= radius
    towards = x + (shortest - x) * (radius / _length(shortest, x).clamp_min(1e-300)).clamp(max=1)[:, None]
    len_free = _length(out, x)
    free_ok = len_free <= radius  # the region does not bind: mu = 0
    out = torch.where(free_ok[:, None], out, towards)
    rows = (~free_ok & fits).nonzero().squeeze(1)  # the rows where the multiplier search is needed
    if rows.numel() == 0:
        return out.to(dtype)
    x0, x, g, level, radius, len_free = (t[rows] for t in (x0, x, g, level, radius, len_free))
    plane = plane.rows(rows)
    best, lam = shortest[rows], lam[rows]  # feasible on these rows; lam: l2 / l1's guess for the next round
    if norm == "l0":
        x0, x, g, best = (t.reshape(len(rows), channels, -1) for t in (x0, x, g, best))
        best = _l0_region_step(x0, x, g, level, radius, best, iters, rounds, tau_range, dtype).flatten(1)
    elif norm == "linf":
        # eps from the smallest box that reaches the plane (the free minimiser's radius: the step there is
        # longer than r on these rows) to one holding the whole region (every point of the region lies within
        # ||x - x0||_inf + r of x0, so the step there is the shortest one, which fits)
        bad = (unconstrained.double()[rows] - x0).abs().amax(1)
        good = ((x - x0).abs().amax(1) + radius).clamp(max=1)

        def evaluate(eps, guess, r):
            # from lam = 0 (x on the plane's side the iterate holds): a round's lam is a poor guess for the
            # next, whose box moves every clipped coordinate (measured: 5% of the rows fell back to the sort)
            z, reach, _ = _linf_point(x0[r], x[r], plane.rows(r), eps)
            length = _length(z, x[r])
            return z, length, reach & (length <= radius[r]), guess

        best = _outer_search(evaluate, good, bad, _length(best, x), len_free, radius, lam,
                             best, scale="log_length", rounds=iters + 6)
    else:
        point = _l2_point if norm == "l2" else _l1_point
        # l2: s in [0, 1] (s = 0: the shortest step, s = 1: mu = 0, the free minimiser); l1: t in (0, inf)
        # (t -> inf: mu -> 0). The step grows with s / t. The free minimiser's length stands in for the step
        # at the top of l1's range.
        good = torch.zeros_like(level) if norm == "l2" else torch.full_like(level, 1e-8)
        bad = torch.ones_like(level) if norm == "l2" else torch.full_like(level, 1e3)

        def evaluate(mid, guess, r):
            z, lam = point(x0[r], x[r], plane.rows(r), mid, guess)
            length = _length(z, x[r])
            return z, length, length <= radius[r], lam

        best = _outer_search(evaluate, good, bad, _length(best, x), len_free, radius, lam,
                             best, scale="square" if norm == "l2" else "geometric", rounds=iters + 2)
    out[rows] = best
    return out.to(dtype)
