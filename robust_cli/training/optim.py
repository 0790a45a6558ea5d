"""Optimizers and the papers' Tikhonov penalty."""

from __future__ import annotations

import torch
from torch import nn

from robust_cli.errors import UserError


def build_optimizer(params, cfg) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam or AdamW from an ``optimizer`` config node."""
    name = cfg.name
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise UserError(f"unknown optimizer {name!r}; expected sgd, adam or adamw")


def tikhonov_penalty(model: nn.Module) -> torch.Tensor:
    """``sum of squared non-bias weights`` (the "Tikhonov regularization" of the training recipe in
    Finlay, Oberman & Abbasi, "Improved robustness to adversarial examples using Lipschitz regularization
    of the loss", App. A).

    Biases, BatchNorm parameters and the tanh head's scalar are 1-dimensional and left out.
    """
    weights = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    if not weights:
        return torch.zeros(())
    return torch.stack([p.pow(2).sum() for p in weights]).sum()
