"""What every defense shares: its output type and the adversarial-step context.

A defense is an object called as ``defense(model, x, y) -> DefenseOutput``; see CONTRIBUTING.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DefenseOutput:
    """The result of one defense step on a batch.

    Attributes:
        loss: scalar tensor the optimizer steps on (attached to the graph).
        logits: ``[B, K]`` logits of the clean inputs as the model saw them (for the train error).
        stats: per-batch statistics (plain floats) averaged over the epoch into ``history.csv``.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)
