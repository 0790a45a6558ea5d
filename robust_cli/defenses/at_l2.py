"""J2 ``at_l2`` (Finlay, Oberman & Abbasi 2018, §2.1): mean CE at ``x' = x + eps * g / ||g||_2`` per sample.

Each row is normalised by its own l2 norm, so every perturbation has l2 norm ``eps``; rows whose gradient is
exactly zero are left unperturbed. ``lam > 0`` adds the Lipschitz penalty at ``x'`` (that is ``tulip``).
The step, its options and the penalty: :mod:`robust_cli.defenses.single_step`.
"""

from __future__ import annotations

import torch

from robust_cli.defenses.base import l2_normalize
from robust_cli.defenses.single_step import SingleStepDefense
from robust_cli.schema import schema_of


class AtL2(SingleStepDefense):
    """J2: CE at the per-sample normalised gradient step of l2 norm ``eps`` (options: ``SingleStepDefense``)."""

    def step(self, g: torch.Tensor) -> torch.Tensor:
        return self.eps * l2_normalize(g)


SCHEMAS = {"at_l2": schema_of(AtL2, "at_l2")}
