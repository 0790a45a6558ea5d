"""Layers every model shares: input normalisation and the logit-normalising tanh head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the first layer of every model, so inputs stay in [0,1].

    Keeping the normalisation inside the model means a checkpoint carries it and attacks measure
    perturbations in pixel units.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TanhHead(nn.Module):
    """The logit-normalising head of Finlay et al. (SPEC.md §1, "& tanh").

    BatchNorm without learnable affine on the logits ``[B, K]``, then ``t * tanh(z / t)`` with one learnable
    scalar ``t`` (initialised at ``t0``). Bounded logits make the loss's input gradient small where the model
    is confident, which is what the Lipschitz penalty rewards.
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.normalize(x)))
