"""``lip``: mean CE on the clean batch plus the Lipschitz penalty (SPEC.md §1), no adversarial step.

``loss = (1/B) sum_i l_i + lam * max_i ||grad_{x_i} (1/B) sum_j l_j||_norm`` (``reduction=mean`` replaces the
max by the batch mean). See :mod:`robust_cli.defenses.penalty` for the two methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robust_cli.defenses.base import DefenseOutput, to_floats
from robust_cli.defenses.penalty import LipschitzPenalty


@dataclass
class LipConfig:
    """``defense=lip``."""

    _target_: str = "robust_cli.defenses.lip.Lip"
    name: str = "lip"
    lam: float = 0.1  # weight of the penalty
    norm: str = "l2"  # norm of the input gradient: l2 | l1 | linf (also 2, 1, inf)
    reduction: str = "max"  # max | mean over the batch
    method: str = "double_backprop"  # double_backprop | finite_difference
    h: float = 0.01  # finite-difference step ([0,1] pixel units)


class Lip:
    """Clean CE + ``lam`` * the input-gradient-norm penalty. Stats: ``clean_loss``, ``penalty``,
    ``grad_norm_max``, ``grad_norm_mean`` (per-sample ``||grad_x l_i||_2`` in train mode)."""

    def __init__(self, lam: float = 0.1, norm: object = "l2", reduction: str = "max",
                 method: str = "double_backprop", h: float = 0.01):
        self.penalty = LipschitzPenalty(lam, norm, reduction, method, h)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> DefenseOutput:
        loss, logits, stats = self.penalty(model, x, y)
        clean_loss = torch.nn.functional.cross_entropy(logits.detach(), y)
        return DefenseOutput(loss, logits.detach(), to_floats({"clean_loss": clean_loss, **stats}))


SCHEMAS = {"lip": LipConfig}
