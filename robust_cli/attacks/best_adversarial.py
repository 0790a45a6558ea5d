"""What the minimal-norm attacks C&W, DDN, FMN and ALMA share: the best adversarial found per sample.

Each of them walks a path of points and keeps, per sample, the smallest-norm point the model classified as
adversarial (Carlini & Wagner 2017 §V; Rony et al. 2019, Algorithm 1, line 9; Pintor et al. 2021,
Algorithm 1; Rony et al. 2021, Algorithm 1). ``BestAdversarial`` holds that point and tests success on the
very tensor the model saw, so what an attack returns was re-checked with the model; norms are those the
evaluation measures (l0 counts changed pixels, ``robust_cli.evaluation.distances``).
"""

from __future__ import annotations

import torch
from torch import nn

from robust_cli.attacks.geometry import view_as_images
from robust_cli.attacks.losses import is_adversarial
from robust_cli.attacks.primal_steps import perturbation_norm


def worst_norm(x: torch.Tensor, norm: str) -> torch.Tensor:
    """``[B]``: the largest ``||r||`` with ``x + r`` in [0,1] (a cap on the radius the attacks walk)."""
    far = torch.maximum(x, 1 - x)
    return perturbation_norm(far, norm)


class BestAdversarial:
    """Per sample the smallest-norm adversarial point seen so far; ``x`` itself where none was seen.

    ``x`` ``[B,C,H,W]`` in [0,1]; ``y`` ``[B]`` true labels (targets when ``targeted``). ``norm`` [B] of each
    kept point (``inf`` where none was found). Points already misclassified at the start count with norm 0.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, norm: str, targeted: bool):
        self.x, self.y, self.norm_name, self.targeted = x, y, norm, targeted
        self.adv = x.clone()
        self.norm = torch.full((x.shape[0],), float("inf"), device=x.device, dtype=x.dtype)
        self.last_norm: torch.Tensor | None = None  # ``[b]`` the norms of the points of the last ``update``

    def norm_of(self, xa: torch.Tensor) -> torch.Tensor:
        """``[B]``: the norm of ``xa - x`` as this tracker measures it."""
        return perturbation_norm(xa - self.x, self.norm_name)

    def update(self, xa: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor | None = None,
               r: torch.Tensor | None = None) -> torch.Tensor:
        """Keep ``xa`` ``[b,C,H,W]`` (the point whose ``logits`` ``[b,K]`` these are) where it is adversarial
        and smaller. ``rows``: the sample indices ``[b]`` of a sub-batch (``None``: all). ``r``: ``xa - x``
        when the caller has it (not recomputed). Returns the adversarial mask ``[b]``."""
        xa, logits = xa.detach(), logits.detach()
        idx = slice(None) if rows is None else rows
        ok = is_adversarial(logits, self.y[idx], self.targeted)
        dist = perturbation_norm(xa - self.x[idx] if r is None else r, self.norm_name)
        better = ok & (dist < self.norm[idx])
        self.last_norm = dist  # the caller's size of xa, without a second reduction
        if rows is None:
            self.norm = torch.where(better, dist, self.norm)
            torch.where(view_as_images(better, xa), xa, self.adv, out=self.adv)  # in place
        else:
            self.norm[rows] = torch.where(better, dist, self.norm[rows])
            self.adv[rows] = torch.where(view_as_images(better, xa), xa, self.adv[rows])
        return ok


def already_adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """``[B]`` bool: ``x`` is adversarial as it is (its own best point, norm 0). Call inside ``frozen_eval``."""
    with torch.no_grad():
        return is_adversarial(model(x), y, targeted)
