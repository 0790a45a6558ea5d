"""``pgd_at`` (Madry et al. 2018): mean CE at projected-gradient-ascent adversarials, l_inf or l2.

Inner maximisation, in eval mode with frozen parameters: from a random start in the eps-ball,
``steps`` iterations of ``x <- Proj_{B_eps(x0) ∩ [0,1]^d}(x + step_size * u)`` with ``u = sign(grad)``
(l_inf) or ``grad / ||grad||_2`` (l2). The projection is the exact Euclidean one onto the intersection
(:func:`robust_cli.attacks.geometry.project`): rescaling into the ball and clipping after is feasible but stalls
the l2 attack short of its budget where many pixels sit on a box face (MNIST). The objective is the
scale-free CE of :func:`robust_cli.attacks.losses.attack_loss`, whose gradient has CE's direction but neither
vanishes nor loses its true-class term on confidently classified samples. ``lam > 0`` adds the Lipschitz
penalty at the adversarials (:mod:`robust_cli.defenses.penalty`; its norm is ``lip_norm``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from robust_cli.attacks import geometry
from robust_cli.attacks.losses import attack_loss
from robust_cli.attacks.pgd import ascent_direction, random_start_in_ball
from robust_cli.defenses.base import attack_mode, canonical_norm
from robust_cli.defenses.penalty import PenaltyOptions, Perturbation, PerturbedDefense


def project(x_adv: torch.Tensor, x0: torch.Tensor, eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """The Euclidean projection of ``x_adv`` ``[B,C,H,W]`` onto ``B_eps(x0) ∩ [0,1]^d`` (``eps`` float or ``[B]``)."""
    delta = geometry.project(x_adv - x0, x0, geometry.as_batch_eps(eps, x0), norm)
    return (x0 + delta).clamp(0.0, 1.0)  # the clamp only removes rounding; it moves values towards x0


def random_start(x0: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """A random point of the eps-ball around ``x0`` (uniform for l_inf and l2), projected into [0,1]."""
    return project(x0 + random_start_in_ball(x0, geometry.as_batch_eps(eps, x0), norm), x0, eps, norm)


def pgd_ascent(model: nn.Module, x0: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor],
               x_start: torch.Tensor, *, eps: float, steps: int, step_size: float, norm: str) -> torch.Tensor:
    """Maximise the scalar ``objective(logits)`` over the ball around ``x0``; call inside ``attack_mode``.

    Returns the last iterate ``[B,C,H,W]`` (detached), inside the ball and [0,1]. ``objective`` must be a
    sum over samples, so that each sample's gradient is its own.
    """
    eps_b = geometry.as_batch_eps(eps, x0)
    x_adv = x_start.detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (g,) = torch.autograd.grad(objective(model(x_adv)), x_adv)
        x_adv = x_adv.detach()
        x_adv = project(x_adv + step_size * ascent_direction(g, x_adv, norm), x0, eps_b, norm)
    return x_adv.detach()


@dataclass
class PgdAtConfig(PenaltyOptions):
    """``defense=pgd_at`` (Madry). Defaults: the CIFAR l_inf recipe (eps 8/255, 7 steps of 2/255)."""

    _target_: str = "robust_cli.defenses.pgd_at.PgdAt"
    name: str = "pgd_at"
    norm: str = "linf"  # linf | l2: the threat model of the inner attack
    eps: float = 0.03137254901960784  # 8/255
    steps: int = 7
    step_size: float = 0.00784313725490196  # 2/255
    random_start: bool = True


class PgdAt(PerturbedDefense):
    """Madry's adversarial training; stats ``clean_loss``, ``adv_loss``, ``adv_error``."""

    def __init__(self, norm: object = "linf", eps: float = 8 / 255, steps: int = 7, step_size: float = 2 / 255,
                 random_start: bool = True, **penalty):
        super().__init__(**penalty)
        if eps < 0 or steps < 0 or step_size < 0:
            raise ValueError("eps, steps and step_size must be >= 0")
        self.norm = canonical_norm(norm, ("linf", "l2"))
        self.eps, self.steps, self.step_size = float(eps), int(steps), float(step_size)
        self.random_start = bool(random_start)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Perturbation:
        x = x.detach()
        with attack_mode(model) as m:
            with torch.no_grad():  # the clean logits for the train error
                logits = m(x)
            start = random_start(x, self.eps, self.norm) if self.random_start else x
            x_adv = pgd_ascent(m, x, lambda z: attack_loss(z, y, "ce", scale_free=True).sum(), start,
                               eps=self.eps, steps=self.steps, step_size=self.step_size, norm=self.norm)
        stats = {"clean_loss": F.cross_entropy(logits, y)}
        return Perturbation(x_adv, logits, None, stats)


SCHEMAS = {"pgd_at": PgdAtConfig}
