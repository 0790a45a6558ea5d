"""The Brendel & Bethge attack (Brendel et al. 2019, "Accurate, reliable and fast robustness evaluation", §3,
Algorithm 1), minimal-norm in l2, linf, l1 and l0, refining a starting adversarial along the decision boundary.

Start: ``x_init`` where misclassified, else the point of the ``init`` attack (DeepFool by default, of the same
norm family: l2 DeepFool for l2/l1/l0, linf DeepFool for linf; or 100 steps of DDN or FMN); a bisection on a
path to ``x`` (``search_steps`` rounds; ``shrink_towards``: linf clips the perturbation, l1 soft-thresholds it,
l2 / l0 blend, as foolbox does) brings it to the boundary. At the iterate ``x_k``, with ``c(z) = max_{j != y}
f_j(z) - f_y(z)`` (``> 0``: adversarial), the boundary normal
``b_k`` is the momentum average of ``grad c`` (§3, "we average the boundary normal over the last steps";
``momentum``), and each step solves the problem of §3 (eq. 2)::

    x_{k+1} = argmin_z ||z - x||_p   s.t.   c(x_k) + b_k . (z - x_k) = c*,   ||z - x_k||_2 <= r_k,   z in [0,1]

``c* = overshoot_frac * |c(x_k)|``: an adversarial iterate aims at a tenth of its margin (moving towards the
boundary and staying on the adversarial side), a non-adversarial one at a tenth beyond it (the paper's
overshoot, 1.1). Two solvers (``step``; ``STEP_DEFAULT`` per norm): ``exact`` solves the three constraints
jointly (``trust_region.trust_region_step``: the plane's multiplier exactly, by Newton steps on a
piecewise-linear function, the region's by a bracketing root search on the step length; l2, linf, l1; l0, a
combinatorial problem, through its Lagrangian dual, each pixel either clean or on its clipped l2 step, as
foolbox's reference implementation), ``scaled`` takes the minimiser on the plane and the box alone
(``project_on_plane``: l2 a bisection on the multiplier, linf a bisection on the radius, l1 the fractional
knapsack — move the coordinates of largest ``|b_i|`` to their bound first — l0 the same ranking by what a
whole pixel can contribute) and scales the step back into the region (exact for l2 without the box when
``x_k`` lies on the plane; otherwise it leaves the plane whenever the region binds). The trust region ``r_k``
starts at ``lr`` times the starting distance (in l2, for every norm; ``LR_DEFAULT`` per norm, ``SCALED_L0``
for l0's scaled step) and halves ``lr_num_decay`` times over the run, as the paper's step-size schedule. Every
iterate is accepted (the linear constraint pulls a point that crossed back to the boundary); the smallest
misclassified iterate is kept. One forward and backward per step.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from torch import nn

from robust_cli.attacks.best import Best, blend
from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.ddn import ddn
from robust_cli.attacks.deepfool import deepfool
from robust_cli.attacks.fmn import fmn
from robust_cli.attacks.geometry import view_as_images
from robust_cli.attacks.line_search import first_crossing
from robust_cli.attacks.trust_region import trust_region_step
from robust_cli.norms import check_norm
from robust_cli.schema import Range, schema_of


LR_DEFAULT = {"l2": 0.3, "linf": 10.0, "l1": 3.0, "l0": 30.0}
"""``lr`` where none is given, per norm (measured: BENCHMARKS.md, "B&B against foolbox's Brendel & Bethge").
The region is an l2 ball, but only in l2 is the minimiser on the plane a short correction of ``x_k``: l2
keeps 0.3 (1 to 10 were 0.6% worse on MNIST, equal on digits). The linf minimiser moves every coordinate to
the new radius and the l1 / l0 one moves a different few coordinates to their bounds, a step as long in l2
as the perturbation itself, so a 0.3 region cuts the early steps to a fraction and the iterate crawls: 3 to
10 times the starting distance (the region binds only once it has halved a few times) made l1 47% and l0 45%
smaller on MNIST LeNet-5 at 200 steps, linf 0.7%; l1 was best at 1-3 and a little worse above, l0 and linf
at 10 or more. l0's 30 is for its exact step (``SCALED_L0`` keeps the scaled step's 10): from foolbox's start
on the MNIST LeNet-5 (1000 steps, momentum 0.8) 10 / 30 / 100 ended at a mean of 4.625 / 4.5625 / 4.646
pixels, 1 and 0.3 (momentum 0.9) at 4.81 and 5.15 (BENCHMARKS.md, "l0 B&B step (session 4)")."""


def shrink_towards(x: torch.Tensor, far: torch.Tensor, t: torch.Tensor, norm: str) -> torch.Tensor:
    """The start's search path from ``x`` (``t = 0``) to ``far`` (``t = 1``), ``[B,C,H,W]``, ``t`` ``[B]``.

    The path shrinks the perturbation ``d = far - x`` in the norm attacked (as foolbox's ``mid_points``):
    linf clips ``d`` to ``t ||d||_inf`` (the large values shrink, the small ones stay: a smaller linf point
    than the blend at the same margin), l1 soft-thresholds it by ``(1 - t) max|d|`` (the small values vanish
    first), l2 and l0 blend (``x + t d``).
    """
    d = far - x
    top = d.flatten(1).abs().amax(1)
    if norm == "linf":
        cap = view_as_images(t * top, d)
        return x + torch.minimum(torch.maximum(d, -cap), cap)
    if norm == "l1":
        cut = view_as_images((1 - t) * top, d)
        return x + d.sign() * (d.abs() - cut).clamp_min(0)
    return blend(x, far, t)


STEPS_DEFAULT = {"l2": 1000, "linf": 1000, "l1": 1000, "l0": 1000}
"""``steps`` where none is given, per norm: the paper's and foolbox's 1000 (the l0 scaled step: ``SCALED_L0``)."""


MOMENTUM_DEFAULT = {"l2": 0.9, "linf": 0.8, "l1": 0.8, "l0": 0.8}
"""``momentum`` where none is given, per norm: 0.9 in l2 (better than the paper's 0.8 on the first MNIST
LeNet-5, BENCHMARKS.md; on a retrained one equal within a draw), the paper's 0.8 for l0's exact step (from
foolbox's start on the MNIST LeNet-5 at lr 10 and 1000 steps, 0.7 / 0.8 / 0.9 ended at 4.69 / 4.625 / 4.67
pixels; at lr 30, 0.8 / 0.9 at 4.5625 / 4.71), for linf and for l1 (from foolbox's very starts on MNIST test
images 0-159 of a retrained LeNet-5, 1000 steps, ours within 0.1% of foolbox's B&B on linf 83 of 119 images at
0.9, 104 at 0.8, l1 125 / 138 of 158; in the ``minimal`` ensemble, within 0.1% of the peers' per-image minimum,
linf 117 -> 119 of 119 and l1 156 -> 157 of 158, the digits LeNet-5 unchanged at 94 of 94 in both;
BENCHMARKS.md, issue 10, session 11)."""


SCALED_L0 = {"lr": 10.0, "momentum": 0.9, "steps": 3000}
"""The defaults of l0 with ``step=scaled`` (the pixel-ranked knapsack scaled into the region), measured for
that step in sessions 2-3: it converges slowly rather than wrongly; from the same starts on the MNIST
LeNet-5, 1000 steps ended at a mean l0 of 4.77 where foolbox's ended at 4.60, and 3000 reach 4.60; ``lr``,
``momentum`` or ``overshoot_frac`` at 1000 steps did not (BENCHMARKS.md, "`attack=minimal` against the
per-image minimum over every peer")."""


STEP_DEFAULT = {"l2": "exact", "linf": "exact", "l1": "exact", "l0": "exact"}
"""``step`` where none is given, per norm (BENCHMARKS.md, issue 10). On the digits LeNet-5 (94 images) the
exact step ended at or below the peers' per-image minimum (foolbox's B&B included) on more images: within
0.1%, B&B from the same ensemble points linf 0.904 -> 0.936 and l1 0.894 -> 0.936; in l2 the whole ensemble
at most 1e-6 above it 0.404 -> 0.915 (within 0.1% unchanged, 0.968). Its cost on 50 MNIST images
(``scripts/bench_bb_step.py``, CPU s a step at 20 steps, l2 / linf / l1): 0.033 / 0.054 / 0.072 against
0.010 for ``scaled`` (2.9x / 5.5x / 7.5x; the first version, which sorted all breakpoints in 16-20 bisection
rounds of the outer multiplier, cost 7.6x / 9.3x / 17.9x): ``scaled`` is still the cheap option. l0's
problem is combinatorial; its ``exact`` step solves the Lagrangian dual (``trust_region._l0_region_step``,
as foolbox's reference implementation). On the MNIST LeNet-5 (48 images), at a third of the steps: from the
peers' start a mean of 4.5625 pixels against ``scaled``'s 4.6042 (foolbox's B&B 4.6042), within 0.1% of the
per-image minimum on 0.938 of the images against 0.896 (from our ensemble's start 0.771 against 0.792); the
whole ``minimal`` ensemble 0.917 -> 0.958, at 0.39x the passes and 3.2x the seconds (a step costs ~50 ms
on 48 images against ~8 ms; BENCHMARKS.md, "l0 B&B step (session 4)")."""


def _boundary_logit(model: nn.Module, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c [b], grad c [b,C,H,W])`` with ``c = max_{j != y} f_j - f_y``."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        logits = model(z)
        c = logits.scatter(1, y[:, None], float("-inf")).amax(1) - logits.gather(1, y[:, None]).squeeze(1)
        (g,) = torch.autograd.grad(c.sum(), z)
    return c.detach(), g


def _project_l2(xf, gf, level, iters):
    scale = 1.0 / gf.norm(dim=1).clamp_min(1e-12) ** 2
    lo, hi = torch.full_like(level, -1.0), torch.ones_like(level)
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
    return (xf + (hi * scale)[:, None] * gf).clamp(0, 1)


def _project_linf(xf, gf, level, iters):
    # move every coordinate by t in the direction that raises (or lowers) g . z; g . z(t) is monotone in t
    up = (level >= (gf * xf).sum(1)).to(xf.dtype) * 2 - 1
    d = up[:, None] * gf.sign()
    lo, hi = torch.zeros_like(level), torch.ones_like(level)
    for _ in range(iters):
        mid = (lo + hi) / 2
        reached = up * (((xf + mid[:, None] * d).clamp(0, 1) * gf).sum(1) - level) >= 0
        hi, lo = torch.where(reached, mid, hi), torch.where(reached, lo, mid)
    return (xf + hi[:, None] * d).clamp(0, 1)


def _project_sparse(x, g, level, norm):
    """l1 / l0: a fractional knapsack. Each unit (a value for l1; a pixel, all its channels, for l0) moves
    to the bound that changes ``g . z`` towards ``level``; units are taken in the order of the change they
    buy per unit of norm (l1: ``|g_i|``; l0: what the whole pixel can contribute), the last one partly."""
    b, ch = x.shape[0], x.shape[1] if x.dim() == 4 else 1
    xf, gf = x.reshape(b, ch, -1), g.reshape(b, ch, -1)
    need = level - (gf * xf).sum((1, 2))  # [b] the change of g . z to buy
    up = (need >= 0).to(x.dtype) * 2 - 1
    target = torch.where(up[:, None, None] * gf > 0, torch.ones_like(xf), torch.zeros_like(xf))
    gain = (gf * (target - xf)) * up[:, None, None]  # >= 0: what moving each value fully buys
    if norm == "l1":
        gain, target, xf = gain.reshape(b, 1, -1), target.reshape(b, 1, -1), xf.reshape(b, 1, -1)
        order = gf.abs().reshape(b, -1).argsort(dim=1, descending=True)
    else:
        order = gain.sum(1).argsort(dim=1, descending=True)
    unit_gain = gain.sum(1)  # [b, U]
    sorted_gain = unit_gain.gather(1, order)
    before = sorted_gain.cumsum(1) - sorted_gain  # bought by the units ranked before
    frac_sorted = ((need.abs()[:, None] - before) / sorted_gain.clamp_min(1e-30)).clamp(0, 1)
    frac = torch.zeros_like(frac_sorted).scatter_(1, order, frac_sorted)  # [b, U] in [0, 1]
    z = xf + frac[:, None, :] * (target - xf)
    return z.reshape(x.shape)


def project_on_plane(x: torch.Tensor, g: torch.Tensor, level: torch.Tensor, norm: str = "l2",
                     iters: int = 40) -> torch.Tensor:
    """``argmin ||z - x||_norm`` over ``z`` in [0,1] with ``g . z = level`` ``[b]`` (as near as the box
    allows); ``x``, ``g`` ``[b,C,H,W]``. l0 counts pixels (any channel), as the evaluation does."""
    if norm in ("l1", "l0"):
        return _project_sparse(x, g, level, norm)
    xf, gf = x.flatten(1), g.flatten(1)
    out = _project_l2(xf, gf, level, iters) if norm == "l2" else _project_linf(xf, gf, level, iters)
    return out.view_as(x)


def _init_points(init: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """``[B,C,H,W]``: B&B's start where none was given, by the attack ``init`` (DeepFool in linf for linf, else
    in l2; DDN in l2, its defaults; FMN in ``norm``, its defaults). Not yet checked: the caller keeps only the
    misclassified points."""
    if init == "deepfool":
        return deepfool(model, x, y, norm="linf" if norm == "linf" else "l2")
    if init == "ddn":
        return ddn(model, x, y, norm="l2")
    if init == "fmn":
        return fmn(model, x, y, norm=norm)
    raise ValueError(f"bb: unknown init {init!r}; expected deepfool, ddn or fmn")


@register_attack(norms=("l2", "linf", "l1", "l0"), budget=False)
def bb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l2",
    x_init: torch.Tensor | None = None,
    steps: Annotated[int, Range(ge=1)] | None = None,
    lr: Annotated[float, Range(gt=0)] | None = None,
    lr_num_decay: Annotated[int, Range(ge=0)] = 20,
    momentum: Annotated[float, Range(ge=0, lt=1)] | None = None,
    overshoot_frac: Annotated[float, Range(ge=0, lt=1)] = 0.1,
    search_steps: Annotated[int, Range(ge=0)] = 10,
    step: Literal["exact", "scaled"] | None = None,
    init: Literal["deepfool", "ddn", "fmn"] = "deepfool",
) -> torch.Tensor:
    """Brendel & Bethge on ``x`` ``[B,C,H,W]`` in [0,1], true labels ``y`` ``[B]``.

    Args:
        x_init: ``[B,C,H,W]`` or None: starting adversarials (``init``'s point where none is misclassified).
        steps: trust-region steps (one forward and backward each); None: the norm's ``STEPS_DEFAULT`` (the
            paper's and foolbox's 1000; 3000 for l0's scaled step, ``SCALED_L0``).
        lr: the first trust-region radius (l2) as a fraction of the starting distance (l2); None: the
            norm's ``LR_DEFAULT`` (l2 0.3, linf 10, l1 3, l0 30: the l1 / l0 / linf steps are long in l2;
            10 for l0's scaled step).
        lr_num_decay: how many times the radius halves over the ``steps`` (the paper: 20).
        momentum: weight of the past in the boundary normal's running average; None: the norm's
            ``MOMENTUM_DEFAULT`` (l2 0.9; l0, l1 and linf the paper's 0.8; 0.9 for l0's scaled step).
        overshoot_frac: the margin aimed at, as a fraction of the current ``|c|`` (the paper's overshoot - 1).
        search_steps: bisection rounds from the start towards ``x``.
        step: ``exact``: the joint solution of the step's problem, plane, region and box together
            (``trust_region.trust_region_step``; in l0 through its Lagrangian dual); ``scaled``: the minimiser on
            the plane scaled back into the region (cheaper, not on the plane when the region binds); None:
            the norm's ``STEP_DEFAULT``.
        init: the attack that finds a start where ``x_init`` gives none (``_init_points``): ``deepfool``
            (~20 passes), or 100 steps of ``ddn`` (l2; its point starts every norm) or ``fmn`` (in the norm).
            B&B ends in the basin of its start (Brendel et al. 2019, §3: start from any attack's adversarial):
            on the MNIST LeNet-5 (38 images) B&B with 900 steps from DDN's point ends at a mean l2 of 0.5626
            against 0.5775 from DeepFool's with 1000, from FMN's at linf 0.0444 / l1 3.368 against 0.0446 /
            3.452; on the digits LeNet-5 DeepFool's start is the better one in linf and l0 (BENCHMARKS.md,
            issue 10, session 5).

    Returns:
        ``[B,C,H,W]``: the smallest misclassified point per image, ``x`` where no start was found.
    """
    check_norm(norm, bb.norms, who="bb")
    x = x.detach()
    with frozen_eval(model):
        best = Best(x, norm)
        best.start(model, y, x_init)
        missing = (~best.found).nonzero().squeeze(1)
        if missing.numel():
            best.check(model, _init_points(init, model, x[missing], y[missing], norm), y[missing], missing)
        exact = (STEP_DEFAULT[norm] if step is None else step) == "exact"
        rows = best.found.nonzero().squeeze(1)
        if rows.numel() == 0:
            return best.x_adv
        far = best.x_adv[rows].clone()
        t, _ = first_crossing(model, y[rows], lambda t: shrink_towards(x[rows], far, t, norm),
                              torch.ones(1, dtype=x.dtype, device=x.device), search_steps)
        best.check(model, shrink_towards(x[rows], far, t, norm), y[rows], rows)
        x0, yr = x[rows], y[rows]
        cur = best.x_adv[rows].clone()
        c, g = _boundary_logit(model, cur, yr)
        normal = g
        defaults = {"lr": LR_DEFAULT[norm], "momentum": MOMENTUM_DEFAULT[norm], "steps": STEPS_DEFAULT[norm]}
        if norm == "l0" and not exact:
            defaults = SCALED_L0
        lr, momentum, steps = (defaults[k] if v is None else v for k, v in
                               (("lr", lr), ("momentum", momentum), ("steps", steps)))
        radius = lr * (cur - x0).flatten(1).norm(dim=1)
        every = max(1, steps // lr_num_decay) if lr_num_decay else steps + 1
        for k in range(1, steps + 1):
            if k > 1:
                normal = (1 - momentum) * g + momentum * normal
            if (k + 1) % every == 0:
                radius = radius / 2
            level = (normal * cur).flatten(1).sum(1) - c + overshoot_frac * c.abs()
            free = project_on_plane(x0, normal, level, norm)
            if exact:
                pixels = {"channels": cur.shape[1]} if norm == "l0" else {}  # l0 counts a pixel's channels once
                cur = trust_region_step(x0.flatten(1), cur.flatten(1), normal.flatten(1), level, radius, norm,
                                        unconstrained=free.flatten(1), **pixels).view_as(cur)
            else:
                delta = free - cur
                length = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
                shrink = torch.minimum(torch.ones_like(length), radius / length)
                cur = (cur + view_as_images(shrink, delta) * delta).clamp(0, 1)
            c, g = _boundary_logit(model, cur, yr)
            best.offer(cur, c > 0, rows)
    return best.x_adv


SCHEMAS = {"bb": schema_of(bb, "bb")}
