"""``pgd_at`` (Madry et al. 2018): mean CE at projected-gradient-ascent adversarials, l_inf or l2.

Inner maximisation, in eval mode with frozen parameters: from a random start in the eps-ball, ``steps``
iterations of the attack package's PGD (:func:`robust_cli.attacks.pgd.pgd_iterations`),
``delta <- Proj_{B_eps ∩ [0,1]^d - x}(delta + step_size * eps * u)`` with ``u = sign(grad)`` (l_inf) or
``grad / ||grad||_2`` (l2) and ``step_size`` a fraction of eps, as for every projected attack. The
projection is the exact Euclidean one onto the intersection (:func:`robust_cli.attacks.geometry.project`):
rescaling into the ball and clipping after is feasible but stalls the l2 attack short of its budget where
many pixels sit on a box face (MNIST). The objective is the scale-free CE of
:func:`robust_cli.attacks.losses.attack_loss`, whose gradient has CE's direction but neither vanishes nor
loses its true-class term on confidently classified samples. ``lam > 0`` adds the Lipschitz penalty at the
adversarials (:mod:`robust_cli.defenses.penalty`; its norm is ``penalty_norm``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from robust_cli.attacks import geometry
from robust_cli.attacks.losses import attack_loss
from robust_cli.attacks.pgd import pgd_iterations, random_start_in_ball
from robust_cli.defenses.base import attack_mode
from robust_cli.defenses.penalty import Perturbation, PerturbedDefense
from robust_cli.norms import check_norm
from robust_cli.schema import schema_of


def project(x_adv: torch.Tensor, x0: torch.Tensor, eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """The Euclidean projection of a point ``x_adv`` ``[B,C,H,W]`` onto ``B_eps(x0) ∩ [0,1]^d`` (``eps``
    float or ``[B]``): :func:`robust_cli.attacks.geometry.project` of ``x_adv - x0``, as a point."""
    delta = geometry.project(x_adv - x0, x0, geometry.as_batch_eps(eps, x0), norm)
    return (x0 + delta).clamp(0.0, 1.0)  # the clamp only removes rounding; it moves values towards x0


class PgdAt(PerturbedDefense):
    """Madry's adversarial training; stats ``clean_loss``, ``adv_loss``, ``adv_error``.

    Defaults: the CIFAR l_inf recipe (eps 8/255, 7 steps of 2/255). MNIST: ``eps=0.3 steps=40
    step_size=0.0333`` (0.01 = eps / 30).

    Args:
        norm: the threat model of the inner attack, ``linf`` or ``l2``.
        eps: its budget, [0,1] pixel units.
        steps: PGD iterations.
        step_size: each step as a fraction of ``eps`` (0.25: 2/255 at the default 8/255).
        random_start: start from a uniform point of the eps-ball (else from ``x``).
        **penalty: the Lipschitz penalty at the adversarials (``PenaltyOptions``).
    """

    def __init__(self, norm: Literal["linf", "l2"] = "linf", eps: float = 8 / 255, steps: int = 7,
                 step_size: float = 0.25, random_start: bool = True, **penalty):
        super().__init__(**penalty)
        if eps < 0 or steps < 0 or step_size < 0:
            raise ValueError("eps, steps and step_size must be >= 0")
        self.norm = check_norm(norm, ("linf", "l2"), who="norm")
        self.eps, self.steps, self.step_size = float(eps), int(steps), float(step_size)
        self.random_start = bool(random_start)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Perturbation:
        x = x.detach()
        eps = geometry.as_batch_eps(self.eps, x)
        with attack_mode(model) as m:
            with torch.no_grad():  # the clean logits for the train error
                logits = m(x)
            delta = torch.zeros_like(x)
            if self.random_start:
                delta = geometry.project(random_start_in_ball(x, eps, self.norm), x, eps, self.norm)
            delta = pgd_iterations(m, x, delta, lambda z: attack_loss(z, y, "ce", scale_free=True), eps=eps,
                                   norm=self.norm, step_sizes=[self.step_size] * self.steps)
        x_adv = (x + delta).clamp(0.0, 1.0)  # the clamp only removes rounding
        stats = {"clean_loss": F.cross_entropy(logits, y)}
        return Perturbation(x_adv, logits, None, stats)


SCHEMAS = {"pgd_at": schema_of(PgdAt, "pgd_at")}
