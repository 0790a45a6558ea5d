"""What every attack shares: the registration decorator, norm names and no-side-effect helpers.

An attack is a function ``attack(model, x, y, *, norm, **params) -> x_adv`` on images ``[B,C,H,W]`` in
[0,1]. It must leave ``model.training`` as it found it and leave no gradient on the parameters; the
evaluation, not the attack, decides success and distance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

NORMS = ("l0", "l1", "l2", "linf")


def register_attack(*, norms: tuple[str, ...], budget: bool) -> Callable[[Callable], Callable]:
    """Mark a function as an attack.

    Args:
        norms: the norms the attack supports, a subset of ``NORMS``.
        budget: True for eps-bounded attacks (the evaluation searches eps per sample to get a distance);
            False for minimal-norm attacks (they return their best adversarial; the distance is its norm).
    """
    bad = set(norms) - set(NORMS)
    if bad:
        raise ValueError(f"unknown norms {sorted(bad)}; expected a subset of {NORMS}")

    def mark(fn: Callable) -> Callable:
        fn.norms = tuple(norms)
        fn.budget = budget
        return fn

    return mark


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode with its parameters' ``requires_grad`` off; restore both on exit.

    Attacks only need gradients with respect to the input; switching the parameters off saves the
    weight-gradient work and guarantees that nothing leaks into ``param.grad``.
    """
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


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
    """Per-sample number of pixels ``[B]`` where ``r`` ``[B, C, H, W]`` changes any channel: the l0 of the papers
    (SPEC.md §2 thresholds, thesis §5.3 pixel-group l0); equals ``batch_norm(r, "l0")`` for one channel."""
    return (r != 0).any(dim=1).flatten(1).sum(dim=1).to(r.dtype)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``f_y - max_{j != y} f_j`` per sample ``[B]``: positive iff the prediction is ``y`` (ties aside)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return true - other.amax(dim=1)


def view_as_images(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample vector ``[B]`` to ``[B, 1, 1, 1]`` (as many dims as ``like``)."""
    return v.view(-1, *([1] * (like.dim() - 1)))


# ---------------------------------------------------------------- shared pieces of the gradient attacks


def as_batch_eps(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The budget as a per-sample vector ``[B]`` on ``x``'s device and dtype (a float is broadcast)."""
    eps = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if eps.dim() == 0:
        return eps.expand(x.shape[0]).clone()
    if eps.shape != (x.shape[0],):
        raise ValueError(f"eps must be a float or a [B] tensor with B={x.shape[0]}, got shape {tuple(eps.shape)}")
    return eps


def is_adversarial(logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """``[B]`` bool: the prediction differs from ``y`` (untargeted) or equals the target ``y`` (targeted)."""
    pred = logits.argmax(dim=1)
    return pred == y if targeted else pred != y


def _others_logsumexp(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``logsumexp_{j != y} f_j`` per sample ``[B]`` (``-inf`` for a single class)."""
    return logits.scatter(1, y[:, None], float("-inf")).logsumexp(dim=1)


def attack_loss(
    logits: torch.Tensor, y: torch.Tensor, loss: str = "ce", targeted: bool = False, *, scale_free: bool = False
) -> torch.Tensor:
    """Per-sample objective ``[B]`` the gradient attacks *ascend*; ``logits`` ``[B,K]``, ``y`` ``[B]``.

    ``ce``: cross-entropy of the true label (untargeted) or minus that of the target (targeted), evaluated
    as ``CE = softplus(s)`` with ``s = logsumexp_{j!=y} f_j - f_y`` (the same value as ``-log softmax_y``).
    Why this form: the textbook backward ``softmax - onehot`` forms ``p_y - 1`` by cancellation, which in
    float32 is exactly 0 once ``1 - p_y`` is below about 3e-8 (margin above ~17): the true-class term drops
    out of the input gradient and FGSM/PGD step along a wrong direction. Here ``dCE/df`` is
    ``sigmoid(s) * (softmax_{j!=y}(f), -1)`` (y-th entry -1): no cancellation.
    ``margin``: ``max_{j!=y} f_j - f_y`` (untargeted, the Carlini-Wagner margin) or ``f_t - max_{j!=t} f_j``
    (targeted); unlike CE its gradient does not vanish on confidently classified points.

    ``scale_free`` (``ce`` only): return ``s`` itself, whose gradient is ``grad CE / sigmoid(s)``: per sample
    the same direction as CE's, but the factor ``sigmoid(s) ~ exp(s)``, which underflows to 0 in float32
    once the margin exceeds ~100 (a blind, all-zero gradient), is gone. For attacks that only use the
    direction (sign, l2-normalised or top-k steps); the value is not the cross-entropy.
    """
    if loss == "ce":
        s = _others_logsumexp(logits, y) - logits.gather(1, y[:, None]).squeeze(1)
        ce = s if scale_free else torch.nn.functional.softplus(s)
        return -ce if targeted else ce
    if loss == "margin":
        m = margin(logits, y)
        return m if targeted else -m
    raise ValueError(f"unknown loss {loss!r}; expected 'ce' or 'margin'")


def loss_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce", targeted: bool = False,
    *, scale_free: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_x sum_b loss_b, logits)``: the per-sample input gradient ``[B,C,H,W]`` and the logits ``[B,K]``.

    The loss is summed (not averaged) so each sample's gradient carries no ``1/B`` factor. Runs with grad
    enabled even when called under ``torch.no_grad()``; only ``x`` requires grad, so nothing reaches the
    parameters (call inside ``frozen_eval``). ``scale_free``: see ``attack_loss`` (direction-only users).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x)
        objective = attack_loss(logits, y, loss, targeted, scale_free=scale_free)
        (grad,) = torch.autograd.grad(objective.sum(), x)
    return grad, logits.detach()


def _caps(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """How far each value of ``v`` may move in its own direction before the box stops it (``>= 0``)."""
    return torch.where(v > 0, hi, -lo).clamp_min(0)


def _project_l2_box(v: torch.Tensor, eps: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of ``v`` ``[B, d]`` onto ``{||r||_2 <= eps} ∩ [lo, hi]`` (``lo <= 0 <= hi``).

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


def project(delta: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Map a perturbation ``delta`` ``[B,C,H,W]`` into ``{||r|| <= eps} ∩ {x + r in [0,1]}``; ``eps`` ``[B]``.

    All three are exact Euclidean projections onto the intersection (linf: a per-value clamp; l2 and l1:
    a scalar KKT multiplier found in closed form by sorting the breakpoints, see ``_project_l2_box`` and
    ``_project_l1_box``).
    """
    if norm == "linf":
        e = view_as_images(eps, delta)
        return (x + torch.maximum(torch.minimum(delta, e), -e)).clamp(0, 1) - x
    if norm == "l2":
        flat = _project_l2_box(delta.flatten(1), eps, -x.flatten(1), (1 - x).flatten(1))
    elif norm == "l1":
        flat = _project_l1_box(delta.flatten(1), eps, -x.flatten(1), (1 - x).flatten(1))
    else:
        raise ValueError(f"projection onto the {norm!r} ball is not supported")
    return flat.view_as(delta)


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


# ---------------------------------------------------------------- eps search around a budget attack


def search_eps(
    attack: Callable,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    lo: float | torch.Tensor,
    hi: float | torch.Tensor,
    steps: int,
    params: dict | None = None,
    *,
    return_adv: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-sample adversarial distance of a budget attack by batched bisection over ``eps``.

    Every round calls ``attack(model, x, y, norm=norm, eps=mid, **params)`` once on the whole batch with a
    per-sample ``mid`` ``[B]``, re-runs the model on the result and counts a success only where the output
    is misclassified and within ``mid`` (re-verified, never trusted). The bracket ``[lo, hi]`` shrinks to
    the succeeding half per sample, so after ``steps`` rounds ``hi - lo = (hi0 - lo0) / 2^steps``.

    Args:
        attack: a function registered with ``budget=True``.
        x: ``[B,C,H,W]`` in [0,1]; y: ``[B]`` labels (targets when ``params["targeted"]``).
        lo, hi: float or ``[B]`` starting bracket; ``hi`` is tried first and samples where it fails get inf.
        steps: bisection rounds after that first try (``steps + 1`` attack calls in all).
        params: the attack's own options (a dict, so its ``steps`` cannot clash with this one).
        return_adv: also return the adversarial images ``[B,C,H,W]`` found at the returned eps (``x`` where
            none; the distance to report is then ``batch_norm(x_adv - x)``, which is at most ``dist``).

    Returns:
        ``[B]`` distances: 0 where ``x`` is already misclassified, the smallest eps at which the attack
        succeeded otherwise, ``inf`` where it failed even at ``hi``.
    """
    params = dict(params or {})
    targeted = bool(params.get("targeted", False))
    lo_t, hi_t = as_batch_eps(lo, x).clone(), as_batch_eps(hi, x).clone()

    def succeeds(eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = attack(model, x, y, norm=norm, eps=eps, **params)
        with torch.no_grad(), frozen_eval(model):
            ok = is_adversarial(model(x_adv), y, targeted)
        ok = ok & (batch_norm(x_adv - x, norm) <= eps * (1 + 1e-6))
        return ok, x_adv

    with torch.no_grad(), frozen_eval(model):
        clean = is_adversarial(model(x), y, targeted)
    found, best = succeeds(hi_t)
    for _ in range(steps):
        mid = (lo_t + hi_t) / 2
        ok, x_adv = succeeds(mid)
        hi_t = torch.where(ok, mid, hi_t)
        lo_t = torch.where(ok, lo_t, mid)
        best = torch.where(view_as_images(ok, x), x_adv, best)
    dist = torch.where(found, hi_t, torch.full_like(hi_t, float("inf")))
    dist = torch.where(clean, torch.zeros_like(dist), dist)
    best = torch.where(view_as_images(found & ~clean, x), best, x)
    return (dist, best) if return_adv else dist


# ---------------------------------------------------------------- search along a path


def first_crossing(
    model: nn.Module,
    y: torch.Tensor,
    path: Callable[[torch.Tensor], torch.Tensor],
    grid: torch.Tensor,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a per-sample path ``t -> path(t)`` first leaves the class ``y``: grid scan, then bisection.

    Args:
        model: called under ``torch.no_grad`` (inside ``frozen_eval`` of the caller).
        y: ``[B]`` true labels.
        path: maps ``t`` ``[B]`` to images ``[B,C,H,W]``; ``path(0)`` is the clean input.
        grid: ``[G]`` or ``[B, G]`` increasing positive values of ``t`` to scan.
        steps: bisection rounds between the last correct grid value (or 0) and the first misclassified one.

    Returns:
        ``(t, found)``: ``t`` ``[B]`` a value where ``path(t)`` is misclassified (within
        ``(grid interval) / 2^steps`` of a crossing; the smallest misclassified grid value refined), and
        ``found`` ``[B]`` bool, False where no grid value is misclassified (``t`` is then the last grid value).
    """
    b = y.shape[0]
    if grid.dim() == 1:
        grid = grid.expand(b, -1)
    lo = torch.zeros(b, dtype=grid.dtype, device=grid.device)
    hi = grid[:, -1].clone()
    found = torch.zeros(b, dtype=torch.bool, device=grid.device)
    with torch.no_grad():
        for g in range(grid.shape[1]):
            t = grid[:, g]
            bad = is_adversarial(model(path(t)), y) & ~found
            hi = torch.where(bad, t, hi)
            found = found | bad
            lo = torch.where(found, lo, t)  # the last correct grid value before the first crossing
            if bool(found.all()):
                break
        for _ in range(steps):
            mid = (lo + hi) / 2
            bad = is_adversarial(model(path(mid)), y)
            hi = torch.where(bad & found, mid, hi)
            lo = torch.where(bad | ~found, lo, mid)
    return hi, found
