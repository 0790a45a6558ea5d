"""J2 ``at_l2`` (Finlay, Oberman & Abbasi 2018, §2.1): mean CE at ``x' = x + eps * g / ||g||_2`` per sample.

``g = grad_x (1/B) sum_i CE(f(x_i), y_i)`` at the clean batch (eval mode, frozen parameters); each row is
normalised by its own l2 norm, so every perturbation has l2 norm ``eps``; rows whose gradient is exactly zero
are left unperturbed. Unclipped by default; ``clip=true`` clips ``x'`` to [0, 1]. ``lam > 0`` adds the
Lipschitz penalty at ``x'`` (that is ``tulip``).
"""

from __future__ import annotations

import torch
from torch import nn

from robust_cli.defenses.at_fgsm import clean_gradient
from robust_cli.defenses.base import l2_normalize
from robust_cli.defenses.penalty import Perturbation, PerturbedDefense
from robust_cli.schema import schema_of


class AtL2(PerturbedDefense):
    """J2: CE at the per-sample normalised gradient step of l2 norm ``eps``.

    Args:
        eps: l2 norm of the step, [0,1] pixel units (the authors' recipe: 0.01).
        clip: clip ``x'`` to [0, 1] (the original code does not).
        **penalty: the Lipschitz penalty at ``x'`` (:class:`~robust_cli.defenses.penalty.PenaltyOptions`).
    """

    def __init__(self, eps: float = 0.01, clip: bool = False, **penalty):
        super().__init__(**penalty)
        self.eps, self.clip = float(eps), bool(clip)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Perturbation:
        g, logits, stats = clean_gradient(model, x, y)
        x_adv = x + self.eps * l2_normalize(g)
        if self.clip:
            x_adv = x_adv.clamp(0.0, 1.0)
        return Perturbation(x_adv.detach(), logits, g, stats)


SCHEMAS = {"at_l2": schema_of(AtL2, "at_l2")}
