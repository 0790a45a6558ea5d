"""LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, the thesis's MNIST convnet (Matyasko Ch.3-4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robust_cli.models.input_grad_conv import InputGradConv2d
from robust_cli.models.layers import check_in_shape, conv_out_size, valid_or_same_padding
from robust_cli.models import model_schema


class LeNet5(nn.Module):
    """``conv5x5(pad 2) -> ReLU -> maxpool2 -> conv5x5 -> ReLU -> maxpool2 -> FC -> ReLU -> FC -> ReLU -> FC``.

    The first conv pads by 2, as LeCun's 32x32 input padding does for 28x28 digits, so MNIST gives the
    classic 16 x 5 x 5 = 400 features and 61,706 parameters. The second conv is "valid" unless the map
    is smaller than its kernel (8x8 digits), where it pads by 2 instead.

    Shapes: ``[B, C, H, W]`` -> logits ``[B, num_classes]``.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (6, 16),
                 hidden: Sequence[int] = (120, 84), dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        c, h, w = check_in_shape(in_shape)
        if len(channels) != 2:
            raise ValueError(f"lenet5 has two conv layers: channels needs 2 entries, got {list(channels)}")
        c1, c2 = (int(ch) for ch in channels)
        # spatial sizes after conv1 (same) and pool: H // 2
        h1, w1 = h // 2, w // 2
        ph, pw = valid_or_same_padding(h1, 5), valid_or_same_padding(w1, 5)
        h2 = conv_out_size(conv_out_size(h1, 5, padding=ph), 2, 2)
        w2 = conv_out_size(conv_out_size(w1, 5, padding=pw), 2, 2)
        if min(h1, w1, h2, w2) < 1:
            raise ValueError(f"input {list(in_shape)} is too small for lenet5 (needs at least 4x4)")
        self.features = nn.Sequential(
            # conv1's input gradient (every attack and defense needs it) by the fast CPU path
            InputGradConv2d(c, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=(ph, pw)), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        layers: list[nn.Module] = []
        fan_in = c2 * h2 * w2
        for width in hidden:
            layers += [nn.Linear(fan_in, int(width)), nn.ReLU()]
            if dropout > 0:  # after each hidden layer: the thesis's "Dropout" row of Table 3.1
                layers.append(nn.Dropout(dropout))
            fan_in = int(width)
        layers.append(nn.Linear(fan_in, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


SCHEMAS = {"lenet5": model_schema(LeNet5, "lenet5")}
