"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", §3, Algorithm 1) in linf and l2, and l1-APGD (Croce & Hein 2021, "Mind the box:
l1-APGD for sparse adversarial attacks on image classifiers", §3); ``apgd_t`` the targeted-DLR version over
the top-k classes (§4, eq. 7; AutoAttack's APGD-T).

One iteration (Algorithm 1, ``P`` the exact projection onto ball ∩ box, ``s`` the unit steepest-ascent
direction of the norm, ``alpha`` the momentum 0.75)::

    z^(k+1) = P(x^(k) + eta^(k) s(grad f(x^(k))))
    x^(k+1) = P(x^(k) + alpha (z^(k+1) - x^(k)) + (1 - alpha)(x^(k) - x^(k-1)))      (x^(1) = z^(1))

with ``eta^(0) = 2 eps``, halved at the checkpoints of ``apgd_schedule`` when one of its two conditions holds,
the iterate then restarting from the best point ``x_max`` (``apgd_schedule.StepSizeRule``).

l1 (Mind the box §3): ``s`` is the sign of the ``k`` largest ``|grad_i|`` among the values the box still lets
move that way, scaled to unit l1 norm, and the sparsity ``k`` adapts: it starts at ``0.01 d`` and at every
checkpoint becomes ``||x_max - x||_0 / 1.5`` (at least 1), the support of the best point found, a little
shrunk; the step starts at ``eps`` (one step may use the whole budget) and, when halved, stays at least
``eps / 10``. (These l1 constants are ours, tuned on the exact linear reference, where we could not check the
paper's: a dense start, ``0.1 d``, spreads the budget and misses the sparse optimum.)

Objectives ``f`` (ascended): ``ce`` is ``logsumexp_{j!=y} z_j - z_y``, a strictly increasing function of the
cross-entropy (so Algorithm 1's comparisons are the same) whose gradient does not underflow on confident
points; ``dlr`` and the targeted DLR are ``losses.dlr_loss``. ``eot > 1`` averages the value and the gradient
over that many forward passes (Expectation over Transformation, AutoAttack's ``rand`` version).

Returns per sample the misclassified iterate with the most negative margin ``z_y - max_{j!=y} z_j`` over all
iterations, restarts and targets, else the iterate with the smallest margin (the evaluation re-verifies it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Literal

import torch
from torch import nn

from robust_cli.attacks.apgd_schedule import StepSizeRule, checkpoints
from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.geometry import Projector, as_batch_eps, batch_norm, enforce_budget, project, view_as_images
from robust_cli.attacks.losses import attack_loss, attack_loss_grad, dlr_loss, is_adversarial, margin
from robust_cli.attacks.pgd import random_start_in_ball
from robust_cli.schema import Range, schema_of

Objective = Callable[[torch.Tensor], torch.Tensor]
#: l1: initial sparsity (fraction of d), first step, smallest step (fractions of eps), support shrink at checkpoints
L1_SPARSITY, L1_STEP, L1_MIN_STEP, L1_SHRINK = 0.01, 1.0, 0.1, 1.5


class Deepest:
    """Per sample of ``x`` ``[B,C,H,W]``: the offered point with the lowest margin w.r.t. the true ``y``
    ``[B]``, misclassified points first (so a success is kept over any failure)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.y = y
        self.x = x.detach().clone()
        self.adv = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.score = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)

    def subset(self, rows: torch.Tensor) -> Deepest:
        """A tracker of the samples ``rows`` ``[b]``, starting from what this one holds for them."""
        sub = Deepest(self.x[rows], self.y[rows])
        sub.adv, sub.score = self.adv[rows].clone(), self.score[rows].clone()
        return sub

    def offer(self, point: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Offer ``point`` ``[b,C,H,W]`` with its ``logits`` ``[b,K]`` for the samples ``rows`` ``[b]`` (all).

        The whole batch (``rows=None``, every APGD iterate) is kept without indexing (``where``, the points
        in place): no ``nonzero``/``index_put`` per step.
        """
        if rows is None:
            score, adv = margin(logits, self.y), is_adversarial(logits, self.y)
            better = (adv & ~self.adv) | ((adv == self.adv) & (score < self.score))
            torch.where(view_as_images(better, self.x), point.detach(), self.x, out=self.x)
            self.adv = torch.where(better, adv, self.adv)
            self.score = torch.where(better, score, self.score)
            return
        y = self.y[rows]
        score, adv = margin(logits, y), is_adversarial(logits, y)
        old_adv, old_score = self.adv[rows], self.score[rows]
        better = (adv & ~old_adv) | ((adv == old_adv) & (score < old_score))
        keep = rows[better]
        self.x[keep] = point.detach()[better]
        self.adv[keep] = adv[better]
        self.score[keep] = score[better]


class LogitObjective:
    """An objective (logits ``[B,K]`` -> ``[B]``) that also gives its gradient w.r.t. the logits,
    ``value_grad(logits) -> (value [B], grad [B,K])``: in closed form for the scale-free CE
    (``losses.attack_loss_grad``), else by autograd through the objective on the logits alone. Either way
    ``torch.autograd.grad(logits, z, grad)`` is then the input gradient, bit for bit autograd's through
    ``objective(model(z)).sum()``, without autograd through the loss's small kernels."""

    def __init__(self, objective: Objective, ce_labels: torch.Tensor | None = None):
        self.objective, self.ce_labels = objective, ce_labels

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.objective(logits)

    def value_grad(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ce_labels is not None:
            return attack_loss_grad(logits, self.ce_labels, "ce", scale_free=True)
        with torch.enable_grad():
            leaf = logits.detach().requires_grad_(True)
            value = self.objective(leaf)
            (g,) = torch.autograd.grad(value.sum(), leaf)
        return value.detach(), g


def objective_of(loss: str, y: torch.Tensor, target: torch.Tensor | None = None) -> Objective:
    """logits ``[B,K]`` -> ``[B]`` the value APGD ascends (see the module docstring)."""
    if target is not None:
        return lambda logits: dlr_loss(logits, y, target)
    if loss == "dlr":
        return lambda logits: dlr_loss(logits, y)
    if loss == "ce":
        return lambda logits: attack_loss(logits, y, "ce", scale_free=True)
    raise ValueError(f"unknown APGD loss {loss!r}; expected 'ce' or 'dlr'")


def value_and_gradient(model: nn.Module, z: torch.Tensor, objective: Objective, eot: int = 1):
    """``(f [B], grad_z f [B,C,H,W], logits [B,K])`` averaged over ``eot`` passes (the logits of the last).

    A :class:`LogitObjective` with ``eot == 1`` (every APGD step): one forward and ``autograd.grad(logits,
    z, df/dlogits)``, the same values as the general path below (which adds them to zeros and divides by 1).
    """
    if eot == 1 and isinstance(objective, LogitObjective):
        with torch.enable_grad():
            zr = z.detach().requires_grad_(True)
            logits = model(zr)
            value, g = objective.value_grad(logits)
            (grad,) = torch.autograd.grad(logits, zr, grad_outputs=g)
        return value, grad, logits.detach()
    value, grad = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device), torch.zeros_like(z)
    with torch.enable_grad():
        for _ in range(eot):
            zr = z.detach().requires_grad_(True)
            logits = model(zr)
            v = objective(logits)
            (g,) = torch.autograd.grad(v.sum(), zr)
            value, grad = value + v.detach(), grad + g
    return value / eot, grad / eot, logits.detach()


def sparse_direction(grad: torch.Tensor, z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """l1 ascent direction ``[B,C,H,W]``: the signs of the ``k`` ``[B]`` largest ``|grad_i|`` among the values
    of ``z`` in [0,1] that can still move in their ascent direction, divided by their number (unit l1)."""
    g, zf = grad.flatten(1), z.flatten(1)
    movable = ~(((zf <= 0) & (g < 0)) | ((zf >= 1) & (g > 0)))
    mag = torch.where(movable, g.abs(), torch.zeros_like(g))
    kth = mag.sort(dim=1, descending=True).values.gather(1, (k.long().clamp(1, g.shape[1]) - 1)[:, None])
    chosen = (mag >= kth) & (mag > 0)
    s = torch.where(chosen, g.sign(), torch.zeros_like(g))
    return (s / chosen.sum(1, keepdim=True).clamp_min(1).to(g.dtype)).view_as(grad)


def unit_direction(grad: torch.Tensor, z: torch.Tensor, norm: str, k: torch.Tensor) -> torch.Tensor:
    """Unit steepest-ascent direction ``s(grad)`` of the norm (linf sign, l2 normalised, l1 sparse)."""
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        return grad / view_as_images(batch_norm(grad, "l2").clamp_min(1e-30), grad)
    return sparse_direction(grad, z, k)


def start_point(x: torch.Tensor, eps: torch.Tensor, norm: str, gen: torch.Generator) -> torch.Tensor:
    """A start ``delta`` ``[B,C,H,W]`` inside ball ∩ box: uniform in the linf cube, on the l2 sphere (the
    authors' start), uniform on the l1 sphere; drawn on the CPU from ``gen`` (device-independent)."""
    cpu = x.detach().cpu()
    e = view_as_images(eps.cpu(), cpu)
    if norm == "linf":
        delta = (torch.rand(cpu.shape, generator=gen, dtype=cpu.dtype) * 2 - 1) * e
    elif norm == "l2":
        u = torch.randn(cpu.shape, generator=gen, dtype=cpu.dtype)
        delta = u / view_as_images(batch_norm(u, "l2").clamp_min(1e-30), u) * e
    else:
        delta = random_start_in_ball(cpu, eps.cpu(), norm, gen)
    return project(delta.to(x.device), x, eps, norm)


def apgd_run(model: nn.Module, x: torch.Tensor, delta: torch.Tensor, objective: Objective, best: Deepest, *,
             eps: torch.Tensor, norm: str, steps: int, momentum: float, rho: float, eot: int) -> None:
    """One run of Algorithm 1 from ``x + delta`` (``x`` ``[B,C,H,W]`` in [0,1], ``eps`` ``[B]``); every
    iterate is offered to ``best``. ``steps`` gradient evaluations after the one at the start."""
    d = x[0].numel()
    l1 = norm == "l1"
    eta = eps.clone() * (L1_STEP if l1 else 2.0)
    k = torch.full_like(eps, math.ceil(L1_SPARSITY * d))
    proj = Projector(x, norm)
    x_k = x + delta
    f_k, g_k, logits = value_and_gradient(model, x_k, objective, eot)
    best.offer(x_k, logits)
    x_max, f_max, g_max = x_k.clone(), f_k.clone(), g_k.clone()
    x_prev = x_k.clone()
    rule, marks = StepSizeRule(f_max, rho), set(checkpoints(steps))
    r_k = torch.empty_like(x)
    for it in range(1, steps + 1):
        # z = x + P(x_k - x + eta s), x_new = x + P(x_k - x + a (z - x_k) + (1 - a)(x_k - x_prev)): the same
        # operations in the same order, in place (sums and products commute exactly in floating point)
        torch.sub(x_k, x, out=r_k)
        z = unit_direction(g_k, x_k, norm, k).mul_(view_as_images(eta, x)).add_(r_k)
        z = proj.project_(z, eps).add_(x)
        a = 1.0 if it == 1 else momentum
        x_new = z.sub_(x_k).mul_(a).add_(r_k)
        x_new.add_(torch.sub(x_k, x_prev, out=x_prev).mul_(1 - a))  # x_prev is not needed after this
        x_new = proj.project_(x_new, eps).add_(x)
        if it == steps:  # the last iterate: only offered (one forward), its value and gradient are never used
            with torch.no_grad():
                best.offer(x_new, model(x_new))
            break
        f_new, g_new, logits = value_and_gradient(model, x_new, objective, eot)
        best.offer(x_new, logits)
        rule.observe(f_new, f_k)
        u = view_as_images(f_new > f_max, x)
        torch.where(u, x_new, x_max, out=x_max)  # in place: no allocation per step
        torch.where(u, g_new, g_max, out=g_max)
        f_max = torch.maximum(f_new, f_max)
        x_prev, x_k, f_k, g_k = x_k, x_new, f_new, g_new
        if it in marks and it < steps:
            halve = rule.at_checkpoint(it, f_max)
            eta = torch.where(halve, eta / 2, eta)
            if l1:
                eta = torch.maximum(eta, eps * L1_MIN_STEP)
                k = (batch_norm(x_max - x, "l0") / L1_SHRINK).ceil().clamp(1, d)
            h = view_as_images(halve, x)
            # restart from the best point, with no momentum carried across the jump
            x_k, g_k, f_k = torch.where(h, x_max, x_k), torch.where(h, g_max, g_k), torch.where(halve, f_max, f_k)
            x_prev = torch.where(h, x_k, x_prev)


def _apgd(model, x, y, *, norm, eps, steps, restarts, momentum, rho, eot, random_start_: bool, seed,
          objectives: list[Objective]) -> torch.Tensor:
    """Best point over ``restarts`` runs of each objective (the runs of later objectives attack only the
    samples not yet misclassified; a success is never re-attacked)."""
    eps_t = as_batch_eps(eps, x)
    x = x.detach()
    gen = torch.Generator().manual_seed(seed)
    best = Deepest(x, y)
    with frozen_eval(model):
        for objective in objectives:
            for _ in range(restarts):
                rows = (~best.adv).nonzero().squeeze(1)
                if rows.numel() == 0:
                    return enforce_budget(best.x, x, eps_t, norm)
                # drawn for the whole batch, so a sample's start does not depend on which others are left
                start = start_point(x, eps_t, norm, gen) if random_start_ else torch.zeros_like(x)
                sub = best.subset(rows)
                apgd_run(model, x[rows], start[rows], objective.on(rows), sub,
                         eps=eps_t[rows], norm=norm, steps=steps, momentum=momentum, rho=rho, eot=eot)
                best.x[rows], best.adv[rows], best.score[rows] = sub.x, sub.adv, sub.score
    return enforce_budget(best.x, x, eps_t, norm)


class _RowObjective:
    """An objective whose labels (and targets) are sliced to the attacked rows."""

    def __init__(self, loss: str, y: torch.Tensor, target: torch.Tensor | None = None):
        self.loss, self.y, self.target = loss, y, target

    def __call__(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        target = None if self.target is None else self.target[rows]
        return objective_of(self.loss, self.y[rows], target)(logits)

    def on(self, rows: torch.Tensor) -> LogitObjective:
        """The objective of the rows ``rows`` ``[b]``, with its logit gradient (closed form for CE)."""
        ce = self.loss == "ce" and self.target is None
        return LogitObjective(lambda logits: self(logits, rows), self.y[rows] if ce else None)


_Fraction = Annotated[float, Range(gt=0, lt=1)]


@register_attack(norms=("linf", "l2", "l1"), budget=True)
def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float | torch.Tensor,
    steps: Annotated[int, Range(ge=1)] = 100,
    restarts: Annotated[int, Range(ge=1)] = 1,
    loss: Literal["ce", "dlr"] = "ce",
    momentum: _Fraction = 0.75,
    rho: _Fraction = 0.75,
    eot: Annotated[int, Range(ge=1)] = 1,
    random_start: bool = True,
    seed: int = 0,
) -> torch.Tensor:
    """APGD-CE / APGD-DLR on ``x`` ``[B,C,H,W]`` in [0,1], labels ``y`` ``[B]``, ``eps`` float or ``[B]``.

    Returns ``[B,C,H,W]`` in [0,1] within eps (see the module docstring).

    Args:
        steps: iterations ``N`` of Algorithm 1 (AutoAttack: 100). restarts: runs, each from a new random
            start; a run attacks only the samples still correctly classified.
        loss: ``ce`` (APGD-CE) or ``dlr`` (APGD-DLR, eq. 6; needs at least 3 classes).
        momentum: ``alpha`` (0.75). rho: the fraction of condition 1 (0.75).
        eot: passes averaged per gradient (AutoAttack ``rand``: 20).
        random_start: start from a random point of the ball (the authors'); else from ``x``.
        seed: the private generator of the starts (the same unit draws at every eps).
    """
    if loss == "dlr" and _classes(model, x) < 3:
        raise ValueError("apgd loss='dlr' needs at least 3 classes")
    return _apgd(model, x, y, norm=norm, eps=eps, steps=steps, restarts=restarts, momentum=momentum, rho=rho,
                 eot=eot, random_start_=random_start, seed=seed, objectives=[_RowObjective(loss, y)])


@register_attack(norms=("linf", "l2", "l1"), budget=True)
def apgd_t(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float | torch.Tensor,
    steps: Annotated[int, Range(ge=1)] = 100,
    target_classes: Annotated[int, Range(ge=1)] = 9,
    restarts: Annotated[int, Range(ge=1)] = 1,
    momentum: _Fraction = 0.75,
    rho: _Fraction = 0.75,
    eot: Annotated[int, Range(ge=1)] = 1,
    random_start: bool = True,
    seed: int = 0,
) -> torch.Tensor:
    """APGD-T: APGD on the targeted DLR (eq. 7) against each of the ``target_classes`` most likely other
    classes at ``x`` in turn (AutoAttack: 9), ``restarts`` runs per target; untargeted in outcome (success is
    leaving the true label ``y`` ``[B]``). Needs at least 4 classes. Other options as in :func:`apgd`."""
    with torch.no_grad(), frozen_eval(model):
        logits0 = model(x)
    n_classes = logits0.shape[1]
    if n_classes < 4:
        raise ValueError("apgd_t (targeted DLR) needs at least 4 classes")
    m = min(target_classes, n_classes - 1)
    order = logits0.scatter(1, y[:, None], float("-inf")).topk(m, dim=1).indices
    objectives = [_RowObjective("dlr", y, order[:, j]) for j in range(m)]
    return _apgd(model, x, y, norm=norm, eps=eps, steps=steps, restarts=restarts, momentum=momentum, rho=rho,
                 eot=eot, random_start_=random_start, seed=seed, objectives=objectives)


def _classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), frozen_eval(model):
        return int(model(x[:1]).shape[1])


SCHEMAS = {"apgd": schema_of(apgd, "apgd"), "apgd_t": schema_of(apgd_t, "apgd_t")}
