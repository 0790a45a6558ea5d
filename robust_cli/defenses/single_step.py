"""The single-step adversarial training of Finlay, Oberman & Abbasi 2018 (§2.1): J1, J2 and J2-Lip.

``x' = x + eps * u(g)`` with ``g = grad_x (1/B) sum_i CE(f(x_i), y_i)`` at the clean batch, computed in eval
mode with frozen parameters, and ``u`` a unit-l2 direction (the subclass's ``step``); then mean CE at
``x'``, plus the Lipschitz penalty at ``x'`` when ``lam > 0`` (:mod:`robust_cli.defenses.penalty`).
Unclipped as in the authors' code; ``clip=true`` clips ``x'`` to [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from robust_cli.attacks.geometry import batch_norm
from robust_cli.defenses.base import attack_mode
from robust_cli.defenses.penalty import Perturbation, PerturbedDefense


def clean_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Input gradient of the batch-mean CE at ``x`` in eval mode, parameters frozen.

    Returns ``(g [B,C,H,W], clean logits [B,K] detached, stats)`` with stats ``clean_loss`` and the
    per-sample ``grad_norm_max`` / ``grad_norm_mean`` (l2 norms of ``grad_x l_i``, i.e. ``B * ||g_i||``).
    """
    with attack_mode(model) as m:
        xr = x.detach().requires_grad_(True)
        logits = m(xr)
        loss = F.cross_entropy(logits, y)
        (g,) = torch.autograd.grad(loss, xr)
    l2 = batch_norm(g, "l2") * len(x)
    stats = {"clean_loss": loss.detach(), "grad_norm_max": l2.amax(), "grad_norm_mean": l2.mean()}
    return g, logits.detach(), stats


class SingleStepDefense(PerturbedDefense):
    """CE (and the optional penalty) at ``x + step(g)``; subclasses define ``step`` (norm ``eps``).

    Args:
        eps: l2 norm of the step, [0,1] pixel units (the authors' recipe: 0.01).
        clip: clip ``x'`` to [0, 1] (the original code does not).
        **penalty: the Lipschitz penalty at ``x'`` (:class:`~robust_cli.defenses.penalty.PenaltyOptions`).
    """

    def __init__(self, eps: float = 0.01, clip: bool = False, **penalty):
        super().__init__(**penalty)
        self.eps, self.clip = float(eps), bool(clip)

    def step(self, g: torch.Tensor) -> torch.Tensor:
        """The perturbation ``[B,C,H,W]``, of l2 norm ``eps`` per sample, for the clean gradient ``g``."""
        raise NotImplementedError

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Perturbation:
        g, logits, stats = clean_gradient(model, x, y)
        x_adv = x + self.step(g)
        if self.clip:
            x_adv = x_adv.clamp(0.0, 1.0)
        return Perturbation(x_adv.detach(), logits, g, stats)
