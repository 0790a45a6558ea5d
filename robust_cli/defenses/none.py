"""J0 ``none``: the mean cross-entropy on the clean batch (Finlay, Oberman & Abbasi 2018, §2)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from robust_cli.defenses.base import DefenseOutput
from robust_cli.schema import schema_of


class NoDefense:
    """``loss = (1/B) sum_i CE(f(x_i), y_i)``; stats: none beyond the loop's own (train loss, error)."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> DefenseOutput:
        logits = model(x)
        return DefenseOutput(F.cross_entropy(logits, y), logits.detach(), {})


SCHEMAS = {"none": schema_of(NoDefense, "none")}
