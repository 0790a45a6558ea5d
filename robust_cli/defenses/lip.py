"""``lip``: mean CE on the clean batch plus the Lipschitz penalty (Finlay, Oberman & Abbasi 2018,
§3), no adversarial step.

``loss = (1/B) sum_i l_i + lam * max_i ||grad_{x_i} (1/B) sum_j l_j||_norm`` (``reduction=mean`` replaces the
max by the batch mean). See :mod:`robust_cli.defenses.penalty` for the two methods.
"""

from __future__ import annotations

import torch
from torch import nn

from robust_cli.defenses.base import DefenseOutput, to_floats
from robust_cli.defenses.penalty import LipschitzPenalty, PenaltyOptions
from robust_cli.schema import schema_of


class Lip:
    """Clean CE + ``lam`` * the input-gradient-norm penalty. Stats: ``clean_loss``, ``penalty``,
    ``grad_norm_max``, ``grad_norm_mean`` (per-sample ``||grad_x l_i||_2`` in train mode)."""

    kwargs_schema = PenaltyOptions  # penalty_norm, reduction, method, h (robust_cli.schema)

    def __init__(self, lam: float = 0.1, **penalty):
        self.penalty = LipschitzPenalty(PenaltyOptions(lam=lam, **penalty))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> DefenseOutput:
        loss, logits, stats = self.penalty(model, x, y)
        clean_loss = torch.nn.functional.cross_entropy(logits.detach(), y)
        return DefenseOutput(loss, logits.detach(), to_floats({"clean_loss": clean_loss, **stats}))


SCHEMAS = {"lip": schema_of(Lip, "lip")}
