"""Layers every model shares: input normalisation, the logit-normalising tanh head, and small helpers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the first layer of every model, so inputs stay in [0,1].

    Keeping the normalisation inside the model means a checkpoint carries it and attacks measure
    perturbations in pixel units.

    Shapes: ``x`` ``[B, C, H, W]`` in [0,1] -> ``[B, C, H, W]``; ``mean`` and ``std`` have ``C`` entries.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        if any(float(s) <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class TanhHead(nn.Module):
    """The logit-normalising head of Finlay et al. ("& tanh", Finlay et al. App. A.1).

    BatchNorm without learnable affine on the logits ``[B, K]``, then ``t * tanh(z / t)`` with one learnable
    scalar ``t`` (initialised at ``t0``), shared by all classes. Bounded logits (``|out| < |t|``) make the
    loss's input gradient small where the model is confident, which is what the Lipschitz penalty rewards.

    Shapes: ``z`` ``[B, K]`` -> ``[B, K]``. In train mode BatchNorm needs ``B > 1``.
    """

    def __init__(self, num_classes: int, t0: float = 1.0):
        super().__init__()
        self.bn = nn.BatchNorm1d(num_classes, affine=False)
        self.t = nn.Parameter(torch.tensor(float(t0)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.bn(z)
        return self.t * torch.tanh(z / self.t)


class RobustModel(nn.Module):
    """``Normalize -> body -> optional TanhHead``: maps images ``[B,C,H,W]`` in [0,1] to logits ``[B,K]``."""

    def __init__(self, body: nn.Module, mean: Sequence[float], std: Sequence[float], num_classes: int,
                 tanh_head: bool = False):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.body = body
        self.head = TanhHead(num_classes) if tanh_head else nn.Identity()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.normalize(x)))


# ---------------------------------------------------------------- helpers for the architecture bodies


class PreActBlock(nn.Module):
    """``conv3x3(drop(relu(bn(conv3x3(relu(bn(x))))))) + shortcut``: the full pre-activation unit (He et al.
    2016, Fig. 4e) of PreAct-ResNet, and with ``dropout > 0`` the wide block B(3,3) of WRN (Zagoruyko &
    Komodakis 2016).

    Where the shape changes, the shortcut is a strided 1x1 conv applied to the pre-activated input.
    Shapes: ``[B, in_ch, H, W]`` -> ``[B, out_ch, ceil(H/stride), ceil(W/stride)]``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.drop(F.relu(self.bn2(out))))
        return out + shortcut


def widening_stages(width: int, blocks: Sequence[int],
                    stage: Callable[[int, int, int, int], list[nn.Module]]) -> tuple[nn.Sequential, int]:
    """The stages of a CIFAR residual net: stage ``i`` has ``width * 2**i`` channels and ``blocks[i]`` blocks.

    ``stage(i, n, in_ch, out_ch)`` returns the layers of stage ``i`` (``n`` blocks from ``in_ch`` channels
    to ``out_ch``). Returns ``(nn.Sequential of the stages, channels of the last stage)``.
    """
    stages: list[nn.Module] = []
    in_ch = width
    for i, n in enumerate(blocks):
        out_ch = width * 2**i
        stages.append(nn.Sequential(*stage(i, int(n), in_ch, out_ch)))
        in_ch = out_ch
    return nn.Sequential(*stages), in_ch


def strided_blocks(block: Callable[..., nn.Module]) -> Callable[[int, int, int, int], list[nn.Module]]:
    """A ``widening_stages`` stage of ``block(in_ch, out_ch, stride)`` units (He et al. 2016): every stage
    after the first halves the resolution in its first block."""

    def stage(i: int, n: int, in_ch: int, out_ch: int) -> list[nn.Module]:
        return [block(in_ch if j == 0 else out_ch, out_ch, stride=(1 if i == 0 or j > 0 else 2)) for j in range(n)]

    return stage


def conv_block(in_ch: int, out_ch: int, kernel_size: int, *, stride: int = 1, padding: int = 0,
               batchnorm: bool = False, relu: bool = True) -> nn.Sequential:
    """``Conv2d -> [BatchNorm2d] -> [ReLU]``; the conv has no bias when BatchNorm follows (it would cancel).

    Shapes: ``[B, in_ch, H, W]`` -> ``[B, out_ch, H', W']`` with ``H' = (H + 2 padding - k) // stride + 1``.
    """
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding,
                                         bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(out_ch))
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def valid_or_same_padding(size: int, kernel_size: int) -> int:
    """Padding 0 (the original "valid" convolution) when the map is at least ``kernel_size`` wide, else
    ``kernel_size // 2`` ("same"), so that tiny inputs (8x8 digits) never shrink to an empty map."""
    return 0 if size >= kernel_size else kernel_size // 2


def conv_out_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0, ceil_mode: bool = False) -> int:
    """Spatial size after a conv or pooling layer (PyTorch's formula, dilation 1)."""
    num = size + 2 * padding - kernel_size
    return (-(-num // stride) if ceil_mode else num // stride) + 1


def check_in_shape(in_shape: Sequence[int]) -> tuple[int, int, int]:
    """``in_shape`` as a ``(C, H, W)`` tuple of positive ints; ValueError otherwise."""
    shape = tuple(int(s) for s in in_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"in_shape must be (C, H, W) with positive entries, got {list(in_shape)}")
    return shape  # type: ignore[return-value]


def num_parameters(module: nn.Module) -> int:
    """Number of scalar parameters (trainable or not); works on the meta device too."""
    return sum(p.numel() for p in module.parameters())
