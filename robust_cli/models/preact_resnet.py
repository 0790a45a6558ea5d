"""Pre-activation ResNet-18 (He et al. 2016, "Identity mappings in deep residual networks"), CIFAR layout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robust_cli.models.layers import PreActBlock, check_in_shape, strided_blocks, widening_stages
from robust_cli.models import model_schema


class PreActResNet18(nn.Module):
    """``conv3x3 -> pre-activation stages (strides 1, 2, 2, 2) -> BN -> ReLU -> global average -> Linear``.

    The final BN + ReLU completes the last pre-activation unit (as in He et al. and the PreAct-ResNet-18
    of Rice et al. 2020). Default (width 64, 10 classes): 11,172,170 parameters (the usual "11.2M").

    Shapes: ``[B, C, H, W]`` -> logits ``[B, num_classes]``.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, width: int = 64,
                 blocks: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        c, _, _ = check_in_shape(in_shape)
        self.stem = nn.Conv2d(c, width, 3, padding=1, bias=False)
        self.stages, in_ch = widening_stages(width, blocks, strided_blocks(PreActBlock))
        self.final = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                   nn.Flatten())
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.final(self.stages(self.stem(x))))


SCHEMAS = {"preact_resnet18": model_schema(PreActResNet18, "preact_resnet18")}
