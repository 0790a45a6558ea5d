"""The Lipschitz penalty of Finlay et al. and the "perturb, then penalise" skeleton of the J-defenses.

Finlay, Oberman & Abbasi, "Improved robustness to adversarial examples using Lipschitz regularization of
the loss", §3 (``lip``): add ``lam * max_i ||grad_{x_i} L||`` to the loss, where ``L = (1/B) sum_i l_i`` is the
**batch-mean** cross-entropy, so each per-sample gradient carries the factor ``1/B``; not squared, no
hinge. Two ways to differentiate it with respect to the weights:

* ``method="double_backprop"``: the input gradient is built with ``create_graph=True`` and the loop's
  ``loss.backward()`` differentiates through it (Drucker & LeCun 1991; Finlay et al. 2018).
* ``method="finite_difference"`` (Finlay & Oberman 2019, "Scaleable input gradient regularization"):
  ``||grad_{x_i} l_i||_q ~= (l_i(x_i + h d_i) - l_i(x_i)) / h`` with ``d_i`` the unit dual direction of the
  (detached) gradient, so ``<grad l_i, d_i> = ||grad l_i||_q``; the result is divided by ``B`` to carry
  the same ``1/B`` factor. No second-order graph: two first-order forward/backward passes, which
  ``torch.compile`` can take.

A defense that perturbs its inputs (J1, J2, PGD) evaluates the loss and the penalty at the perturbed
inputs ``x'`` (``tulip`` = J2 + lip, "the penalty evaluated at the perturbed inputs").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from robust_cli.attacks.geometry import batch_norm
from robust_cli.defenses.base import DefenseOutput, check_choice, dual_direction, error_rate, to_floats
from robust_cli.norms import check_norm

METHODS = ("double_backprop", "finite_difference")
REDUCTIONS = ("max", "mean")


@dataclass
class PenaltyOptions:
    """The Lipschitz-penalty options of the defenses that carry one, each default written once here.

    ``defense.lam=0.1 defense.penalty_norm=l1`` on any adversarial-training defense; ``lam: 0`` = off.
    """

    lam: float = 0.0  # weight of the Lipschitz penalty (at the perturbed inputs); 0 = no penalty
    penalty_norm: Literal["l2", "l1", "linf"] = "l2"  # norm of the input gradient in the penalty
    reduction: Literal["max", "mean"] = "max"  # over the batch
    method: Literal["double_backprop", "finite_difference"] = "double_backprop"
    h: float = 0.01  # finite-difference step ([0,1] pixel units)


class LipschitzPenalty:
    """``lam * reduce_i ||grad_{x_i} (1/B) sum_j l_j||_q`` next to the batch-mean CE, at given inputs.

    Built from a :class:`PenaltyOptions` (the one home of the penalty's defaults): ``lam`` its weight,
    ``penalty_norm`` the norm ``q`` taken of the input gradient (``l2``; ``l1`` guards l_inf perturbations,
    its dual; ``linf``), ``reduction`` ``max`` over the batch (the papers') or ``mean``, ``method``
    ``double_backprop`` or ``finite_difference`` with step ``h`` (input units, [0,1] pixels).
    """

    def __init__(self, options: PenaltyOptions):
        if options.lam < 0:
            raise ValueError(f"lam={options.lam} must be >= 0")
        if options.h <= 0:
            raise ValueError(f"h={options.h} must be > 0")
        self.lam = float(options.lam)
        self.norm = check_norm(options.penalty_norm, ("l2", "l1", "linf"), who="penalty_norm")
        self.reduction = check_choice("reduction", options.reduction, REDUCTIONS)
        self.method = check_choice("method", options.method, METHODS)
        self.h = float(options.h)

    def _reduce(self, v: torch.Tensor) -> torch.Tensor:
        return v.amax() if self.reduction == "max" else v.mean()

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 direction: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Loss ``CE_mean(x) + lam * penalty(x)`` with the model in its current (train) mode.

        Args:
            model: the classifier (train mode; its parameters take the gradient).
            x: ``[B, C, H, W]`` the inputs (clean or perturbed, detached).
            y: ``[B]`` labels.
            direction: finite differences only: an input gradient ``[B, C, H, W]`` already at hand (the J1/J2
                step's) whose dual direction replaces a fresh one; then both points go through one forward
                of ``2B`` images. ``None``: the direction is the gradient at ``x`` itself.

        Returns:
            ``(loss, logits [B, K] at x, stats)`` with stats tensors ``penalty`` (unweighted, including the
            1/B factor), ``grad_norm_max``/``grad_norm_mean`` (per-sample l2 norms of ``grad_x l_i`` at
            ``x``, without the 1/B factor; double backprop and fresh-direction finite differences only).
        """
        if self.method == "double_backprop":
            return self._double_backprop(model, x, y)
        return self._finite_difference(model, x, y, direction)

    def _double_backprop(self, model, x, y):
        xr = x.detach().requires_grad_(True)
        logits = model(xr)
        loss = F.cross_entropy(logits, y)  # the batch mean: its input gradient carries 1/B
        (g,) = torch.autograd.grad(loss, xr, create_graph=True)
        penalty = self._reduce(batch_norm(g, self.norm))
        l2 = batch_norm(g.detach(), "l2") * len(x)  # per-sample ||grad l_i||_2 for the history
        stats = {"penalty": penalty.detach(), "grad_norm_max": l2.amax(), "grad_norm_mean": l2.mean()}
        return loss + self.lam * penalty, logits, stats

    def _finite_difference(self, model, x, y, direction):
        b = len(x)
        x = x.detach()
        stats: dict[str, torch.Tensor] = {}
        if direction is None:
            xr = x.requires_grad_(True)
            logits = model(xr)
            losses = F.cross_entropy(logits, y, reduction="none")
            # first-order only: the direction is a constant of the penalty (Finlay & Oberman 2019)
            (g,) = torch.autograd.grad(losses.mean(), xr, retain_graph=True)
            d = dual_direction(g, self.norm)
            losses_h = F.cross_entropy(model(x.detach() + self.h * d), y, reduction="none")
            l2 = batch_norm(g, "l2") * b
            stats.update(grad_norm_max=l2.amax(), grad_norm_mean=l2.mean())
        else:
            d = dual_direction(direction.detach(), self.norm)
            # one forward of 2B images: half the kernel launches of two forwards (BatchNorm then sees both
            # halves in its batch statistics; they differ by h)
            logits_all = model(torch.cat([x, x + self.h * d]))
            logits, logits_h = logits_all[:b], logits_all[b:]
            losses = F.cross_entropy(logits, y, reduction="none")
            losses_h = F.cross_entropy(logits_h, y, reduction="none")
        # a reused direction may not be an ascent direction at x: clamp, the norm is never negative
        slope = ((losses_h - losses) / self.h).clamp_min(0) / b
        penalty = self._reduce(slope)
        stats = {"penalty": penalty.detach(), **stats}
        return losses.mean() + self.lam * penalty, logits, stats


@dataclass
class Perturbation:
    """What an adversarial step hands to :class:`PerturbedDefense`.

    Attributes:
        x_adv: ``[B, C, H, W]`` the perturbed inputs (detached).
        clean_logits: ``[B, K]`` detached logits at the clean inputs (eval mode), for the train error.
        gradient: ``[B, C, H, W]`` the input gradient the step followed (reused as the finite-difference
            direction), or ``None``.
        stats: tensors for the history (``clean_loss``, ``grad_norm_max``, ...).
    """

    x_adv: torch.Tensor
    clean_logits: torch.Tensor
    gradient: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)


class PerturbedDefense:
    """Mean CE at perturbed inputs ``x' = perturb(x)``, plus the optional Lipschitz penalty at ``x'``.

    Subclasses implement :meth:`perturb` (in :func:`~robust_cli.defenses.base.attack_mode`). Stats:
    ``adv_loss`` (CE at ``x'``), ``adv_error``, the penalty's stats when ``lam > 0``, and the step's own.
    """

    kwargs_schema = PenaltyOptions  # the options of **penalty (robust_cli.schema)

    def __init__(self, **penalty):
        self.penalty = LipschitzPenalty(PenaltyOptions(**penalty))

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Perturbation:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> DefenseOutput:
        p = self.perturb(model, x, y)
        stats = dict(p.stats)
        if self.penalty.lam > 0:
            loss, logits_adv, pstats = self.penalty(model, p.x_adv, y, direction=p.gradient)
            # the clean-point gradient norms of the step win over the penalty's (taken at x')
            stats.update({k if k == "penalty" else f"adv_{k}": v for k, v in pstats.items()})
            adv_loss = F.cross_entropy(logits_adv.detach(), y)
        else:
            logits_adv = model(p.x_adv)
            loss = adv_loss = F.cross_entropy(logits_adv, y)
        stats.update(adv_loss=adv_loss.detach(), adv_error=error_rate(logits_adv, y))
        return DefenseOutput(loss=loss, logits=p.clean_logits, stats=to_floats(stats))
