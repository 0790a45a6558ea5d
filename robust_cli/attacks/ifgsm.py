"""Iterative FGSM / basic iterative method (Kurakin et al. 2016), in linf and l2 (Finlay et al. §2.3, §4.2).

Two names for one attack (``ifgsm`` and ``bim``): PGD without the random start, from ``x`` itself, with a
constant step::

    x_{t+1} = Proj_{||x' - x|| <= eps, x' in [0,1]} (x_t + alpha * s(grad_x L(x_t))),   alpha = step_size * eps

with ``s = sign`` for linf and ``s(g) = g / ||g||_2`` for l2 (Finlay et al. argue the l2 direction follows the
gradient-ascent curve). Default ``alpha = 2.5 eps / steps`` so the iterates can reach the ball's surface and
move along it. As in ``pgd`` (see its module docstring), the direction is computed without float32
cancellation or underflow, the returned point is the best of all iterates, and the single-step attack's
point (``fgsm`` / ``fgm``, one extra gradient) is a candidate: I-FGSM never does worse than FGSM at any eps
(Kurakin et al.'s small constant steps alone can stop short of the corner FGSM jumps to).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from torch import nn

from robust_cli.attacks.contract import register_attack
from robust_cli.attacks.pgd import projected_gradient
from robust_cli.schema import Range, schema_of


@register_attack(norms=("linf", "l2"), budget=True)
def ifgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float | torch.Tensor,
    steps: Annotated[int, Range(ge=1)] = 10,
    step_size: Annotated[float, Range(gt=0)] = 0.25,
    targeted: bool = False,
    loss: Literal["ce", "margin"] = "ce",
    single_step: bool = True,
) -> torch.Tensor:
    """I-FGSM on ``x`` ``[B,C,H,W]`` in [0,1] with budget ``eps`` (float or ``[B]``); returns ``[B,C,H,W]``.

    Returns per sample the deepest misclassified candidate (the iterates and, with ``single_step``, the
    ``fgsm``/``fgm`` point), else the one with the smallest margin; always within eps and in [0,1].

    Args:
        steps: iterations. step_size: each step as a fraction of eps.
        targeted: ``y`` holds target labels. loss: ``ce`` or ``margin`` (see ``attack_loss``).
        single_step: the ``fgsm``/``fgm`` point is a candidate (never weaker than the single step).
    """
    return projected_gradient(model, x, y, norm=norm, eps=eps, steps=steps, step_size=step_size,
                              random_start=False, restarts=1, targeted=targeted, loss=loss,
                              schedule="constant", single_step=single_step)


@register_attack(norms=("linf", "l2"), budget=True)
def bim(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float | torch.Tensor,
    steps: Annotated[int, Range(ge=1)] = 10,
    step_size: Annotated[float, Range(gt=0)] = 0.25,
    targeted: bool = False,
    loss: Literal["ce", "margin"] = "ce",
    single_step: bool = True,
) -> torch.Tensor:
    """BIM (Kurakin et al. 2016): ``ifgsm`` under its other name; same arguments, same result."""
    return ifgsm(model, x, y, norm=norm, eps=eps, steps=steps, step_size=step_size, targeted=targeted, loss=loss,
                 single_step=single_step)


SCHEMAS = {"ifgsm": schema_of(ifgsm, "ifgsm"), "bim": schema_of(bim, "bim")}
