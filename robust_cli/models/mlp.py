"""Fully connected ReLU network: the thesis's MNIST MLP (Matyasko Ch.3: 3 x 1000; Ch.4: 3 x 1200)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robust_cli.models.layers import check_in_shape
from robust_cli.models import model_schema


class MLP(nn.Module):
    """``Flatten -> [Linear -> ReLU -> Dropout] x len(widths) -> Linear``.

    Shapes: ``[B, C, H, W]`` (normalised images) -> logits ``[B, num_classes]``.

    Options (``model.<name>=...``; defaults in the signature):
        widths: thesis Ch.3; Ch.4 used 1200
        dropout: probability; the thesis's "Dropout" baseline row used it, the others did not
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (1000, 1000, 1000),
                 dropout: float = 0.0):
        super().__init__()
        c, h, w = check_in_shape(in_shape)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = c * h * w
        for width in widths:
            layers += [nn.Linear(fan_in, int(width)), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            fan_in = int(width)
        layers.append(nn.Linear(fan_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


SCHEMAS = {"mlp": model_schema(MLP, "mlp")}
