"""The "gradient attack" of Finlay et al. §2.3/§4.2 (fast gradient method, l2; foolbox's GradientAttack):

    x_adv = clip_[0,1](x + eps * g / ||g||_2),   g = grad_x L(x, y)

one l2 step of length eps along the gradient (the maximiser of the linearised loss over the l2 ball).
Clipping to the box only shrinks the step, so ``||x_adv - x||_2 <= eps``. Rows with a zero gradient stay put.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.geometry import as_batch_eps, batch_norm, enforce_budget, view_as_images
from robust_cli.attacks.losses import loss_gradient
from robust_cli.schema import schema_of


@register_attack(norms=("l2",), budget=True)
def fgm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l2",
    eps: float | torch.Tensor,
    targeted: bool = False,
    loss: Literal["ce", "margin"] = "ce",
) -> torch.Tensor:
    """Single normalised-gradient step on ``x`` ``[B,C,H,W]`` in [0,1]; ``eps`` float or ``[B]``.

    Returns ``[B,C,H,W]`` in [0,1]. ``targeted``: ``y`` holds target labels (descend their cross-entropy).
    """
    if norm != "l2":
        raise ValueError(f"fgm is an l2 attack, got norm={norm!r}")
    eps_t = as_batch_eps(eps, x)
    with frozen_eval(model):
        grad, _ = loss_gradient(model, x, y, loss, targeted, scale_free=True)  # direction only
    unit = grad / view_as_images(batch_norm(grad, "l2").clamp_min(1e-30), grad)
    x_adv = x.detach() + view_as_images(eps_t, x) * unit
    return enforce_budget(x_adv, x.detach(), eps_t, norm)


SCHEMAS = {"fgm": schema_of(fgm, "fgm")}
