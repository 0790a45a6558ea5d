"""ResNeXt-34 of Finlay et al. (App. A): basic (not bottleneck) blocks whose branches are averaged."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from robust_cli.models.layers import check_in_shape, conv_block, widening_stages
from robust_cli.models import model_schema


class BranchBlock(nn.Module):
    """Basic residual block with ``cardinality`` branches aggregated by their MEAN (Finlay App. A).

    Each branch ``k`` is ``bn(conv3x3_k(relu(bn(conv3x3_k(x)))))`` with ``channels`` outputs; the first
    convs of all branches are one ordinary conv to ``c * channels`` maps, the second one grouped conv
    (``groups = c``). The block returns ``relu(x + (1/c) sum_k branch_k(x))``: a mean, not the 1x1-conv
    (sum) aggregation of Xie et al., so adding branches does not scale the residual.

    Shapes: ``[B, channels, H, W]`` -> ``[B, channels, H, W]``.
    """

    def __init__(self, channels: int, cardinality: int):
        super().__init__()
        self.channels, self.cardinality = channels, cardinality
        width = channels * cardinality
        self.conv0 = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, groups=cardinality, bias=False)
        self.bn1 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv1(F.relu(self.bn0(self.conv0(x)))))
        b, _, h, w = y.shape
        # group k of the grouped conv holds channels [k*C, (k+1)*C): branch k
        y = y.view(b, self.cardinality, self.channels, h, w).mean(dim=1)
        return F.relu(x + y)


class ResNeXt34(nn.Module):
    """``conv3x3 -> BN -> ReLU -> 3 stages -> global average -> Linear`` (the authors' ``ResNeXt34_2x32``).

    Between stages a 1x1 conv (+ BN + ReLU) doubles the channels and a 2x2 average pool halves the map
    (ceil mode, so odd and tiny maps survive). 34 weight layers: stem 1 + 15 blocks x 2 + 2 transitions
    + the classifier. The authors' code also put BatchNorm and a ReLU on the logits; that is not kept here
    (the ``tanh_head`` option is the paper's logit normalisation).

    Shapes: ``[B, C, H, W]`` -> logits ``[B, num_classes]``.

    Options (``model.<name>=...``; defaults in the signature):
        width: channels of each branch in the first stage; later stages double it
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, cardinality: int = 2, width: int = 32,
                 blocks: Sequence[int] = (5, 5, 5)):
        super().__init__()
        c, _, _ = check_in_shape(in_shape)
        if cardinality < 1:
            raise ValueError(f"resnext34 cardinality must be >= 1, got {cardinality}")
        self.stem = conv_block(c, width, 3, padding=1, batchnorm=True)
        def stage(i: int, n: int, in_ch: int, out_ch: int) -> list[nn.Module]:
            # a 1x1 conv + 2x2 average pool between stages, then the branch blocks
            transition = [conv_block(in_ch, out_ch, 1, batchnorm=True), nn.AvgPool2d(2, ceil_mode=True)]
            return (transition if i > 0 else []) + [BranchBlock(out_ch, cardinality) for _ in range(n)]

        self.stages, in_ch = widening_stages(width, blocks, stage)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))))


SCHEMAS = {"resnext34": model_schema(ResNeXt34, "resnext34")}
