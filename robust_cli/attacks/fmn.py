"""FMN: Fast Minimum-Norm attack (Pintor et al. 2021, "Fast minimum-norm adversarial attacks through
adaptive norm constraints", §2, Algorithm 1), minimal l0, l1, l2 and linf.

Per iteration ``k`` (one forward and backward pass) on the logit margin ``m`` (eq 1: the attack succeeds at
``m < 0``): the radius ``eps`` of the norm ball shrinks to ``min(eps (1 - gamma_k), ||best||)`` while the
point is adversarial, grows to ``eps (1 + gamma_k)`` once one was found and the point is not, and before any
is found jumps to ``||delta|| + |m| / ||grad m||_*`` (the linear estimate of the distance to the boundary,
``*`` the dual norm; §2.1; here aimed ``gamma_k`` beyond it, else on a (locally) linear model the
iterates sit exactly on the boundary, never adversarial, and ``eps`` never grows); ``delta`` then steps
by ``alpha_k`` along the l2-normalised gradient descending ``m`` and is projected onto the ball
(``gamma_k``, ``alpha_k``: cosine annealing). l0 moves
``eps`` by at least one pixel and keeps the ``eps`` largest pixels. Here the projection for l1, l2 and
linf is by default the exact Euclidean projection onto ball ∩ box (``geometry.project``); ``projection=ball``
is the authors' (Algorithm 1 and their code): onto the ball, then clipped to the box. The clipped
point is inside the ball but not the nearest feasible point, so the two end in different local minima; the
exact one succeeds more often (BENCHMARKS.md, issue 10), the authors' one is kept as an option for the
``minimal`` ensemble, whose members are meant to land in different basins.

``x_init`` (``[B,C,H,W]``, e.g. the best point of an earlier attack): where it is adversarial, a binary
search of ``BOUNDARY_SEARCH_STEPS`` rounds on the segment from ``x`` (for l0: on the number of its largest pixels
kept) finds the boundary, and the attack starts there (the paper's warm start, §2.2).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Optional

import torch
from torch import nn

from robust_cli.attacks.contract import frozen_eval, norms_with, register_attack
from robust_cli.attacks.geometry import Projector, batch_norm, project_ball, view_as_images
from robust_cli.attacks.losses import loss_value_gradient
from robust_cli.attacks.best import Best, worst_norm
from robust_cli.norms import check_norm
from robust_cli.schema import Range, schema_of

DUAL = {"l1": "linf", "l2": "l2", "linf": "l1"}
#: binary-search rounds towards the boundary from ``x_init`` (the authors' 10: the segment to 1e-3 of its length)
BOUNDARY_SEARCH_STEPS = 10


def _keep_top_pixels(delta: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``delta`` ``[B,C,H,W]`` with all but its ``k`` ``[B]`` largest pixels (max over channels) zeroed."""
    mag = delta.abs().amax(dim=1).flatten(1)
    k = k.long().clamp(0, mag.shape[1])
    ranked = mag.sort(dim=1, descending=True).values
    thr = ranked.gather(1, (k - 1).clamp_min(0)[:, None])
    keep = (mag >= thr) & (k[:, None] > 0)
    return delta * keep.view(delta.shape[0], 1, *delta.shape[2:]).to(delta.dtype)


def _toward(x: torch.Tensor, x_init: torch.Tensor, t: torch.Tensor, norm: str) -> torch.Tensor:
    """The point a fraction ``t`` ``[B]`` of the way from ``x`` to ``x_init`` (l0: that fraction of pixels)."""
    r = x_init - x
    if norm == "l0":
        return x + _keep_top_pixels(r, torch.ceil(t * r[0, 0].numel()))
    return x + view_as_images(t, x) * r


def _boundary_start(model, x, y, x_init, norm, targeted, steps, best) -> torch.Tensor:
    """The perturbation at the boundary between ``x`` and the adversarial ``x_init`` (zero where it is not)."""
    x_init = x_init.to(x).clamp(0, 1)
    with torch.no_grad():
        logits = model(x_init)
    ok = best.update(x_init, logits)
    lo, hi = torch.zeros_like(best.size), torch.ones_like(best.size)
    for _ in range(steps):
        mid = (lo + hi) / 2
        xm = _toward(x, x_init, mid, norm)
        with torch.no_grad():
            adv = best.update(xm, model(xm))
        hi, lo = torch.where(adv, mid, hi), torch.where(adv, lo, mid)
    return torch.where(view_as_images(ok, x), _toward(x, x_init, hi, norm) - x, torch.zeros_like(x))


def _advlib_l1_ball(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``delta`` ``[B,C,H,W]`` projected onto the l1 ball of radius ``eps`` ``[B]`` (no box), by sorting (Duchi et
    al. 2008, "Efficient projections onto the l1-ball for learning in high dimensions", Fig. 1), in adv-lib
    0.2.8's order of float operations: the threshold ``tau`` is the running mean ``(cumsum_k - eps) / k`` at the
    last ``k`` where it is below the ``k``-th largest ``|delta|``. Rows already inside are returned untouched.
    ``geometry.project_ball`` computes the same map by another route, whose rounding differs."""
    flat = delta.flatten(1)
    outside = flat.norm(p=1, dim=1) > eps
    if not bool(outside.any()):
        return delta
    mag = flat[outside].abs()
    ranked = mag.sort(dim=1, descending=True).values
    k = torch.arange(flat.shape[1], device=flat.device)
    means = ranked.cumsum(1).sub_(eps[outside, None]).div_(k + 1)
    last = (means < ranked).long().mul_(k).amax(1, keepdim=True)
    shrunk = mag.sub_(means.gather(1, last)).clamp_(min=0).copysign_(flat[outside])
    flat = flat.clone()
    flat[outside] = shrunk
    return flat.view_as(delta)


@register_attack(norms=("l0", "l1", "l2", "linf"), budget=False,
                 option_norms={"projection": {"advlib": ("l1", "l2", "linf")}})
def fmn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, x_init: Optional[torch.Tensor] = None,
        steps: Annotated[int, Range(ge=1)] = 100, lr: Annotated[float, Range(gt=0)] = 1.0,
        lr_final: Annotated[float, Range(gt=0)] = 0.01, gamma: Annotated[float, Range(gt=0, lt=1)] = 0.05,
        gamma_final: Annotated[float, Range(gt=0, lt=1)] = 0.001,
        targeted: bool = False, projection: Literal["exact", "ball", "advlib"] = "exact") -> torch.Tensor:
    """FMN (Algorithm 1); ``x`` ``[B,C,H,W]`` in [0,1], ``y`` ``[B]`` (targets when ``targeted``).

    Args:
        x_init: optional starting adversarials ``[B,C,H,W]`` (those that are not adversarial are ignored).
        steps: iterations (the paper: 1,000 at most; 100 already near its final norms on MNIST).
        lr: the first step ``alpha`` along the unit gradient (the paper: 1 for l2/l1/l0, linf
            trains smaller steps on its own via the projection) ...
        lr_final: ... annealed by a cosine to ``lr * lr_final`` (the paper: ``alpha_0 / 100``).
        gamma: the first relative change of ``eps`` (the paper: 0.05) ... gamma_final: ... annealed to this.
        targeted: ``y`` holds targets.
        projection: ``exact`` (onto ball ∩ box) or ``ball`` (onto the ball, then clipped to the box: the
            authors'); l0 keeps its largest pixels either way, and for linf the two are the same map.
            ``advlib`` (l1, l2 and linf): adv-lib 0.2.8's FMN, step for step and in its order of operations and
            float rounding, so that on one machine and batch it retraces that run from the clean image bit for
            bit (with ``x_init`` the boundary search is ours). Before the first success
            ``eps = ||delta|| + |m| / ||grad m||_*`` without the ``gamma_k`` margin (Algorithm 1 as
            printed). In l2 ``delta`` is rescaled onto the sphere ``||delta|| = eps`` every step (adv-lib's
            ``clamp_(max=1)`` falls on ``delta``, not on the scale, so the ball's inside is never used), then
            clipped to the box; in linf it is clipped to ``[-eps, eps]`` and to the box (the same map as ours);
            in l1 it is projected onto the ball alone by sorting (``_advlib_l1_ball``), then clipped to the box.
            It fails more often (adv-lib's FMN-l2 at 300 steps fooled 77 of 100 MNIST images, ours all,
            BENCHMARKS.md), but it is a draw of other local minima for the ``minimal`` ensemble (BENCHMARKS.md,
            issue 10, sessions 8 and 10). Called ``sphere`` (l2 only) before session 10.

    Returns:
        ``[B,C,H,W]`` in [0,1]: per sample the smallest-norm adversarial iterate, ``x`` where none was found.
    """
    check_norm(norm, fmn.norms, who="fmn")
    supported, why = norms_with(fmn, {"projection": projection})  # the registration's option_norms, once
    if norm not in supported:
        raise ValueError(f"fmn{why} supports {', '.join(supported)} only, got norm={norm!r}")
    advlib = projection == "advlib"
    x, y = x.detach(), y.to(x.device)
    B = x.shape[0]
    cap = worst_norm(x, norm)
    # advlib in l1: adv-lib measures sizes with norm(p=1), whose summation rounds unlike batch_norm's, and keeps
    # its own smallest adversarial size (``kept``) for eps
    l1_sizes = advlib and norm == "l1"
    if l1_sizes:
        cap = torch.maximum(x, 1 - x).flatten(1).norm(p=1, dim=1)
        kept = cap.clone()
    with frozen_eval(model):
        best = Best(x, norm, y=y, targeted=targeted, dtype=x.dtype)
        delta = torch.zeros_like(x)
        if x_init is not None:
            delta = _boundary_start(model, x, y, x_init, norm, targeted, BOUNDARY_SEARCH_STEPS, best)
        found = torch.isfinite(best.size)
        if norm == "l0":
            eps = torch.where(found, best.size, torch.ones_like(best.size))
        else:
            eps = torch.full((B,), float("inf"), device=x.device, dtype=x.dtype)
        proj = None if norm == "l0" or advlib else Projector(x, norm)
        for k in range(steps):
            cosine = (1 + math.cos(math.pi * k / steps)) / 2
            if advlib:  # the same number, in adv-lib's float rounding
                alpha = lr * lr_final + (lr - lr * lr_final) * cosine
            else:
                alpha = lr * (lr_final + (1 - lr_final) * cosine)
            g = gamma_final + (gamma - gamma_final) * cosine
            # advlib: adv-lib keeps delta itself (already in the box) and measures it, not xa - x; else x + delta
            # in the buffer of delta (owned, not needed after)
            xa = x + delta if advlib else delta.add_(x).clamp_(0, 1)
            # ascend -m (untargeted) or m towards the target: attack_loss "margin", its value |m| reused below
            value, grad, logits = loss_value_gradient(model, xa, y, "margin", targeted)
            r = delta if advlib else xa - x
            adv = best.update(xa, logits, r=r)
            if k == steps - 1:  # the next point would never be evaluated
                break
            found |= adv
            size = best.last_size  # ||xa - x||, measured by the update
            smallest = best.size
            if l1_sizes:
                size = delta.flatten(1).norm(p=1, dim=1)
                kept = smallest = torch.where(adv & (size < kept), size, kept)
            gn = batch_norm(grad, "l2").clamp_min(1e-12 if advlib else 1e-30)
            if norm == "l0":
                eps = torch.where(adv, torch.minimum(torch.minimum(eps - 1, (eps * (1 - g)).floor()), best.size),
                                  torch.maximum(eps + 1, (eps * (1 + g)).floor())).clamp_min(0)
            else:
                if norm == "l2":
                    dual = gn
                elif advlib:  # adv-lib's dual norm of the gradient (its summation order) and clamp
                    dual = grad.flatten(1).norm(p=1 if norm == "linf" else math.inf, dim=1).clamp_min(1e-12)
                else:
                    dual = batch_norm(grad, DUAL[norm]).clamp_min(1e-30)
                to_boundary = value.abs_() / dual
                first = size + to_boundary if advlib else (size + to_boundary) * (1 + g)
                eps = torch.where(adv, torch.minimum(eps * (1 - g), smallest),
                                  torch.where(found, eps * (1 + g), first))
            eps = torch.minimum(eps, cap)
            if advlib:
                delta = delta.addcdiv(grad, view_as_images(gn, x), value=alpha)
                if norm == "l2":
                    scale = eps / batch_norm(delta, "l2").clamp_min(1e-12)
                    delta = delta.mul_(view_as_images(scale, x)).clamp_(max=1)
                elif norm == "l1":
                    delta = _advlib_l1_ball(delta, eps)
                else:
                    e = view_as_images(eps, x)
                    delta = torch.maximum(torch.minimum(delta, e), -e)
                delta = delta.add_(x).clamp_(0, 1).sub_(x)
                continue
            delta = r.add_(grad.mul_(alpha).div_(view_as_images(gn, x)))  # xa - x + alpha grad / ||grad||
            l0 = norm == "l0"
            if l0:
                delta = _keep_top_pixels((x + delta).clamp(0, 1) - x, eps)
            elif projection == "ball":
                delta = project_ball(delta, eps, norm).add_(x).clamp_(0, 1).sub_(x)
            else:
                delta = proj.project_(delta, eps)
    return best.x_adv


SCHEMAS = {"fmn": schema_of(fmn, "fmn")}
