"""Fast gradient sign method (Goodfellow et al. 2014; Finlay et al. §2.3, eq. for the signed attack):

    x_adv = clip_[0,1](x + eps * sign(grad_x L(x, y)))

one linf step of length eps (the maximiser of the linearised loss over the linf ball).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.geometry import as_batch_eps, enforce_budget, view_as_images
from robust_cli.attacks.losses import loss_gradient
from robust_cli.schema import schema_of


@register_attack(norms=("linf",), budget=True)
def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float | torch.Tensor,
    targeted: bool = False,
    loss: Literal["ce", "margin"] = "ce",
) -> torch.Tensor:
    """FGSM on ``x`` ``[B,C,H,W]`` in [0,1], ``eps`` float or ``[B]``; returns ``[B,C,H,W]`` in [0,1].

    ``targeted``: ``y`` holds target labels and the step descends their cross-entropy.
    """
    if norm != "linf":
        raise ValueError(f"fgsm is an linf attack, got norm={norm!r}")
    eps_t = as_batch_eps(eps, x)
    with frozen_eval(model):
        grad, _ = loss_gradient(model, x, y, loss, targeted, scale_free=True)  # direction only
    x_adv = x.detach() + view_as_images(eps_t, x) * grad.sign()
    return enforce_budget(x_adv, x.detach(), eps_t, norm)


SCHEMAS = {"fgsm": schema_of(fgsm, "fgsm")}
