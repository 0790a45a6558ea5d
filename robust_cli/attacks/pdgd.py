"""PDGD: primal-dual gradient descent, the l2 minimal-norm attack of Matyasko thesis Ch.5 (§5.2, Algorithm 2).

The primal player takes Adam steps on the whole proxy-Lagrangian ``lam_1 ||r||_2 + lam_2 g(x + r)`` (eq 5.3,
with the softplus surrogate ``g`` of the margin by default) and projects onto the box
(:class:`robust_cli.attacks.primal_steps.GradientStep`); the dual player, the best-so-far bookkeeping,
restarts, the lr grid, fine-tuning and the warm start from ``x_init`` are the engine's
(:mod:`robust_cli.attacks.primal_dual`), shared with PDPGD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from robust_cli.attacks.contract import register_attack
from robust_cli.attacks.primal_dual import PrimalDualOptions, primal_dual
from robust_cli.attacks.primal_steps import GradientStep
from robust_cli.schema import schema_of


@dataclass
class PDGDOptions(PrimalDualOptions):
    """Options of ``pdgd``: exactly the shared primal-dual ones (``PrimalDualOptions``); ``lr`` defaults to 0.1,
    from the thesis grid {0.01, 0.05, 0.1, 0.5, 1.0} (see BENCHMARKS.md)."""


@register_attack(norms=("l2",), budget=False)
def pdgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str = "l2",
         x_init: Optional[torch.Tensor] = None, **options) -> torch.Tensor:
    """Primal-dual gradient descent (thesis Algorithm 2) minimising the l2 norm.

    Args:
        model: maps ``[B, C, H, W]`` in [0,1] to logits ``[B, K]``; its mode and parameters are untouched.
        x: ``[B, C, H, W]`` in [0,1]; y: ``[B]`` int64 true labels (targets when ``targeted``).
        x_init: ``[B, C, H, W]`` or None: starting adversarials (the best of earlier attacks); where one is
            misclassified the result is never larger, and one more run per lr starts from it (``primal_dual``).
        norm: must be ``"l2"``.
        **options: the fields of ``PDGDOptions`` (an unknown one is a ``TypeError``).

    Returns:
        ``[B, C, H, W]`` in [0,1]: per sample the smallest-l2 misclassified point (``x_init`` included); ``x``
        where none was found and where ``x`` is already misclassified.
    """
    if norm != "l2":
        raise ValueError(f"pdgd supports only norm l2, got {norm!r}")
    return primal_dual(model, x, y, norm=norm, options=PDGDOptions(**options), primal=GradientStep(),
                       x_init=x_init)


pdgd.options = PDGDOptions  # the schema (robust_cli.schema.options_of) reads the options from here

SCHEMAS = {"pdgd": schema_of(pdgd, "pdgd")}
