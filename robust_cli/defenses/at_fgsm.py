"""J1 ``at_fgsm`` (Finlay et al. 2018, SPEC.md §1): mean CE at ``x' = x + eps * sign(g) / sqrt(d)``.

``g = grad_x (1/B) sum_i CE(f(x_i), y_i)`` at the clean batch, computed in eval mode with frozen parameters;
``d = C*H*W``, so the step has l2 norm exactly ``eps`` wherever ``g`` has no zero entry. Unclipped as in the
authors' code; ``clip=true`` clips ``x'`` to [0, 1]. ``lam > 0`` adds the Lipschitz penalty at ``x'``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from robust_cli.attacks.geometry import batch_norm
from robust_cli.defenses.base import attack_mode
from robust_cli.defenses.penalty import PenaltyOptions, Perturbation, PerturbedDefense


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


@dataclass
class AtFgsmConfig(PenaltyOptions):
    """``defense=at_fgsm`` (J1)."""

    _target_: str = "robust_cli.defenses.at_fgsm.AtFgsm"
    name: str = "at_fgsm"
    eps: float = 0.01  # l2 norm of the step, [0,1] pixel units (the authors' recipe)
    clip: bool = False  # clip x' to [0, 1] (the original code does not)


class AtFgsm(PerturbedDefense):
    """J1: CE at the scaled signed-gradient step of l2 norm ``eps``."""

    def __init__(self, eps: float = 0.01, clip: bool = False, **penalty):
        super().__init__(**penalty)
        self.eps, self.clip = float(eps), bool(clip)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Perturbation:
        g, logits, stats = clean_gradient(model, x, y)
        d = x[0].numel()
        x_adv = x + (self.eps / math.sqrt(d)) * torch.sign(g)
        if self.clip:
            x_adv = x_adv.clamp(0.0, 1.0)
        return Perturbation(x_adv.detach(), logits, g, stats)


SCHEMAS = {"at_fgsm": AtFgsmConfig}
