"""The WideResNet of RobustBench's CIFAR ``Standard`` entries, with the state-dict layout of their files.

Zagoruyko & Komodakis, "Wide Residual Networks" (2016), Table 1 with pre-activation blocks B(3,3): a 3x3 stem
conv (16 channels), three groups of ``(depth - 4) / 6`` blocks of widths ``16k, 32k, 64k`` (strides 1, 2, 2),
BN-ReLU, global average pooling, a linear layer. RobustBench's ``Standard`` (CIFAR-10, Linf and L2) is
WRN-28-10 trained without adversarial examples; it takes [0,1] images, no normalisation.

The parameter names (``block1.layer.0.bn1.weight``, ``convShortcut``, ``fc``) are those of the checkpoint
files RobustBench distributes, so their state dict loads with ``strict=True``. This is not a training
architecture of ``robust train`` (that is ``models/wrn.py``); it exists only to read those files without
the robustbench package. Shapes: ``[B, 3, 32, 32]`` -> logits ``[B, num_classes]``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _Block(nn.Module):
    """``conv(relu(bn(conv(relu(bn(x)))))) + shortcut``; the shortcut is a strided 1x1 conv of the
    pre-activated input where the width changes, else the input itself."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.equal = c_in == c_out
        self.convShortcut = None if self.equal else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        return out + (x if self.equal else self.convShortcut(pre))


class _Group(nn.Module):
    def __init__(self, n: int, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[_Block(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class RobustBenchWideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` in RobustBench's layout (see the module docstring)."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.block1 = _Group(n, widths[0], widths[1], 1)
        self.block2 = _Group(n, widths[1], widths[2], 2)
        self.block3 = _Group(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))  # = avg_pool2d(out, 8) on 32x32 inputs


#: ``{(dataset, threat_model, name): factory}`` of the RobustBench entries readable without robustbench
BUILTIN = {
    ("cifar10", "Linf", "Standard"): lambda: RobustBenchWideResNet(28, 10, 10),
    ("cifar10", "L2", "Standard"): lambda: RobustBenchWideResNet(28, 10, 10),
}
