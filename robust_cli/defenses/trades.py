"""``trades`` (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(p(x) || p(x'))`` with ``x'`` maximising that KL.

Inner maximisation (eval mode, frozen parameters, as in the authors' code): start at
``x + 0.001 * N(0, 1)``, then ``steps`` iterations of the attack package's PGD
(:func:`robust_cli.attacks.pgd.pgd_iterations`) on ``KL(p(x_i) || p(x'_i))`` per sample, projected onto the
eps-ball (l_inf by default, or l2) and [0,1]; ``step_size`` is each step as a fraction of eps. Outer loss,
train mode: the KL is ``batchmean`` (the sum over the batch divided by ``B``), and its clean side is not
detached (gradient flows through both).
"""

from __future__ import annotations


from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from robust_cli.attacks import geometry
from robust_cli.attacks.pgd import pgd_iterations
from robust_cli.defenses.base import DefenseOutput, attack_mode, error_rate, to_floats
from robust_cli.norms import check_norm
from robust_cli.schema import schema_of

#: the authors' CIFAR step, 0.007 at eps 0.031, as a fraction of eps
STEP_SIZE = 0.007 / 0.031


class Trades:
    """TRADES; stats ``clean_loss``, ``kl`` (the robust term, unweighted), ``adv_error``.

    Defaults: the authors' CIFAR settings (eps 0.031, 10 steps of 0.007, beta 6).

    Args:
        beta: weight of the robust KL term (1/lambda in the paper).
        norm: the threat model of the inner maximisation, ``linf`` or ``l2``.
        eps: its budget, [0,1] pixel units.
        steps: PGD iterations.
        step_size: each step as a fraction of ``eps``.
    """

    def __init__(self, beta: float = 6.0, norm: Literal["linf", "l2"] = "linf", eps: float = 0.031, steps: int = 10,
                 step_size: float = STEP_SIZE):
        self.beta = float(beta)
        self.norm = check_norm(norm, ("linf", "l2"), who="norm")
        self.eps, self.steps, self.step_size = float(eps), int(steps), float(step_size)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> DefenseOutput:
        x = x.detach()
        eps = geometry.as_batch_eps(self.eps, x)
        with attack_mode(model) as m:
            with torch.no_grad():
                p_clean = F.softmax(m(x), dim=1)

            def kl_per_sample(logits: torch.Tensor) -> torch.Tensor:  # [B]: KL(p(x_i) || p(x'_i)) per sample
                return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="none").sum(1)

            delta = geometry.project(0.001 * torch.randn_like(x), x, eps, self.norm)
            delta = pgd_iterations(m, x, delta, kl_per_sample, eps=eps, norm=self.norm,
                                   step_sizes=[self.step_size] * self.steps)
        x_adv = (x + delta).clamp(0.0, 1.0)  # the clamp only removes rounding
        logits = model(x)
        logits_adv = model(x_adv)
        clean_loss = F.cross_entropy(logits, y)
        kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        stats = {"clean_loss": clean_loss.detach(), "kl": kl.detach(), "adv_error": error_rate(logits_adv, y)}
        return DefenseOutput(clean_loss + self.beta * kl, logits.detach(), to_floats(stats))


SCHEMAS = {"trades": schema_of(Trades, "trades")}
