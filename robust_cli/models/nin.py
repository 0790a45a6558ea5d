"""Network-in-Network (Lin, Chen, Yan 2014), the thesis's CIFAR-10 model (Matyasko Ch.3, Table 3.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robust_cli.models.layers import check_in_shape, conv_block
from robust_cli.models import model_schema


class NIN(nn.Module):
    """Three "mlpconv" blocks (a spatial conv then two 1x1 convs, each with ReLU) and global average pooling.

    ``5x5 c0, 1x1 c1, 1x1 c2, maxpool 3/2, drop, 5x5 c0, 1x1 c0, 1x1 c0, avgpool 3/2, drop,
    3x3 c0, 1x1 c0, 1x1 K, global average``. Pooling uses Caffe's ceil mode (32 -> 16 -> 8; 8 -> 4 -> 2),
    so tiny inputs keep a non-empty map. The class conv is linear (the original's last ReLU is dropped so
    the logits can be negative). CIFAR-10: 966,986 parameters (Lin et al.: about 0.97M).

    Shapes: ``[B, C, H, W]`` -> logits ``[B, num_classes]``.

    Options (``model.<name>=...``; defaults in the signature):
        channels: first mlpconv; later ones use [0]
        batchnorm: the original has none
        dropout: after the first two mlpconv blocks, as in the original
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (192, 160, 96),
                 batchnorm: bool = False, dropout: float = 0.5):
        super().__init__()
        c, _, _ = check_in_shape(in_shape)
        if len(channels) != 3:
            raise ValueError(f"nin: channels needs 3 entries, got {list(channels)}")
        c0, c1, c2 = (int(ch) for ch in channels)
        bn = batchnorm
        self.net = nn.Sequential(
            conv_block(c, c0, 5, padding=2, batchnorm=bn),
            conv_block(c0, c1, 1, batchnorm=bn),
            conv_block(c1, c2, 1, batchnorm=bn),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            *self._dropout(dropout),
            conv_block(c2, c0, 5, padding=2, batchnorm=bn),
            conv_block(c0, c0, 1, batchnorm=bn),
            conv_block(c0, c0, 1, batchnorm=bn),
            nn.AvgPool2d(3, stride=2, ceil_mode=True),
            *self._dropout(dropout),
            conv_block(c0, c0, 3, padding=1, batchnorm=bn),
            conv_block(c0, c0, 1, batchnorm=bn),
            nn.Conv2d(c0, num_classes, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    @staticmethod
    def _dropout(p: float) -> list[nn.Module]:
        return [nn.Dropout(p)] if p > 0 else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


SCHEMAS = {"nin": model_schema(NIN, "nin")}
