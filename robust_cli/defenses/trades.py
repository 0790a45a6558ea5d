"""``trades`` (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(p(x) || p(x'))`` with ``x'`` maximising that KL.

Inner maximisation (eval mode, frozen parameters, as in the authors' code): start at
``x + 0.001 * N(0, 1)``, then ``steps`` PGD iterations on ``sum_i KL(p(x_i) || p(x'_i))`` projected onto the
eps-ball (l_inf by default, or l2) and [0,1]. Outer loss, train mode: the KL is ``batchmean`` (the sum over
the batch divided by ``B``), and its clean side is not detached (gradient flows through both).
"""

from __future__ import annotations


import torch
from torch import nn
from torch.nn import functional as F

from robust_cli.norms import check_norm
from robust_cli.schema import schema_of
from robust_cli.defenses.base import DefenseOutput, attack_mode, error_rate, to_floats
from robust_cli.defenses.pgd_at import pgd_ascent, project


class Trades:
    """TRADES; stats ``clean_loss``, ``kl`` (the robust term, unweighted), ``adv_error``."""

    def __init__(self, beta: float = 6.0, norm: object = "linf", eps: float = 0.031, steps: int = 10,
                 step_size: float = 0.007):
        self.beta = float(beta)
        self.norm = check_norm(norm, ("linf", "l2"), who="norm")
        self.eps, self.steps, self.step_size = float(eps), int(steps), float(step_size)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> DefenseOutput:
        x = x.detach()
        with attack_mode(model) as m:
            with torch.no_grad():
                p_clean = F.softmax(m(x), dim=1)

            def kl_sum(logits: torch.Tensor) -> torch.Tensor:
                return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="sum")

            start = project(x + 0.001 * torch.randn_like(x), x, self.eps, self.norm)
            x_adv = pgd_ascent(m, x, kl_sum, start, eps=self.eps, steps=self.steps, step_size=self.step_size,
                               norm=self.norm)
        logits = model(x)
        logits_adv = model(x_adv)
        clean_loss = F.cross_entropy(logits, y)
        kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        stats = {"clean_loss": clean_loss.detach(), "kl": kl.detach(), "adv_error": error_rate(logits_adv, y)}
        return DefenseOutput(clean_loss + self.beta * kl, logits.detach(), to_floats(stats))


SCHEMAS = {"trades": schema_of(Trades, "trades")}
