"""``fgsm_mix``: adversarial training on the mixture of clean and FGSM images (Goodfellow, Shlens & Szegedy
2015, "Explaining and harnessing adversarial examples", §5; Matyasko's thesis §2.5, eq 2.22).

Per batch (``x`` ``[B,C,H,W]`` in [0,1], labels ``y`` ``[B]``)::

    r    = eps * sign(grad_x CE(f(x), y))           (linf FGSM, eval mode, parameters frozen)
    loss = mean_i CE(f(x_i), y_i) + lam * mean_i CE(f(clip(x_i + r_i)), y_i)        (eq 2.22)

Unlike ``at_fgsm`` (Finlay's J1: an l2 step of norm eps, the clean term dropped) this is the thesis's
"AT [5]" baseline of Table 3.1: a linf step, both terms. Thesis MNIST: ``eps = 0.2`` (chosen on validation).
Goodfellow's ``alpha = 0.5`` weighting is ``lam = 1`` up to the factor 1/2 of the learning rate.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from robust_cli.defenses.base import DefenseOutput, to_floats
from robust_cli.defenses.single_step import clean_gradient
from robust_cli.schema import schema_of


class FgsmMix:
    """Clean CE + ``lam`` * CE at the linf FGSM image; stats ``clean_loss``, ``adv_loss``, ``adv_error``.

    Args:
        eps: linf size of the FGSM step, [0,1] pixel units (thesis MNIST: 0.2).
        lam: weight of the adversarial term (eq 2.22's lambda; >= 0).
    """

    def __init__(self, eps: float = 0.2, lam: float = 1.0):
        if eps < 0 or lam < 0:
            raise ValueError(f"fgsm_mix: eps={eps} and lam={lam} must be >= 0")
        self.eps, self.lam = float(eps), float(lam)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> DefenseOutput:
        g, _, _ = clean_gradient(model, x, y)  # eval mode, frozen: no BatchNorm update, no param.grad
        x_adv = (x.detach() + self.eps * torch.sign(g)).clamp(0.0, 1.0)
        # two passes, not one of the concatenation: BatchNorm then sees clean and adversarial batches apart
        clean, adv = model(x.detach()), model(x_adv)
        clean_loss, adv_loss = F.cross_entropy(clean, y), F.cross_entropy(adv, y)
        stats = {"clean_loss": clean_loss.detach(), "adv_loss": adv_loss.detach(),
                 "adv_error": (adv.detach().argmax(1) != y).float().mean()}
        return DefenseOutput(clean_loss + self.lam * adv_loss, clean.detach(), to_floats(stats))


SCHEMAS = {"fgsm_mix": schema_of(FgsmMix, "fgsm_mix")}
