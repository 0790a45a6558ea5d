"""Every shipped model as a list of *nodes* the bound computations walk: layers in forward order, with
residual blocks as ``Residual(branch, shortcut, post)``.

``nodes_of(model)`` reads the structure from the declared forward order of each architecture body
(``CHAIN_BODIES``) and of each residual block (``_residual``); a module it does not know is refused
(``NotImplementedError``), never guessed, since a bound of a misread network certifies nothing.
``run_nodes(nodes, x)`` evaluates the list; the tests check that it reproduces every model's logits, which
is what ties the bounds to the models actually shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from robust_cli.models.allcnn import AllCNN
from robust_cli.models.layers import Normalize, PreActBlock, RobustModel, TanhHead
from robust_cli.models.lenet5 import LeNet5
from robust_cli.models.mlp import MLP
from robust_cli.models.nin import NIN
from robust_cli.models.preact_resnet import PreActResNet18
from robust_cli.models.resnet import BasicBlock, ResNet34
from robust_cli.models.resnext import BranchBlock, ResNeXt34
from robust_cli.models.wrn import WideResNet

#: architecture bodies whose forward is the composition of these children, in this order
CHAIN_BODIES: dict[type, tuple[str, ...]] = {
    MLP: ("net",), LeNet5: ("features", "classifier"), AllCNN: ("net",), NIN: ("net",),
    ResNet34: ("stem", "stages", "pool", "fc"), PreActResNet18: ("stem", "stages", "final", "fc"),
    ResNeXt34: ("stem", "stages", "pool", "fc"), WideResNet: ("stem", "stages", "final", "fc"),
}

#: further models as node lists: ``{class: module -> nodes}`` (e.g. the tests' analytic linear model)
NODE_BUILDERS: dict[type, Callable[[nn.Module], list]] = {}

#: layers the bounds handle one by one (eval mode: Dropout is the identity, BatchNorm its running affine map)
AFFINE = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, Normalize, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
          nn.Flatten, nn.Dropout, nn.Identity)
NONLINEAR = (nn.ReLU, nn.MaxPool2d)


class GroupMean(nn.Module):
    """``[B, g*C, H, W] -> [B, C, H, W]``: the mean over the ``g`` channel groups (ResNeXt's branch mean)."""

    def __init__(self, groups: int, channels: int):
        super().__init__()
        self.groups, self.channels = groups, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return x.view(b, self.groups, self.channels, h, w).mean(dim=1)


class ScaledTanh(nn.Module):
    """``t * tanh(z / t)`` of ``TanhHead`` (1-Lipschitz, strictly increasing in each logit for any ``t``)."""

    def __init__(self, t: torch.Tensor):
        super().__init__()
        self.t = t

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.t * torch.tanh(z / self.t)


class ReLUAfter(nn.ReLU):
    """The ReLU a block applies functionally (``F.relu``), as a node."""


@dataclass
class Residual:
    """``post(branch(x) + shortcut(x))``; an empty ``shortcut`` is the identity, an empty ``post`` none."""

    branch: list = field(default_factory=list)
    shortcut: list = field(default_factory=list)
    post: list = field(default_factory=list)


def _residual(block: nn.Module) -> Residual:
    """The three blocks as their forward methods compute them (models/resnet.py, layers.py, resnext.py)."""
    if isinstance(block, BasicBlock):
        shortcut = [] if isinstance(block.shortcut, nn.Identity) else _chain(block.shortcut)
        return Residual([block.conv1, block.bn1, ReLUAfter(), block.conv2, block.bn2], shortcut, [ReLUAfter()])
    if isinstance(block, PreActBlock):
        pre = [block.bn1, ReLUAfter()]
        shortcut = [] if block.shortcut is None else [*pre, block.shortcut]
        return Residual([*pre, block.conv1, block.bn2, ReLUAfter(), *_chain(block.drop), block.conv2], shortcut)
    if isinstance(block, BranchBlock):
        branch = [block.conv0, block.bn0, ReLUAfter(), block.conv1, block.bn1,
                  GroupMean(block.cardinality, block.channels)]
        return Residual(branch, [], [ReLUAfter()])
    raise NotImplementedError(f"no bound for {type(block).__name__}")


def _chain(module: nn.Module) -> list:
    if type(module) in NODE_BUILDERS:
        return NODE_BUILDERS[type(module)](module)
    if isinstance(module, nn.Sequential):
        return [node for child in module for node in _chain(child)]
    if type(module) in CHAIN_BODIES:
        return [node for name in CHAIN_BODIES[type(module)] for node in _chain(getattr(module, name))]
    if isinstance(module, (BasicBlock, PreActBlock, BranchBlock)):
        return [_residual(module)]
    if isinstance(module, TanhHead):
        return [module.bn, ScaledTanh(module.t.detach())]
    if isinstance(module, RobustModel):
        return [module.normalize, *_chain(module.body), *_chain(module.head)]
    if isinstance(module, (*AFFINE, *NONLINEAR)):
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            raise NotImplementedError(f"no bound for a {module.padding_mode}-padded conv")
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.running_var is None:
            raise NotImplementedError("no bound for BatchNorm without running statistics")
        return [module]
    raise NotImplementedError(f"no bound for {type(module).__name__}; certification knows the shipped models")


def nodes_of(model: nn.Module) -> list:
    """The node list of ``model`` (a ``RobustModel``, an architecture body, a ``NODE_BUILDERS`` class or a
    plain ``nn.Sequential`` of known layers). ``NotImplementedError`` for unknown modules."""
    return _chain(model)


def decision_nodes(model: nn.Module) -> list:
    """``nodes_of(model)`` without a final ``ScaledTanh``: the same increasing function of every logit, so
    it changes no prediction and no certificate, and the bounds need not relax it."""
    nodes = nodes_of(model)
    return nodes[:-1] if nodes and isinstance(nodes[-1], ScaledTanh) else nodes


def is_chain(nodes: list) -> bool:
    """No residual block: CROWN's backward pass applies."""
    return not any(isinstance(n, Residual) for n in nodes)


def run_nodes(nodes: list, x: torch.Tensor) -> torch.Tensor:
    """Evaluate the node list on ``x`` (eval mode is the caller's): equals the model's forward."""
    for node in nodes:
        if isinstance(node, Residual):
            x = run_nodes(node.post, run_nodes(node.branch, x) + run_nodes(node.shortcut, x))
        else:
            x = node(x)
    return x
