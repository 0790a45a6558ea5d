"""The Brendel & Bethge attack (Brendel et al. 2019, "Accurate, reliable and fast robustness evaluation", §3,
Algorithm 1), l2, minimal-norm, refining a starting adversarial along the decision boundary.

Start: ``x_init`` where misclassified, else the l2 DeepFool point (a cheap attack); a bisection on the
segment to ``x`` (``search_steps`` rounds) brings it to the boundary. At the current adversarial ``x_k``,
with ``c(z) = max_{j != y} f_j(z) - f_y(z)`` (``> 0``: adversarial) and ``g = grad c(x_k)``, each step solves
the trust-region problem of §3 (eq. 2)::

    min_z ||z - x||_2   s.t.   c(x_k) + g . (z - x_k) = margin,   z in [0,1],   ||z - x_k||_2 <= r

Without the trust region its solution is ``z(mu) = clip(x - mu g, 0, 1)`` with the multiplier ``mu`` set by
the linear constraint (monotone: a bisection), the closed form of the l2 case; the trust region then scales
the step back to length ``r = lr * ||x_k - x||`` (the paper's step-size control, ``lr`` halved on a step that
leaves the adversarial region and grown by 1.5 on an accepted one). The smallest misclassified iterate is
kept. One forward and backward per step.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from robust_cli.attacks.best import Best, blend
from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.deepfool import deepfool
from robust_cli.attacks.geometry import view_as_images
from robust_cli.attacks.line_search import first_crossing
from robust_cli.schema import Range, schema_of


def _boundary_logit(model: nn.Module, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c [b], grad c [b,C,H,W])`` with ``c = max_{j != y} f_j - f_y``."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        logits = model(z)
        c = logits.scatter(1, y[:, None], float("-inf")).amax(1) - logits.gather(1, y[:, None]).squeeze(1)
        (g,) = torch.autograd.grad(c.sum(), z)
    return c.detach(), g


def project_on_plane(x: torch.Tensor, g: torch.Tensor, level: torch.Tensor, iters: int = 40) -> torch.Tensor:
    """``argmin ||z - x||_2`` over ``z`` in [0,1] with ``g . z = level`` ``[b]`` (as near as the box allows)."""
    gf, xf = g.flatten(1), x.flatten(1)
    scale = 1.0 / gf.norm(dim=1).clamp_min(1e-12) ** 2
    lo = torch.full_like(level, -1.0)
    hi = torch.ones_like(level)
    for _ in range(60):  # widen until the bracket holds the level (g . z(mu) is increasing in mu)
        hi_ok = ((xf + (hi * scale)[:, None] * gf).clamp(0, 1) * gf).sum(1) >= level
        lo_ok = ((xf + (lo * scale)[:, None] * gf).clamp(0, 1) * gf).sum(1) <= level
        if bool(hi_ok.all() and lo_ok.all()):
            break
        hi, lo = torch.where(hi_ok, hi, hi * 2), torch.where(lo_ok, lo, lo * 2)
    for _ in range(iters):
        mid = (lo + hi) / 2
        above = ((xf + (mid * scale)[:, None] * gf).clamp(0, 1) * gf).sum(1) >= level
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
    return (xf + (hi * scale)[:, None] * gf).clamp(0, 1).view_as(x)


@register_attack(norms=("l2",), budget=False)
def bb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l2",
    x_init: torch.Tensor | None = None,
    steps: Annotated[int, Range(ge=1)] = 200,
    lr: Annotated[float, Range(gt=0)] = 0.5,
    overshoot: Annotated[float, Range(ge=0)] = 1e-4,
    search_steps: Annotated[int, Range(ge=0)] = 10,
) -> torch.Tensor:
    """Brendel & Bethge l2 on ``x`` ``[B,C,H,W]`` in [0,1], true labels ``y`` ``[B]``.

    Args:
        x_init: ``[B,C,H,W]`` or None: starting adversarials (DeepFool's point where none is misclassified).
        steps: trust-region steps (one forward and backward each).
        lr: the initial trust-region radius as a fraction of the current distance.
        overshoot: the logit margin ``c`` aimed at on the adversarial side of the linearised boundary.
        search_steps: bisection rounds from the start towards ``x``.

    Returns:
        ``[B,C,H,W]``: the smallest misclassified point per image, ``x`` where no start was found.
    """
    if norm != "l2":
        raise ValueError(f"bb supports l2 only, got norm={norm!r}")
    x = x.detach()
    with frozen_eval(model):
        best = Best(x, "l2")
        best.start(model, y, x_init)
        missing = (~best.found).nonzero().squeeze(1)
        if missing.numel():
            best.check(model, deepfool(model, x[missing], y[missing], norm="l2"), y[missing], missing)
        rows = best.found.nonzero().squeeze(1)
        if rows.numel() == 0:
            return best.x_adv
        far = best.x_adv[rows].clone()
        t, _ = first_crossing(model, y[rows], lambda t: blend(x[rows], far, t),
                              torch.ones(1, dtype=x.dtype, device=x.device), search_steps)
        best.check(model, blend(x[rows], far, t), y[rows], rows)
        x0, yr = x[rows], y[rows]
        cur = best.x_adv[rows].clone()
        c, g = _boundary_logit(model, cur, yr)
        radius = torch.full((len(rows),), lr, dtype=x.dtype, device=x.device)
        for _ in range(steps):
            level = (g * cur).flatten(1).sum(1) - c + overshoot
            z = project_on_plane(x0, g, level)
            step = z - cur
            dist = (cur - x0).flatten(1).norm(dim=1)
            length = step.flatten(1).norm(dim=1).clamp_min(1e-12)
            shrink = torch.minimum(torch.ones_like(length), radius * dist / length)
            prop = (cur + view_as_images(shrink, step) * step).clamp(0, 1)
            c_new, g_new = _boundary_logit(model, prop, yr)
            ok = c_new > 0
            best.offer(prop, ok, rows)
            keep = view_as_images(ok, cur)
            cur, g = torch.where(keep, prop, cur), torch.where(keep, g_new, g)
            c = torch.where(ok, c_new, c)
            radius = torch.where(ok, (radius * 1.5).clamp_max(1.0), radius / 2).clamp_min(1e-6)
    return best.x_adv


SCHEMAS = {"bb": schema_of(bb, "bb")}
