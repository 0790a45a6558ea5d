"""The CIFAR ResNet-34 (He et al. 2016) used by Finlay et al.: 3x3 stem, basic blocks [3, 4, 6, 3]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from robust_cli.models.layers import check_in_shape, strided_blocks, widening_stages
from robust_cli.models import model_schema


class BasicBlock(nn.Module):
    """``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))`` (He et al. 2016, Fig. 2 left).

    The shortcut is the identity, or a strided 1x1 conv + BN where the shape changes (option B).
    Shapes: ``[B, in_ch, H, W]`` -> ``[B, out_ch, ceil(H/stride), ceil(W/stride)]``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet34(nn.Module):
    """CIFAR ResNet: ``conv3x3 -> BN -> ReLU -> stages (strides 1, 2, 2, 2) -> global average -> Linear``.

    Global *adaptive* average pooling replaces the fixed 4x4 pool, so 8x8 and 28x28 inputs work.
    Default (width 64, blocks [3, 4, 6, 3], 10 classes): 21,282,122 parameters (the "21.3M" of the
    CIFAR ResNet-34), 34 weight layers on the main path.

    Shapes: ``[B, C, H, W]`` -> logits ``[B, num_classes]``.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, width: int = 64,
                 blocks: Sequence[int] = (3, 4, 6, 3)):
        super().__init__()
        c, _, _ = check_in_shape(in_shape)
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.stages, in_ch = widening_stages(width, blocks, strided_blocks(BasicBlock))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))))


SCHEMAS = {"resnet34": model_schema(ResNet34, "resnet34")}
