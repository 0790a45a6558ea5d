"""J1 ``at_fgsm`` (Finlay, Oberman & Abbasi 2018, §2.1): mean CE at ``x' = x + eps * sign(g) / sqrt(d)``.

``d = C*H*W``, so the step has l2 norm exactly ``eps`` wherever ``g`` has no zero entry. The step, its
options and the optional penalty: :mod:`robust_cli.defenses.single_step`.
"""

from __future__ import annotations

import math

import torch

from robust_cli.defenses.single_step import SingleStepDefense
from robust_cli.schema import schema_of


class AtFgsm(SingleStepDefense):
    """J1: CE at the scaled signed-gradient step of l2 norm ``eps`` (options: ``SingleStepDefense``)."""

    def step(self, g: torch.Tensor) -> torch.Tensor:
        return (self.eps / math.sqrt(g[0].numel())) * torch.sign(g)


SCHEMAS = {"at_fgsm": schema_of(AtFgsm, "at_fgsm")}
