"""``vat`` (Miyato et al. 2018): ``CE(f(x), y) + alpha * KL(p(x) || p(x + r_adv))``.

``r_adv = eps * d / ||d||_2`` per sample, ``d`` the dominant eigenvector of the Hessian of
``D(r) = KL(p(x) || p(x + r))`` at ``r = 0``, estimated by ``power_iterations`` rounds of
``d <- grad_r D(r)|_{r = xi d / ||d||}`` from ``d ~ N(0, I)`` (a finite-difference Hessian-vector product:
``grad D`` vanishes at 0). The power iteration runs in eval mode with frozen parameters, against the eval-mode
clean prediction (so that ``D(0) = 0``); the outer term is in train mode with the clean prediction detached.
``xi`` must keep ``x + xi d`` distinguishable from ``x`` in the working precision: 1e-6 (Miyato) is below
float32 resolution for [0,1] pixels, hence the default 1e-3.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from robust_cli.defenses.base import DefenseOutput, attack_mode, l2_normalize, to_floats
from robust_cli.schema import schema_of


def vat_direction(model: nn.Module, x: torch.Tensor, xi: float, power_iterations: int) -> torch.Tensor:
    """Unit (l2, per sample) estimate ``[B,C,H,W]`` of the top Hessian eigenvector of ``KL(p(x)||p(x+r))``.

    Call inside ``attack_mode``. Runs in (at least) float32 with autocast off: in bfloat16 or float16 the
    finite-difference step ``xi * d`` is rounded away and the direction would be noise.
    """
    with torch.autocast(x.device.type, enabled=False):
        x = x.detach().to(torch.promote_types(x.dtype, torch.float32))
        with torch.no_grad():
            p = F.softmax(model(x), dim=1)
        d = l2_normalize(torch.randn_like(x))
        for _ in range(power_iterations):
            r = (xi * d).requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(x + r), dim=1), p, reduction="sum")  # per-sample gradients
            (g,) = torch.autograd.grad(kl, r)
            d = l2_normalize(g)
    return d.detach()


class Vat:
    """VAT; stats ``clean_loss``, ``lds`` (the KL term, unweighted). MNIST-scale defaults.

    Args:
        alpha: weight of the local distributional smoothness term.
        eps: l2 norm of the virtual adversarial perturbation, [0,1] pixel units.
        xi: finite-difference radius of the power iteration.
        power_iterations: rounds of the power iteration (>= 1).
        clip: clip ``x + r_adv`` to [0, 1].
    """

    def __init__(self, alpha: float = 1.0, eps: float = 2.0, xi: float = 1e-3, power_iterations: int = 1,
                 clip: bool = False):
        if power_iterations < 1:
            raise ValueError("power_iterations must be >= 1")
        self.alpha, self.eps, self.xi = float(alpha), float(eps), float(xi)
        self.power_iterations, self.clip = int(power_iterations), bool(clip)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> DefenseOutput:
        x = x.detach()
        with attack_mode(model) as m:
            d = vat_direction(m, x, self.xi, self.power_iterations)
        logits = model(x)
        x_adv = x + self.eps * d
        if self.clip:
            x_adv = x_adv.clamp(0.0, 1.0)
        p = F.softmax(logits.detach(), dim=1)
        lds = F.kl_div(F.log_softmax(model(x_adv), dim=1), p, reduction="batchmean")
        clean_loss = F.cross_entropy(logits, y)
        stats = {"clean_loss": clean_loss.detach(), "lds": lds.detach()}
        return DefenseOutput(clean_loss + self.alpha * lds, logits.detach(), to_floats(stats))


SCHEMAS = {"vat": schema_of(Vat, "vat")}
