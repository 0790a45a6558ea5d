"""The best adversarial kept per image by minimal-norm attacks, and their starting points (``x_init``).

A minimal-norm attack returns, per image, the smallest misclassified point it has seen (re-checked with the
model), the input itself where it found none (CONTRIBUTING.md, the attack contract). :class:`Best` keeps that
point; sizes are measured as the evaluation measures them (l0: changed pixels, any channel; Matyasko thesis
Ch.5 §5.3.4, eq 5.15), so "smaller here" is "smaller in ``per_sample.csv``".
"""

from __future__ import annotations

import torch
from torch import nn

from robust_cli.attacks.geometry import batch_norm, changed_pixels, view_as_images
from robust_cli.attacks.losses import is_adversarial


def perturbation_size(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """``[B]`` size of ``x_adv - x`` in ``norm``; l0 counts changed pixels of ``[B,C,H,W]`` images."""
    r = x_adv - x
    return changed_pixels(r) if norm == "l0" and r.dim() == 4 else batch_norm(r, norm)


class Best:
    """Per image of ``x`` ``[B,C,H,W]``: the smallest misclassified point offered so far (``x`` where none).

    Attributes:
        x_adv: ``[B,C,H,W]`` the kept points; size: ``[B]`` their sizes (``inf`` where none).
    """

    def __init__(self, x: torch.Tensor, norm: str):
        self.x0, self.norm = x.detach(), norm
        self.x_adv = self.x0.clone()
        self.size = torch.full((x.shape[0],), float("inf"), dtype=torch.float64, device=x.device)

    @property
    def found(self) -> torch.Tensor:
        return torch.isfinite(self.size)

    def offer(self, cand: torch.Tensor, adversarial: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Keep ``cand`` ``[b,C,H,W]`` where ``adversarial`` ``[b]`` and smaller; ``rows`` ``[b]`` = which images
        (all when None). Returns ``[b]`` bool, where it was kept."""
        rows = torch.arange(self.x0.shape[0], device=cand.device) if rows is None else rows
        size = perturbation_size(cand, self.x0[rows], self.norm).double()
        better = adversarial & (size < self.size[rows])
        keep = rows[better]
        self.x_adv[keep] = cand.detach()[better].to(self.x_adv.dtype)
        self.size[keep] = size[better]
        return better

    def check(self, model: nn.Module, cand: torch.Tensor, y: torch.Tensor,
              rows: torch.Tensor | None = None) -> torch.Tensor:
        """Classify ``cand`` (clipped to [0,1]) with ``model`` and offer it; returns the ``[b]`` adversarial mask."""
        cand = cand.detach().clamp(0, 1)
        with torch.no_grad():
            adversarial = is_adversarial(model(cand), y)
        self.offer(cand, adversarial, rows)
        return adversarial

    def start(self, model: nn.Module, y: torch.Tensor, x_init: torch.Tensor | None) -> None:
        """Offer the supplied starting points ``x_init`` ``[B,C,H,W]`` (rows the model classifies as ``y``,
        e.g. the clean image where an earlier attack failed, are ignored)."""
        if x_init is not None:
            if x_init.shape != self.x0.shape:
                raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {tuple(self.x0.shape)}")
            self.check(model, x_init.to(self.x0), y)


def blend(x: torch.Tensor, x_to: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x + t (x_to - x)`` with a per-sample ``t`` ``[B]``."""
    return x + view_as_images(t, x) * (x_to - x)
