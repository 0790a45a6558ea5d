"""Proximal operators of the norms minimised by PDPGD (Matyasko thesis Ch.5 §5.3, eqs 5.4-5.16).

``prox_{lam f}(u) = argmin_z  lam * f(z) + 0.5 * ||z - u||_2^2``  (eq 5.4).

Every operator takes a batch ``u`` ``[B, ...]`` (any float dtype, any device) and a per-sample weight
``lam`` (a float, or a tensor ``[B]`` of non-negative values) and returns a tensor shaped like ``u``; the
norm is taken over all non-batch dimensions of each sample. Nothing here has a Python loop over the batch.

``prox_l2_diagonal``, ``prox_linf_diagonal``, ``prox_l0_group_diagonal`` (and ``in_diagonal_metric``) take the
operators into a diagonal metric ``d`` ``[B, ...]``: ``argmin_z lam f(z) + 0.5 sum_i d_i (z_i - u_i)^2``,
PDPGD's step in Adam's metric.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ProxFn = Callable[[torch.Tensor, "torch.Tensor | float"], torch.Tensor]


def _per_sample(lam: torch.Tensor | float, u: torch.Tensor) -> torch.Tensor:
    """``lam`` as a tensor ``[B, 1, ..., 1]`` broadcastable against ``u`` ``[B, ...]``.

    A ``lam`` with as many dimensions as ``u`` is returned as it is: elementwise operators then apply a
    separate weight to every value (the exact prox in a diagonal metric, see ``primal_steps.proximal_step``).
    """
    lam = torch.as_tensor(lam, dtype=u.dtype, device=u.device)
    if lam.dim() == u.dim() and u.dim() > 1:
        return lam
    if lam.dim() == 0:
        lam = lam.expand(u.shape[0])
    return lam.reshape(-1, *([1] * (u.dim() - 1)))


def _kept(u: torch.Tensor, score: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``u`` where ``score > threshold``, else 0 (``score`` and ``threshold`` broadcast against ``u``).

    The comparison is written as a float 0/1 indicator in ``u``'s dtype and multiplied in: the same values as
    ``u * (score > threshold)`` bit for bit, without a bool tensor (on the CPU a comparison into a bool tensor and
    a float x bool product are slow paths: 145 + 186 µs on ``[256, 784]``, one thread, against 29 + 34 µs).
    """
    keep = torch.empty(torch.broadcast_shapes(score.shape, threshold.shape), dtype=u.dtype, device=u.device)
    return u * torch.gt(score, threshold, out=keep)


def project_l1_ball(v: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """Exact Euclidean projection of each row onto ``{z : ||z||_1 <= radius}`` (Duchi et al. 2008).

    Sort-based, ``O(n log n)`` per row: with ``s`` the magnitudes sorted in decreasing order, the
    threshold is ``theta = (sum_{i<=k} s_i - radius) / k`` for the largest ``k`` with
    ``s_k > (sum_{i<=k} s_i - radius) / k``, and the projection is ``sign(v) * (|v| - theta)_+``.

    Args:
        v: ``[B, ...]``.
        radius: float or ``[B]``, non-negative.
    Returns:
        ``[B, ...]``; rows already inside the ball are returned unchanged.
    """
    flat = v.flatten(1)
    r = _per_sample(radius, flat).squeeze(1)  # [B]
    mag = flat.abs()
    s = mag.sort(dim=1, descending=True).values
    css = s.cumsum(dim=1) - r[:, None]
    ks = torch.arange(1, flat.shape[1] + 1, device=v.device, dtype=v.dtype)
    # the condition holds for a prefix of k = 1..K; K = number of True values (at least 1 when r < ||v||_1)
    cond = s * ks > css
    k = cond.sum(dim=1).clamp_min(1)
    theta = css.gather(1, (k - 1)[:, None]).squeeze(1) / k.to(v.dtype)
    inside = mag.sum(dim=1) <= r
    theta = torch.where(inside, torch.zeros_like(theta), theta.clamp_min(0))
    return (torch.sign(flat) * (mag - theta[:, None]).clamp_min(0)).view_as(v)


def prox_linf(u: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """``prox_{lam ||.||_inf}(u) = u - lam * proj_{||.||_1 <= 1}(u / lam)`` (Moreau identity, eq 5.11).

    Written as ``u - proj_{||.||_1 <= lam}(u)`` so that ``lam = 0`` (identity) needs no division.
    """
    return u - project_l1_ball(u, _per_sample(lam, u).flatten())


def prox_l2(u: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Block soft threshold ``(1 - lam / ||u||_2)_+ u`` per sample (eq 5.12)."""
    lam_b = _per_sample(lam, u)
    norms = u.flatten(1).norm(dim=1).view_as(lam_b)
    scale = (1 - lam_b / norms.clamp_min(torch.finfo(u.dtype).tiny)).clamp_min(0)
    return u * scale


def prox_l1(u: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Soft threshold ``sign(u) (|u| - lam)_+`` elementwise (eq 5.13)."""
    return torch.sign(u) * (u.abs() - _per_sample(lam, u)).clamp_min(0)


def prox_l0(u: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Hard threshold at ``sqrt(2 lam)``: keep ``u_i`` iff ``|u_i| > sqrt(2 lam)`` (eq 5.14).

    Keeping a value costs ``lam``, zeroing it costs ``u_i^2 / 2``; at equality both are optimal and the
    operator returns zero.
    """
    return _kept(u, u.abs(), (2 * _per_sample(lam, u)).sqrt())


def _scalar_prox_l23(a: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``argmin_{z >= 0} lam z^(2/3) + 0.5 (z - a)^2`` for ``a >= 0`` (elementwise, ``lam`` broadcast).

    With ``z = t^3`` the stationarity condition is the quartic ``t^4 - a t + 2 lam / 3 = 0``. Ferrari's
    method reduces it to the resolvent cubic ``b^3 - (8 lam / 3) b - a^2 = 0`` (real root by Cardano,
    written with ``cbrt(p) cbrt(q) = 8 lam / 9`` to avoid cancellation), whose root gives the largest
    stationary point ``t = (sqrt(b) + sqrt(2 a / sqrt(b) - b)) / 2``. The minimiser is that point or 0,
    whichever has the smaller objective (the closed form of Cao, Sun & Xu 2013 for q = 2/3, with the
    threshold applied exactly instead of where the formula stops being real).
    """
    tiny = torch.finfo(a.dtype).tiny
    a2 = a * a
    k = 8 * lam / 9
    k3 = k * k * k
    disc = a2 * a2 / 4 - k3
    real = disc >= 0  # below the threshold the quartic has no positive root: zero wins
    p = (a2 / 2 + disc.clamp_min(0).sqrt()).clamp_min(tiny)
    cp = p.pow(1 / 3)
    b = (cp + k / cp).clamp_min(tiny)
    sb = b.sqrt()
    t = (sb + (2 * a / sb - b).clamp_min(0).sqrt()) / 2
    t2 = t * t
    z = t2 * t
    # z^(2/3) = t^2; keep z only where it beats z = 0
    keep = real & (lam * t2 + 0.5 * (z - a).square() < 0.5 * a2) & (lam >= 0)
    return torch.where(keep, z, torch.zeros_like(z))


def prox_l23(u: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Elementwise prox of ``lam * sum_i |u_i|^(2/3)``: a relaxation of l0 (thesis §5.3.5, other operators).

    A continuous relaxation of the hard threshold: values below ``~1.4756 lam^(3/4)`` go to zero, the rest
    shrink by less and less as they grow.
    """
    lam_b = _per_sample(lam, u)
    return torch.sign(u) * _scalar_prox_l23(u.abs(), lam_b)


def _group_norm(u: torch.Tensor) -> torch.Tensor:
    """l2 norm over the channel dimension: ``[B, C, H, W] -> [B, 1, H, W]`` (the pixel groups)."""
    return u.norm(dim=1, keepdim=True)


def prox_l0_group(u: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Pixel-group hard threshold: prox of ``lam * #{pixels with any channel changed}`` (eqs 5.15-5.16).

    ``u`` is ``[B, C, H, W]``; a pixel is the group of its ``C`` values. Keeping a pixel costs ``lam``,
    zeroing it costs ``||u_pixel||_2^2 / 2``, so the exact operator keeps the pixel iff
    ``||u_pixel||_2 > sqrt(2 lam)``. (The thesis writes the test with the largest ``|value|`` of the pixel;
    that is the exact operator only for one channel, where both coincide. See ``prox_l0_group_max``.)
    """
    return _kept(u, _group_norm(u), (2 * _per_sample(lam, u)).sqrt())


def prox_l0_group_max(u: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """The thesis's literal pixel-group threshold (eq 5.16): keep a pixel iff ``max_c |u_c| > sqrt(2 lam)``.

    Not the exact proximal operator for ``C > 1`` (it ignores the other channels' cost); kept as an option.
    """
    return _kept(u, u.abs().amax(dim=1, keepdim=True), (2 * _per_sample(lam, u)).sqrt())


def prox_l23_group(u: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Prox of ``lam * sum_pixels ||u_pixel||_2^(2/3)``: a radial function of each pixel's l2 norm.

    For ``h(||z||)`` the prox moves only the norm: ``z = u_g / ||u_g|| * prox_h(||u_g||)``.
    """
    n = _group_norm(u)
    shrunk = _scalar_prox_l23(n, _per_sample(lam, u))
    return u * (shrunk / n.clamp_min(torch.finfo(u.dtype).tiny))


MetricProxFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

L2_NEWTON_STEPS = 3
"""Newton steps of ``prox_l2_diagonal``. On metrics spread over up to eight decades, three steps bring ``z``
within 2e-6 relative of a float64 bisection on every row in float32 (its rounding floor: more steps change
nothing) and within 1e-7 in float64; two steps leave up to 4e-4 (``tests/test_proximal.py``)."""


def _working_dtype(u: torch.Tensor) -> torch.dtype:
    """float32 at least: the secular equation's sums of squares overflow and lose digits in half precision."""
    return torch.promote_types(u.dtype, torch.float32)


def prox_l2_diagonal(u: torch.Tensor, lam: torch.Tensor | float, d: torch.Tensor,
                     newton_steps: int = L2_NEWTON_STEPS) -> torch.Tensor:
    """``argmin_z lam ||z||_2 + 0.5 sum_i d_i (z_i - u_i)^2`` per sample: eq 5.12 in the diagonal metric ``d``.

    The optimality condition ``lam z / ||z|| + d (z - u) = 0`` gives ``z_i = d_i u_i / (d_i + t)`` with
    ``t = lam / ||z||``: every value shrinks towards 0 by its own factor (so ``z`` stays in any box around 0
    that holds ``u``), and ``z = 0`` where ``||d u|| <= lam``. ``t`` is the root of the secular equation
    ``phi(t) = 1 / ||z(t)|| - t / lam``, a concave function of ``t`` (``1 / ||z(t)||`` is concave by
    Cauchy-Schwarz, as for the trust-region subproblem of Moré & Sorensen 1983) with one root; with a constant
    ``d`` it is linear and one Newton step is exact. Newton's iterates from the upper bound
    ``t_0 = lam max(d) / (||d u|| - lam)`` (from ``||z(t)|| >= ||d u|| / (max(d) + t)``) decrease
    monotonically to the root. ``d = 1`` is ``prox_l2``.

    Args:
        u: ``[B, ...]``; lam: float or ``[B]``, non-negative; d: ``[B, ...]`` like ``u``, positive (Adam's
            ``sqrt(v) + eps``).
        newton_steps: Newton iterations on ``t`` (no host synchronisation: a fixed count).
    Returns:
        ``[B, ...]`` in ``u``'s dtype; computed in float32 at least.
    """
    dt = _working_dtype(u)
    flat, w = u.flatten(1).to(dt), d.flatten(1).to(dt)
    lam_b = _per_sample(lam, flat).squeeze(1)
    tiny = torch.finfo(dt).tiny
    lam_safe = lam_b.clamp_min(tiny)  # lam = 0: t -> 0, the identity
    a = w * flat
    norm_a = torch.linalg.vector_norm(a, dim=1)
    shrink = norm_a > lam_b
    t = lam_b * w.amax(dim=1) / (norm_a - lam_b).clamp_min(tiny)
    for _ in range(newton_steps):
        inv = (w + t[:, None]).reciprocal_()
        z = a * inv
        r = torch.linalg.vecdot(z, z).clamp_min(tiny).rsqrt()  # 1 / ||z(t)||
        slope_sum = torch.linalg.vecdot(z, z * inv)  # sum z^2 / (d + t) = ||z||^3 d(1/||z||)/dt
        # t - phi / phi' with phi = r - t / lam and phi' = slope_sum r^3 - 1 / lam, both multiplied by lam
        lam_r = lam_safe * r
        t = (t - (lam_r - t) / (lam_r * slope_sum * r * r - 1)).clamp_min(0)
    z = a / (w + t[:, None])
    return torch.where(shrink[:, None], z, torch.zeros_like(z)).to(u.dtype).view_as(u)


LINF_NEWTON_MAX_STEPS = 100
"""A cap on ``prox_linf_diagonal``'s Newton steps. Each step leaves the active set no larger, so the count is
at most the number of distinct magnitudes; on PDPGD-linf's iterates (MNIST and digits LeNet-5) it stopped
after 2-8 steps, and a cap reached leaves a level below the exact one: ``z`` clipped harder than the prox
would, still in the box."""


def prox_linf_diagonal(u: torch.Tensor, lam: torch.Tensor | float, d: torch.Tensor) -> torch.Tensor:
    """``argmin_z lam ||z||_inf + 0.5 sum_i d_i (z_i - u_i)^2`` per sample: eq 5.11 in the diagonal metric ``d``.

    For a level ``tau = ||z||_inf`` the best ``z`` clips ``u`` at ``tau``, ``z_i = sign(u_i) min(|u_i|, tau)``,
    and the level minimises ``lam tau + 0.5 sum_i d_i (|u_i| - tau)_+^2``, i.e. solves
    ``g(tau) = sum_i d_i (|u_i| - tau)_+ = lam`` (``tau = 0`` where ``g(0) = sum_i d_i |u_i| <= lam``). ``g`` is
    convex, decreasing and piecewise linear, so Newton's steps from ``tau = 0``,
    ``tau <- (sum_{|u_i| > tau} d_i |u_i| - lam) / sum_{|u_i| > tau} d_i``, rise monotonically and reach the
    root exactly once the active set ``{|u_i| > tau}`` stops changing (as the l1-ball projection of Michelot
    1986 does with ``d = 1``; ``d = 1`` is ``prox_linf``). It stops when no row's level rises (one host
    synchronisation per step; 2-9 steps on PDPGD's MNIST and digits iterates). The active set is a float 0/1
    indicator, so each step is one comparison and two dot products per row: ~1.5 ms for 256 MNIST rows on one
    CPU thread, against ~4.4 ms with a bool mask and more by one sort of the magnitudes. Every value moves
    towards 0, so ``z`` stays in any box around 0 that holds ``u``.

    Args:
        u: ``[B, ...]``; lam: float or ``[B]``, non-negative; d: ``[B, ...]`` like ``u``, positive.
    Returns:
        ``[B, ...]`` in ``u``'s dtype; computed in float32 at least.
    """
    dt = _working_dtype(u)
    flat, w = u.flatten(1).to(dt), d.flatten(1).to(dt)
    lam_b = _per_sample(lam, flat).squeeze(1)
    mag = flat.abs()
    weighted = w * mag
    tiny = torch.finfo(dt).tiny
    tau = torch.zeros_like(lam_b)
    active = torch.empty_like(mag)
    for _ in range(LINF_NEWTON_MAX_STEPS):
        # the active set {|u_i| > tau} as a float 0/1 indicator written into one reused buffer: a bool mask
        # and its products with float rows are slow CPU paths (the operator took 3x as long on MNIST rows
        # with them); the sums below are of the same products, so the same bits
        torch.gt(mag, tau[:, None], out=active)
        num, den = torch.linalg.vecdot(weighted, active), torch.linalg.vecdot(w, active)
        rise = ((num - lam_b) / den.clamp_min(tiny)).clamp_min_(0)
        if not bool((rise > tau).any()):  # in exact arithmetic the level only rises: settled (up to rounding)
            break
        tau = torch.maximum(rise, tau)
    level = tau[:, None]
    return flat.clamp(-level, level).to(u.dtype).view_as(u)  # sign(u) min(|u|, tau), in one pass


def prox_l0_group_diagonal(u: torch.Tensor, lam: torch.Tensor | float, d: torch.Tensor) -> torch.Tensor:
    """``argmin_z lam #{pixels of z not 0} + 0.5 sum_i d_i (z_i - u_i)^2``: eq 5.15 in the diagonal metric ``d``.

    Pixels are independent: keeping pixel ``p`` as it is costs ``lam``, zeroing it costs
    ``0.5 sum_c d_c u_c^2`` (any other value of it costs more than one of the two), so the exact operator keeps
    ``p`` iff ``sum_c d_c u_c^2 > 2 lam`` (zero at equality, as ``prox_l0_group``, which is ``d = 1``). The
    thesis's proximal Adam iterations instead threshold the plain ``||u_p||_2`` at ``sqrt(2 lam / max(d))``
    after rescaling the metric by its largest value, which keeps every pixel whose metric is small: on a
    coloured-MNIST LeNet-5 PDPGD-l0 ended at 179 changed pixels on average with them and 4.9 with this
    operator (BENCHMARKS.md, issue 16, session 14).

    Args:
        u: ``[B, C, H, W]`` (a pixel is the group of its ``C`` values); lam: float or ``[B]``, non-negative;
            d: like ``u``, positive.
    Returns:
        ``[B, C, H, W]`` in ``u``'s dtype (the test computed in float32 at least): each pixel of ``u`` kept
        whole or zeroed, so ``z`` stays in any box around 0 that holds ``u``.
    """
    dt = _working_dtype(u)  # squares of half-precision values underflow
    flat, w = u.to(dt), d.to(dt)
    cost = torch.linalg.vecdot(w, flat * flat, dim=1).unsqueeze(1)  # [B, 1, H, W]: zeroing each pixel
    return _kept(u, cost, 2 * _per_sample(lam, flat))


# elementwise operators: the prox in a diagonal metric is the same operator with a per-value weight
SEPARABLE = {"l1", "l0", "l23"}

DIAGONAL: dict[str, MetricProxFn] = {"l2": prox_l2_diagonal, "linf": prox_linf_diagonal,
                                     "l0_group": prox_l0_group_diagonal}
"""Operators that are not elementwise but have an exact form in a diagonal metric (``prox(u, lam, d)``)."""


def in_diagonal_metric(name: str) -> MetricProxFn | None:
    """The exact operator ``(u, lam [B], d) -> z`` of ``PROX[name]`` in the diagonal metric ``d``, or None.

    Elementwise operators take the weight ``lam / d_i`` per value; l2, linf and the pixel-group hard threshold
    have the forms of ``DIAGONAL``; the thesis's literal pixel threshold (``l0_group_max``, not a proximal
    operator) and the pixel-group l2/3 prox (a radial function, which a metric that differs between a pixel's
    channels makes a 3-dimensional problem) have none here (``None``: the caller iterates, proximal Adam).
    """
    if name in DIAGONAL:
        return DIAGONAL[name]
    if name in SEPARABLE:
        prox = PROX[name]
        return lambda u, lam, d: prox(u, _per_sample(lam, u) / d)
    return None


PROX: dict[str, ProxFn] = {
    "linf": prox_linf,
    "l2": prox_l2,
    "l1": prox_l1,
    "l0": prox_l0,
    "l23": prox_l23,
    "l0_group": prox_l0_group,
    "l0_group_max": prox_l0_group_max,
    "l23_group": prox_l23_group,
}
