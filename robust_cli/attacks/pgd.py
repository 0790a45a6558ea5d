"""Projected gradient descent (Madry et al. 2017; Kurakin et al. 2016 without the random start) in linf, l2
and l1 (sparse l1 descent, SLIDE, Tramèr & Boneh 2019), as used in Finlay et al. §4.2 and thesis §5.4.

Each step ascends the attack loss ``L`` (cross-entropy by default) along the steepest-ascent direction of
the norm, then projects back onto the eps-ball intersected with the box::

    delta <- Proj_{||r|| <= eps, x + r in [0,1]} (delta + alpha * s(grad_x L)),   alpha = step_size * eps
    linf: s(g) = sign(g)          l2: s(g) = g / ||g||_2
    l1:   s(g) = sign(g) * 1[|g_i| >= top-q quantile of the movable |g|] / (number of such coordinates)

A value already on a box face is not movable outwards, so it is left out of the l1 quantile (SLIDE).
All steps run (no early stop); the function returns, per sample, the misclassified iterate with the most
negative margin ``f_y - max_{j!=y} f_j`` over all steps and restarts (any point inside the budget will do for
the evaluation, and the deepest one survives its re-verification), else the last iterate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robust_cli.attacks.base import (
    as_batch_eps,
    batch_norm,
    enforce_budget,
    frozen_eval,
    is_adversarial,
    loss_gradient,
    margin,
    project,
    register_attack,
    view_as_images,
)


def ascent_direction(grad: torch.Tensor, x_adv: torch.Tensor, norm: str, l1_top: float = 0.01) -> torch.Tensor:
    """Steepest-ascent direction of unit norm for a gradient ``grad`` ``[B,C,H,W]`` at ``x_adv`` in [0,1].

    linf: ``sign(g)``; l2: ``g / ||g||_2`` (zero rows stay zero); l1: signs of the ``ceil(l1_top * d)``
    largest ``|g_i|`` among the values that can still move in their ascent direction, scaled to unit l1
    norm (SLIDE; ``l1_top = 1`` divides the full sign vector by ``d``).
    """
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        n = batch_norm(grad, "l2")
        return grad / view_as_images(n.clamp_min(1e-30), grad)
    if norm == "l1":
        g = grad.flatten(1)
        xf = x_adv.flatten(1)
        movable = ~(((xf <= 0) & (g < 0)) | ((xf >= 1) & (g > 0)))
        mag = torch.where(movable, g.abs(), torch.zeros_like(g))
        k = max(1, round(l1_top * g.shape[1]))
        kth = mag.topk(k, dim=1).values[:, -1:]
        chosen = (mag >= kth) & (mag > 0)
        s = torch.where(chosen, g.sign(), torch.zeros_like(g))
        count = chosen.sum(1, keepdim=True).clamp_min(1).to(g.dtype)
        return (s / count).view_as(grad)
    raise ValueError(f"no ascent direction for norm {norm!r}")


def random_start_in_ball(x: torch.Tensor, eps: torch.Tensor, norm: str, generator=None) -> torch.Tensor:
    """A random perturbation ``[B,C,H,W]`` in the eps-ball (uniform for linf and l2, sign-uniform l1 shell)."""
    d = x[0].numel()
    e = view_as_images(eps, x)
    if norm == "linf":
        return (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * e
    radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
    if norm == "l2":
        u = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    elif norm == "l1":
        # Laplace coordinates normalised in l1 are uniform on the l1 sphere
        u = -torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype).clamp_min(1e-12).log()
        u = u * (torch.randint(0, 2, x.shape, generator=generator, device=x.device) * 2 - 1).to(x.dtype)
    else:
        raise ValueError(f"no random start for norm {norm!r}")
    u = u / view_as_images(batch_norm(u, norm).clamp_min(1e-30), u)
    return u * e * view_as_images(radius, x)


def projected_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float | torch.Tensor,
    steps: int,
    step_size: float,
    random_start: bool,
    restarts: int = 1,
    targeted: bool = False,
    loss: str = "ce",
    l1_top: float = 0.01,
    seed: int | None = None,
) -> torch.Tensor:
    """The iterative engine behind ``pgd``, ``ifgsm`` and ``bim`` (see the module docstring).

    Args:
        x: ``[B,C,H,W]`` in [0,1]. y: ``[B]`` labels, or target labels when ``targeted``.
        eps: budget, float or ``[B]``. step_size: step length as a fraction of eps.
        restarts: independent runs (random starts differ); a sample keeps its deepest adversarial iterate.
        seed: seeds the random starts (a private generator; the global RNG is not touched) when given.

    Returns:
        ``[B,C,H,W]`` in [0,1] with ``||x_adv - x|| <= eps`` per sample.
    """
    eps_t = as_batch_eps(eps, x)
    alpha = view_as_images(eps_t * step_size, x)
    x = x.detach()
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device).manual_seed(seed)
    best = x.clone()
    best_score = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)

    def keep(point: torch.Tensor, logits: torch.Tensor) -> None:
        # the misclassified iterate deepest past the boundary: a point just across it may flip back when
        # the evaluation re-runs the model on another batch (last-bit differences)
        nonlocal best, best_score
        score = margin(logits, y) if not targeted else -margin(logits, y)
        better = is_adversarial(logits, y, targeted) & (score < best_score)
        best = torch.where(view_as_images(better, x), point, best)
        best_score = torch.where(better, score, best_score)

    with frozen_eval(model):
        for _ in range(max(1, restarts)):
            delta = torch.zeros_like(x)
            if random_start:
                delta = project(random_start_in_ball(x, eps_t, norm, generator), x, eps_t, norm)
            for _ in range(steps):
                grad, logits = loss_gradient(model, x + delta, y, loss, targeted)
                keep(x + delta, logits)
                delta = project(delta + alpha * ascent_direction(grad, x + delta, norm, l1_top), x, eps_t, norm)
            with torch.no_grad():
                keep(x + delta, model(x + delta))
    # samples never misclassified return their last iterate (the strongest point the run reached)
    best = torch.where(view_as_images(torch.isinf(best_score), x), x + delta, best)
    return enforce_budget(best, x, eps_t, norm)


@register_attack(norms=("linf", "l2", "l1"), budget=True)
def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float | torch.Tensor,
    steps: int = 50,
    step_size: float = 0.05,
    random_start: bool = True,
    restarts: int = 1,
    targeted: bool = False,
    loss: str = "ce",
    l1_top: float = 0.01,
    seed: int | None = None,
) -> torch.Tensor:
    """PGD with a random start in the eps-ball; l1 by sparse l1 descent (thesis §5.4: 1% sparsity).

    ``x`` ``[B,C,H,W]`` in [0,1], ``eps`` float or ``[B]``; returns ``[B,C,H,W]`` in [0,1] within eps.
    Step ``alpha = step_size * eps`` (default 2.5 eps / steps, Madry et al.). See ``projected_gradient``.
    """
    return projected_gradient(model, x, y, norm=norm, eps=eps, steps=steps, step_size=step_size,
                              random_start=random_start, restarts=restarts, targeted=targeted, loss=loss,
                              l1_top=l1_top, seed=seed)


@dataclass
class PGDConfig:
    """conf/attack/pgd.yaml: options of ``pgd`` (norm and eps come from the evaluation)."""

    _target_: str = "robust_cli.attacks.pgd.pgd"
    name: str = "pgd"
    steps: int = 50
    step_size: float = 0.05  # fraction of eps per step
    random_start: bool = True
    restarts: int = 1
    targeted: bool = False
    loss: str = "ce"  # ce | margin
    l1_top: float = 0.01  # l1 only: fraction of values moved per step (SLIDE sparsity)
    seed: int | None = None


SCHEMAS = {"pgd": PGDConfig}
