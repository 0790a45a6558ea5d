"""All-CNN-C (Springenberg et al. 2014, "Striving for simplicity"), one of Finlay et al.'s CIFAR models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robust_cli.models.layers import check_in_shape, conv_block, conv_out_size, valid_or_same_padding
from robust_cli.models import model_schema


class AllCNN(nn.Module):
    """All-CNN-C: only convolutions, downsampling by stride-2 convs instead of pooling.

    ``3x3 c1, 3x3 c1, 3x3 c1 /2, [drop], 3x3 c2, 3x3 c2, 3x3 c2 /2, [drop], 3x3 c2 (valid), 1x1 c2,
    1x1 K, global average``. Every conv but the last is followed by [BatchNorm and] ReLU; the class conv
    is left linear so the logits can be negative (the original put a ReLU there before the softmax).
    The valid 3x3 conv pads by 1 when the map is smaller than 3 (8x8 digits reach it at 2x2).
    With ``batchnorm=false`` the CIFAR-10 model has 1,369,738 parameters (Springenberg Table 2: 1.4M).

    Shapes: ``[B, C, H, W]`` -> logits ``[B, num_classes]``.

    Options (``model.<name>=...``; defaults in the signature):
        channels: widths of the two stages
        dropout: after each stride-2 conv
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (96, 192),
                 batchnorm: bool = True, dropout: float = 0.0, input_dropout: float = 0.0):
        super().__init__()
        c, h, w = check_in_shape(in_shape)
        if len(channels) != 2:
            raise ValueError(f"allcnn has two stages: channels needs 2 entries, got {list(channels)}")
        c1, c2 = (int(ch) for ch in channels)
        bn = batchnorm
        # size after the two stride-2 convs (kernel 3, padding 1)
        h2 = conv_out_size(conv_out_size(h, 3, 2, 1), 3, 2, 1)
        w2 = conv_out_size(conv_out_size(w, 3, 2, 1), 3, 2, 1)
        pad = (valid_or_same_padding(h2, 3), valid_or_same_padding(w2, 3))
        layers: list[nn.Module] = []
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        for c_in, c_out in ((c, c1), (c1, c2)):  # two stages: 3x3, 3x3, 3x3 stride 2 (the pooling), dropout
            layers += [
                conv_block(c_in, c_out, 3, padding=1, batchnorm=bn),
                conv_block(c_out, c_out, 3, padding=1, batchnorm=bn),
                conv_block(c_out, c_out, 3, stride=2, padding=1, batchnorm=bn),
            ]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers += [
            nn.Sequential(nn.Conv2d(c2, c2, 3, padding=pad, bias=not bn),
                          *([nn.BatchNorm2d(c2)] if bn else []), nn.ReLU()),
            conv_block(c2, c2, 1, batchnorm=bn),
            nn.Conv2d(c2, num_classes, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


SCHEMAS = {"allcnn": model_schema(AllCNN, "allcnn")}
