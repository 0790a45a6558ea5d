"""Wide residual network WRN-depth-k (Zagoruyko & Komodakis 2016), CIFAR layout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robust_cli.models.layers import PreActBlock, check_in_shape
from robust_cli.models import model_schema


class WideResNet(nn.Module):
    """``conv3x3 16 -> 3 stages of (depth-4)/6 wide blocks (strides 1, 2, 2) -> BN -> ReLU -> average -> FC``.

    WRN-28-10 on CIFAR-10: 36,479,194 parameters (Zagoruyko & Komodakis Table: 36.5M).
    Shapes: ``[B, C, H, W]`` -> logits ``[B, num_classes]``.

    Options (``model.<name>=...``; defaults in the signature):
        dropout: between the two convs of a block; the paper's best CIFAR runs used 0.3
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, depth: int = 28, widen_factor: int = 10,
                 dropout: float = 0.0):
        super().__init__()
        c, _, _ = check_in_shape(in_shape)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"wrn depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"wrn widen_factor must be >= 1, got {widen_factor}")
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(c, 16, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        in_ch = 16
        for i, out_ch in enumerate(widths):
            stages.append(nn.Sequential(*[
                PreActBlock(in_ch if j == 0 else out_ch, out_ch, stride=(2 if i > 0 and j == 0 else 1),
                            dropout=dropout)
                for j in range(n)
            ]))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.final = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.final(self.stages(self.stem(x))))


SCHEMAS = {"wrn": model_schema(WideResNet, "wrn")}
