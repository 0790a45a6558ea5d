"""The data stability "attack" of Finlay et al., "Improved robustness to adversarial examples using Lipschitz
regularization of the loss" (§4.1 and Figure 1, the black curve), minimal-norm.

Each test point ``x`` (label ``y``) moves straight towards ``z``, its nearest reference point of another
label (nearest in the attack's norm, l2 or linf), and stops at the first point of the segment the model
misclassifies::

    z = argmin_{(x', y') in reference, y' != y} ||x' - x||,   x_s = x + s (z - x),   s* = min{s : f(x_s) != y}

``s*`` is found by a uniform grid scan over ``s in (0, 1]`` and a bisection between the last correct and the
first misclassified grid value, all samples at once. Its error curve is what a model would score if its
decision boundary sat on the data alone, the weakest meaningful "attack": every real attack should be
above it.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.geometry import view_as_images
from robust_cli.attacks.line_search import first_crossing
from robust_cli.attacks.losses import is_adversarial
from robust_cli.schema import Range, schema_of


def nearest_other_label(
    x: torch.Tensor, y: torch.Tensor, ref_x: torch.Tensor, ref_y: torch.Tensor, norm: str, chunk_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index [B], distance [B])`` of the nearest row of ``ref_x`` ``[N,C,H,W]`` whose label differs from ``y``.

    The reference is scanned in chunks of ``chunk_size`` rows (moved to ``x``'s device one chunk at a time,
    so a CPU training set can serve a GPU batch); the distance is inf where no other label exists.
    """
    p = {"l2": 2.0, "linf": float("inf")}[norm]
    flat = x.flatten(1)
    best_d = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
    best_i = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, ref_x.shape[0], chunk_size):
        ref = ref_x[start:start + chunk_size].to(device=x.device, dtype=x.dtype).flatten(1)
        lab = ref_y[start:start + chunk_size].to(x.device)
        d = torch.cdist(flat, ref, p=p, compute_mode="donot_use_mm_for_euclid_dist")
        d = torch.where(lab[None, :] == y[:, None], torch.full_like(d, float("inf")), d)
        m, i = d.min(dim=1)
        better = m < best_d
        best_d = torch.where(better, m, best_d)
        best_i = torch.where(better, i + start, best_i)
    return best_i, best_d


@register_attack(norms=("l2", "linf"), budget=False)
def stability(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    grid: Annotated[int, Range(ge=1)] = 20,
    search_steps: Annotated[int, Range(ge=0)] = 10,
    chunk_size: Annotated[int, Range(ge=1)] = 4096,
) -> torch.Tensor:
    """First misclassified point on the segment from ``x`` to its nearest other-label data point.

    Args:
        x: ``[B,C,H,W]`` in [0,1]; y: ``[B]`` true labels.
        norm: l2 or linf: the norm in which "nearest" is measured.
        reference: ``(images [N,C,H,W] in [0,1], labels [N])`` to draw the targets from. The evaluation
            passes the training set (Finlay et al. measure the distance to the training data); None uses
            the batch ``(x, y)`` itself.
        grid: uniform scan points ``s = 1/grid, ..., 1`` along the segment; search_steps: bisection rounds
            after it (resolution ``1 / (grid 2^search_steps)`` of the segment length).
        chunk_size: reference rows compared per ``cdist`` call.

    Returns:
        ``[B,C,H,W]`` in [0,1] (a convex combination of two images); ``x`` where it is misclassified already
        or the model never leaves ``y`` on the segment.
    """
    if norm not in ("l2", "linf"):
        raise ValueError(f"stability supports l2 and linf, got norm={norm!r}")
    x = x.detach()
    ref_x, ref_y = reference if reference is not None else (x, y)
    idx, dist = nearest_other_label(x, y, ref_x, ref_y, norm, chunk_size)
    has_target = torch.isfinite(dist)
    z = ref_x[idx.to(ref_x.device)].to(device=x.device, dtype=x.dtype)
    z = torch.where(view_as_images(has_target, x), z, x)

    def path(s: torch.Tensor) -> torch.Tensor:
        return (x + view_as_images(s, x) * (z - x)).clamp(0, 1)  # clamp: only rounding can leave the box

    with frozen_eval(model), torch.no_grad():
        clean_bad = is_adversarial(model(x), y)
        s_grid = torch.arange(1, grid + 1, dtype=x.dtype, device=x.device) / grid
        s, found = first_crossing(model, y, path, s_grid, search_steps)
    ok = found & has_target & ~clean_bad
    return torch.where(view_as_images(ok, x), path(s), x)


SCHEMAS = {"stability": schema_of(stability, "stability")}
