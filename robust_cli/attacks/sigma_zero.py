"""sigma-zero (Cinà et al. 2024, "sigma-zero: gradient-based optimization of l0-norm adversarial examples",
§3, Algorithm 1), l0, minimal-norm.

The l0 norm is replaced by the smooth ``l0_sigma(r) = sum_i r_i^2 / (r_i^2 + sigma)`` (eq. 4) and the attack
minimises (eq. 5)::

    L(r) = max(f_y(x + r) - max_{j != y} f_j(x + r), 0) + l0_sigma(r) / d

with Adam on the linf-normalised gradient (§3.2), a cosine-annealed learning rate (``lr`` to ``lr / 10``),
the box ``x + r in [0,1]`` by clipping, and the adaptive hard threshold of §3.3: after each step values with
``|r_i| < tau`` are set to 0, and ``tau`` moves by ``+/- threshold_lr * lr_t`` as the current point is
adversarial or not (sparser while it is, denser while it is not). The smallest-l0 adversarial iterate per
image is kept (re-checked: the logits of each iterate decide). Defaults: the paper's (§4.1: sigma 1e-3,
tau_0 0.3, t 0.01, lr 1; 1000 steps, here 100 as in its fast configuration).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import nn

from robust_cli.attacks.best import Best
from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.geometry import view_as_images
from robust_cli.attacks.losses import is_adversarial, margin
from robust_cli.schema import Range, schema_of


@register_attack(norms=("l0",), budget=False)
def sigma_zero(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l0",
    x_init: torch.Tensor | None = None,
    steps: Annotated[int, Range(ge=1)] = 100,
    lr: Annotated[float, Range(gt=0)] = 1.0,
    sigma: Annotated[float, Range(gt=0)] = 1e-3,
    threshold: Annotated[float, Range(ge=0)] = 0.3,
    threshold_lr: Annotated[float, Range(ge=0)] = 0.01,
) -> torch.Tensor:
    """sigma-zero on ``x`` ``[B,C,H,W]`` in [0,1], true labels ``y`` ``[B]``.

    Args:
        x_init: ``[B,C,H,W]`` or None: starting adversarials, kept when misclassified and smaller (the run
            itself starts at ``r = 0`` as in the paper).
        steps: iterations (one forward and backward each). lr: Adam's initial learning rate (cosine to lr/10).
        sigma: the smoothing of ``l0_sigma`` (eq. 4). threshold: ``tau_0``. threshold_lr: ``t`` of §3.3.

    Returns:
        ``[B,C,H,W]``: the smallest-l0 misclassified point per image, ``x`` where none was found.
    """
    if norm != "l0":
        raise ValueError(f"sigma_zero supports l0 only, got norm={norm!r}")
    x = x.detach()
    d = x[0].numel()
    with frozen_eval(model):
        best = Best(x, norm)
        best.start(model, y, x_init)
        delta = torch.zeros_like(x, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr)
        tau = torch.full((x.shape[0],), float(threshold), dtype=x.dtype, device=x.device)
        lr_t = float(lr)
        for t in range(steps):
            for group in opt.param_groups:  # step t with the rate annealed after step t - 1 (lr at t = 0) ...
                group["lr"] = lr_t
            with torch.enable_grad():
                logits = model(x + delta)
                sq = delta.flatten(1) ** 2
                loss = margin(logits, y).clamp_min(0) + (sq / (sq + sigma)).sum(1) / d
                (grad,) = torch.autograd.grad(loss.sum(), delta)
            adversarial = is_adversarial(logits.detach(), y)
            best.offer(x + delta.detach(), adversarial)  # the iterate the logits belong to
            scale = grad.flatten(1).abs().amax(1).clamp_min(1e-12)
            delta.grad = grad / view_as_images(scale, grad)
            opt.step()
            # ... then annealed (cosine, lr to lr / 10), and tau moves by the annealed rate: the order of the
            # authors' code (adv-lib's sigma_zero), whose runs ours now reproduces per image (BENCHMARKS.md,
            # issue 10, session 7: annealing one step earlier moved 16-23 of 50 MNIST images by a pixel or more)
            lr_t = lr / 10 + (lr - lr / 10) * (1 + math.cos(math.pi * t / steps)) / 2
            with torch.no_grad():
                delta.copy_((x + delta).clamp(0, 1) - x)
                tau = torch.where(adversarial, tau + threshold_lr * lr_t, tau - threshold_lr * lr_t).clamp(0, 1)
                delta.masked_fill_(delta.abs() < view_as_images(tau, delta), 0)
        best.check(model, x + delta.detach(), y)
    return best.x_adv


SCHEMAS = {"sigma_zero": schema_of(sigma_zero, "sigma_zero")}
