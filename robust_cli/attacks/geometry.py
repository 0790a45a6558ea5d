"""The geometry of perturbations: per-sample norms, exact projections onto ball ∩ box, the budget guard.

Everything here is per sample on a batch ``[B, ...]``, with no Python loop over the batch: ``batch_norm``
and ``changed_pixels`` measure, ``project`` is the exact Euclidean projection onto
``{||r|| <= eps} ∩ {x + r in [0,1]}`` that projected gradient attacks step through (Madry et al. 2017, as
used in Finlay et al. §4.2 and Matyasko thesis §5.4), ``enforce_budget`` makes ``x_adv`` meet its budget
exactly as ``batch_norm`` measures it.
"""

from __future__ import annotations

import math

import torch

from robust_cli.norms import NORMS


def batch_norm(r: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of a perturbation ``r`` ``[B, ...]`` -> ``[B]``; l0 counts non-zero values."""
    flat = r.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "l1":
        return flat.abs().sum(dim=1)
    if norm == "l0":
        return (flat != 0).sum(dim=1).to(r.dtype)
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


def changed_pixels(r: torch.Tensor) -> torch.Tensor:
    """Per-sample number of pixels ``[B]`` where ``r`` ``[B, C, H, W]`` changes any channel.

    The l0 of the papers: the group l0 of Matyasko thesis Ch.5 §5.3.4, eq 5.15, a pixel's channels forming
    its group. Equals ``batch_norm(r, "l0")`` for one channel.
    """
    return (r != 0).any(dim=1).flatten(1).sum(dim=1).to(r.dtype)


def view_as_images(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample vector ``[B]`` to ``[B, 1, 1, 1]`` (as many dims as ``like``)."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def as_batch_eps(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The budget as a per-sample vector ``[B]`` on ``x``'s device and dtype (a float is broadcast)."""
    eps = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if eps.dim() == 0:
        return eps.expand(x.shape[0]).clone()
    if eps.shape != (x.shape[0],):
        raise ValueError(f"eps must be a float or a [B] tensor with B={x.shape[0]}, got shape {tuple(eps.shape)}")
    return eps


def _caps(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """How far each value of ``v`` may move in its own direction before the box stops it (``>= 0``)."""
    return torch.where(v > 0, hi, -lo).clamp_min(0)


def _project_l2_box_sorted(v: torch.Tensor, eps: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of ``v`` ``[B, d]`` onto ``{||r||_2 <= eps} ∩ [lo, hi]`` (``lo <= 0 <= hi``) by
    sorting the breakpoints: the reference of ``_project_l2_box`` and its fallback.

    KKT: ``r_i = clip(c v_i, lo_i, hi_i)`` with ``c = 1 / (1 + mu)`` in ``(0, 1]``. ``||r(c)||^2`` is
    increasing and piecewise quadratic in ``c``, with breakpoints ``b_i = cap_i / |v_i|`` where value ``i``
    hits the box: sorting them gives, in closed form, the piece where the norm reaches ``eps`` and
    ``c = sqrt((eps^2 - sum_{clipped} cap^2) / sum_{free} v^2)``. (Rescaling first and clipping after is
    feasible but not the projection: it stalls PGD short of the box-constrained optimum.)
    """
    clipped = torch.minimum(torch.maximum(v, lo), hi)
    inside = clipped.norm(dim=1) <= eps
    vd, cap = v.double(), _caps(v, lo, hi).double()
    b = torch.where(vd != 0, cap / vd.abs().clamp_min(1e-300), torch.full_like(vd, float("inf")))
    b, order = b.sort(dim=1)
    cap2 = cap.gather(1, order) ** 2
    v2 = vd.gather(1, order) ** 2
    clipped_before = cap2.cumsum(1) - cap2  # sum of cap^2 over the values clipped before breakpoint k
    free_from = v2.flip(1).cumsum(1).flip(1)  # sum of v^2 over the values still free at breakpoint k
    e2 = eps.double()[:, None] ** 2
    at_break = clipped_before + torch.where(torch.isfinite(b), b, torch.zeros_like(b)) ** 2 * free_from
    k = (at_break < e2).sum(1, keepdim=True).clamp_max(b.shape[1] - 1)  # the piece holding eps
    c = ((e2 - clipped_before.gather(1, k)).clamp_min(0) / free_from.gather(1, k).clamp_min(1e-300)).sqrt()
    c = c.clamp(0, 1).to(v.dtype)
    return torch.where(inside[:, None], clipped, torch.minimum(torch.maximum(v * c, lo), hi))


#: active-set rounds of ``_project_l2_box`` before the rows still moving fall back to the sort (typically 1-3)
L2_BOX_ROUNDS = 8


def _project_l2_box(v: torch.Tensor, eps: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of ``v`` ``[B, d]`` onto ``{||r||_2 <= eps} ∩ [lo, hi]`` (``lo <= 0 <= hi``).

    KKT: ``r_i = clip(t v_i, lo_i, hi_i)`` with ``t = 1 / (1 + mu)`` in ``(0, 1]``: ``t = 1`` where the plain
    clip is inside the ball, else the ``t`` where ``f(t) = ||clip(t v)||^2`` reaches ``eps^2``. ``f`` is
    increasing and piecewise quadratic, with a breakpoint ``b_i = cap_i / |v_i|`` where value ``i`` hits the
    box (``cap_i`` its room in its own direction): on the piece where the clipped set is ``C``,
    ``f(t) = sum_C cap^2 + t^2 sum_{not C} v^2``.

    Found without sorting the breakpoints (``_project_l2_box_sorted``), by a monotone active-set iteration:
    start at ``t_0 = eps / ||v||`` (``f(t_0) <= ||t_0 v||^2 = eps^2``); with ``C_k = {i : b_i < t_k}``,
    solve ``t_{k+1}^2 sum_{not C_k} v^2 + sum_{C_k} cap^2 = eps^2``. That left side bounds ``f`` from above
    for ``t >= t_k`` (a value that clips later contributes at most ``t^2 v_i^2``), so
    ``t_k <= t_{k+1} <= t*``: ``t`` only increases and every iterate is feasible; once ``C`` stops changing,
    ``t_{k+1}`` lies on the piece of ``C`` and is ``t*``, the very closed form the sort evaluates on the
    same set, in float64 (a value exactly at a breakpoint counts as free: both sides give the same ``f``).
    Rows not settled after ``L2_BOX_ROUNDS`` rounds (1-3 are typical) are projected by the sort.

    Only a few values per row are ever in doubt, so the rounds run on those alone: values the clip does not
    move (``clip(v)_i = v_i``, ``b >= 1``) are free for every ``t < 1``, and values with ``b < t_0`` are
    clipped for every ``t >= t_0``; only the rest (on MNIST FMN-l2 iterates at most ~35 of 784 per row, ~6
    on average) are gathered, once, into a ``[B, m]`` block where the breakpoints are formed exactly
    (``b = |clip(v)_i| / |v_i|`` in float64: where the clip binds, ``cap_i = |clip(v)_i|``). The full rows
    are only read to split them: ``b`` in the input's dtype against ``t_0`` shrunk by 8 ulps of it (rounding
    is monotone, so ``fl(b) < fl(t)`` already implies ``b < t``; the margin only files borderline values as
    in doubt, which costs nothing) and float indicators (bool masks and ``where`` are slow CPU paths), their
    sums of squares accumulated in float64.
    """
    clipped = torch.clamp(v, lo, hi)
    inside = clipped.norm(dim=1) <= eps
    if bool(inside.all()):
        return clipped
    f64 = torch.float64
    e2 = torch.where(inside, 0.0, eps.to(f64) ** 2)  # rows inside: t = 0, nothing in doubt, out of the way
    sum_v2 = torch.linalg.vector_norm(v, dim=1, dtype=f64).square_()
    t = (e2 / sum_v2.clamp_min(1e-300)).sqrt()  # t_0
    # 1 where the clip binds (the value can clip), 0 where it does not (free for every t < 1); none inside
    binds = torch.sub(v, clipped).abs_().sign_().mul_(view_as_images(~inside, v).to(v.dtype))
    # 1 where b < t_0 for sure: clipped at every t >= t_0 (b = 0/0 at v = 0: never)
    sure = (clipped / v).nan_to_num_(nan=2.0)
    margin = 1 - 8 * torch.finfo(v.dtype).eps
    sure = torch.sub((t * margin).to(v.dtype)[:, None], sure, out=sure).sign_().clamp_min_(0)
    fixed_cap2 = torch.linalg.vector_norm(clipped * sure, dim=1, dtype=f64).square_()  # sum_{sure} cap^2
    fixed_v2 = sum_v2 - torch.linalg.vector_norm(v * binds, dim=1, dtype=f64).square_()  # sum_{free} v^2
    rows, cols = binds.sub_(sure).nonzero().unbind(1)  # the values in doubt
    counts = torch.bincount(rows, minlength=v.shape[0])
    m = int(counts.max()) if rows.numel() else 0
    pos = torch.arange(rows.numel(), device=v.device) - (counts.cumsum(0) - counts)[rows]
    bm = torch.full((v.shape[0], m), 2.0, dtype=f64, device=v.device)  # padding: never clipped, adds 0
    cm, vm = torch.zeros_like(bm), torch.zeros_like(bm)
    c_d, v_d = clipped[rows, cols].to(f64), v[rows, cols].to(f64)
    bm[rows, pos], cm[rows, pos], vm[rows, pos] = c_d / v_d, c_d * c_d, v_d * v_d
    clip_m = bm < t[:, None]
    for _ in range(L2_BOX_ROUNDS):
        t_star = ((e2 - fixed_cap2 - (cm * clip_m).sum(1)).clamp_min(0)
                  / (fixed_v2 + (vm * ~clip_m).sum(1)).clamp_min(1e-300)).sqrt()
        t = torch.maximum(t, t_star)  # monotone, also under rounding
        last, clip_m = clip_m, bm < t[:, None]
        if torch.equal(clip_m, last):
            break
    out = torch.clamp(v * torch.where(inside, 1.0, t_star.clamp(0, 1)).to(v.dtype)[:, None], lo, hi)
    moving = (clip_m != last).any(1)  # rows still moving after L2_BOX_ROUNDS rounds: the sort
    if bool(moving.any()):
        idx = moving.nonzero().squeeze(1)
        out[idx] = _project_l2_box_sorted(v[idx], eps[idx], lo[idx], hi[idx])
    return out


def _project_l1_box(v: torch.Tensor, eps: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of ``v`` ``[B, d]`` onto ``{||r||_1 <= eps} ∩ [lo, hi]`` (``lo <= 0 <= hi``).

    KKT: ``r_i = clip(soft(v_i, tau), lo_i, hi_i)`` with the smallest ``tau >= 0`` whose l1 mass
    ``m(tau) = sum_i min((|v_i| - tau)_+, cap_i)`` is at most ``eps`` (each coordinate's problem is 1-D and
    convex, so clipping its soft-threshold is exact). ``m`` is decreasing and piecewise linear: value ``i``
    starts shrinking at ``|v_i| - cap_i`` and reaches 0 at ``|v_i|``. Sorting these ``2d`` breakpoints gives
    ``m`` at each of them by a cumulative sum of slopes, and ``tau`` by interpolation on its piece.
    """
    clipped = torch.minimum(torch.maximum(v, lo), hi)
    inside = clipped.abs().sum(1) <= eps
    a, cap = v.abs().double(), _caps(v, lo, hi).double()
    moving = (cap > 0).double()  # a value with no room never moves
    points = torch.cat([(a - cap).clamp_min(0), a], dim=1)
    delta = torch.cat([moving, -moving], dim=1)  # change of the number of shrinking values at each point
    points, order = points.sort(dim=1, stable=True)
    delta = delta.gather(1, order)
    active_before = delta.cumsum(1) - delta  # values shrinking on the piece that ends at each point
    widths = points.diff(dim=1, prepend=torch.zeros_like(points[:, :1]))
    m0 = torch.minimum(a, cap).sum(1, keepdim=True)
    m_at = m0 - (active_before * widths).cumsum(1)  # m at each breakpoint
    e = eps.double()[:, None]
    k = (m_at > e).sum(1, keepdim=True).clamp_max(points.shape[1] - 1)  # first breakpoint with m <= eps
    left = torch.where(k > 0, points.gather(1, (k - 1).clamp_min(0)), torch.zeros_like(e))
    m_left = torch.where(k > 0, m_at.gather(1, (k - 1).clamp_min(0)), m0)
    slope = active_before.gather(1, k).clamp_min(1e-300)
    tau = (left + (m_left - e).clamp_min(0) / slope).to(v.dtype)
    soft = v.sign() * (v.abs() - tau).clamp_min(0)
    return torch.where(inside[:, None], clipped, torch.minimum(torch.maximum(soft, lo), hi))


class Projector:
    """:func:`project` for a fixed ``x`` ``[B,C,H,W]`` and ``norm``: ``Projector(x, norm)(delta, eps)`` is
    ``project(delta, x, eps, norm)``, with the box bounds ``-x`` and ``1 - x`` formed once instead of at
    every call (an iterative attack projects once or twice per step)."""

    def __init__(self, x: torch.Tensor, norm: str):
        if norm not in ("linf", "l2", "l1"):
            raise ValueError(f"projection onto the {norm!r} ball is not supported")
        self.x, self.norm = x, norm
        if norm != "linf":
            self.lo, self.hi = -x.flatten(1), (1 - x).flatten(1)

    def __call__(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            e = view_as_images(eps, delta)
            return (self.x + torch.maximum(torch.minimum(delta, e), -e)).clamp(0, 1) - self.x
        box = _project_l2_box if self.norm == "l2" else _project_l1_box
        return box(delta.flatten(1), eps, self.lo, self.hi).view_as(delta)

    def project_(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``self(delta, eps)``, written into ``delta`` where the norm allows it (linf: the same operations
        in place, the same values with no allocation), else a new tensor. The caller owns ``delta``."""
        if self.norm != "linf":
            return self(delta, eps)
        e = view_as_images(eps, delta)
        torch.minimum(delta, e, out=delta)
        torch.maximum(delta, -e, out=delta)
        return delta.add_(self.x).clamp_(0, 1).sub_(self.x)  # x + d (sums commute exactly)


def project(delta: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Map a perturbation ``delta`` ``[B,C,H,W]`` into ``{||r|| <= eps} ∩ {x + r in [0,1]}``; ``eps`` ``[B]``.

    All three are exact Euclidean projections onto the intersection (linf: a per-value clamp; l2 and l1:
    a scalar KKT multiplier, see ``_project_l2_box`` (an active set) and ``_project_l1_box`` (sorted
    breakpoints)). :class:`Projector` is the same with the box bounds formed once for many calls.
    """
    return Projector(x, norm)(delta, eps)


def project_ball(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Euclidean projection of ``delta`` ``[B,C,H,W]`` onto the ball ``{||r|| <= eps}`` alone (no box), ``eps`` ``[B]``.

    linf: a clamp; l2: a rescale of the rows outside; l1: the soft threshold whose l1 mass is ``eps`` (Duchi
    et al. 2008, "Efficient projections onto the l1-ball for learning in high dimensions", §3: here
    ``_project_l1_box`` with an unbounded box). A new tensor; rows inside the ball are unchanged.
    """
    if norm == "linf":
        e = view_as_images(eps, delta)
        return torch.maximum(torch.minimum(delta, e), -e)
    flat = delta.flatten(1)
    if norm == "l2":
        scale = (eps / batch_norm(delta, "l2").clamp_min(1e-30)).clamp_max(1)
        return (flat * scale[:, None]).view_as(delta)
    if norm == "l1":
        unbounded = torch.full_like(flat, math.inf)
        return _project_l1_box(flat, eps, -unbounded, unbounded).view_as(delta)
    raise ValueError(f"projection onto the {norm!r} ball is not supported")


def enforce_budget(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """``x_adv`` in [0,1] with ``||x_adv - x|| <= eps`` exactly as ``batch_norm`` measures it, per sample.

    Forming ``x + delta`` in floating point can land an ulp outside a budget ``delta`` met exactly, so
    offending samples are pulled towards ``x`` a little more each round (one ulp per value for linf, a
    growing relative shrink for l1/l2) until the measured norm fits.
    """
    x_adv = x_adv.clamp(0, 1)
    for k in range(8):
        r = x_adv - x
        over = batch_norm(r, norm) > eps
        if not bool(over.any()):
            break
        if norm == "linf":
            e = view_as_images(eps, r)
            pulled = (x + torch.maximum(torch.minimum(r, e), -e)).clamp(0, 1)
            still = (pulled - x).abs() > e
            pulled = torch.where(still, torch.nextafter(pulled, x), pulled)
        else:
            n = batch_norm(r, norm).clamp_min(1e-30)
            scale = (eps / n) * (1 - 1e-6 * 10**k)
            pulled = (x + r * view_as_images(scale.clamp(0, 1), r)).clamp(0, 1)
        x_adv = torch.where(view_as_images(over, x_adv), pulled, x_adv)
    return x_adv
