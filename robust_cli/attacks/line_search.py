"""Line search along a per-sample path: where a path of images first leaves the true class.

The minimal-norm attacks that walk a fixed direction (``noise``: a random ray; ``stability``: the segment
towards the nearest other-label data point of Finlay et al. §4, Figure 1) share it: a grid scan for the first
misclassified value, then a bisection between it and the last correct one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from robust_cli.attacks.losses import is_adversarial


def first_crossing(
    model: nn.Module,
    y: torch.Tensor,
    path: Callable[[torch.Tensor], torch.Tensor],
    grid: torch.Tensor,
    search_steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a per-sample path ``t -> path(t)`` first leaves the class ``y``: grid scan, then bisection.

    Args:
        model: called under ``torch.no_grad`` (inside ``frozen_eval`` of the caller).
        y: ``[B]`` true labels.
        path: maps ``t`` ``[B]`` to images ``[B,C,H,W]``; ``path(0)`` is the clean input.
        grid: ``[G]`` or ``[B, G]`` increasing positive values of ``t`` to scan.
        search_steps: bisection rounds between the last correct grid value (or 0) and the first
            misclassified one.

    Returns:
        ``(t, found)``: ``t`` ``[B]`` a value where ``path(t)`` is misclassified (within
        ``(grid interval) / 2^search_steps`` of a crossing; the smallest misclassified grid value refined),
        and ``found`` ``[B]`` bool, False where no grid value is misclassified (``t`` is then the last grid value).
    """
    b = y.shape[0]
    if grid.dim() == 1:
        grid = grid.expand(b, -1)
    lo = torch.zeros(b, dtype=grid.dtype, device=grid.device)
    hi = grid[:, -1].clone()
    found = torch.zeros(b, dtype=torch.bool, device=grid.device)
    with torch.no_grad():
        for g in range(grid.shape[1]):
            t = grid[:, g]
            bad = is_adversarial(model(path(t)), y) & ~found
            hi = torch.where(bad, t, hi)
            found = found | bad
            lo = torch.where(found, lo, t)  # the last correct grid value before the first crossing
            if bool(found.all()):
                break
        for _ in range(search_steps):
            mid = (lo + hi) / 2
            bad = is_adversarial(model(path(mid)), y)
            hi = torch.where(bad & found, mid, hi)
            lo = torch.where(bad | ~found, lo, mid)
    return hi, found
