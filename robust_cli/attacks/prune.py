"""``prune``: an l0 refiner that removes pixels from the support of a starting adversarial.

Given an adversarial start ``x_init`` with support ``S`` (the changed pixels; a pixel's channels count once, as
the evaluation counts them), each round asks, for every pixel ``j`` of ``S`` at once (all ``(image, j)``
candidates in one batch), whether some point whose support lies within ``S \\ {j}`` is still misclassified:
the values on ``S \\ {j}`` are free in [0,1], every other pixel keeps its clean value, and ``steps`` of a
masked sign-gradient ascent on the margin ``c(z) = max_{k != y} f_k(z) - f_y(z)`` (the l0 attack restricted
to a fixed support, with the large, decaying steps of a box-constrained sign PGD: a few pixels of a locally
linear model are best at their box faces) look for it, from the start's values with pixel ``j`` reset to
clean. Every iterate that the model's argmax puts in another class is a candidate (the loss is never
trusted: the chosen point is classified again before it is kept); of an image's successful candidates the
one with the largest margin is taken, and the next round starts from its smaller support, until no pixel of
an image can be removed. A greedy backward elimination of the support, as the "pruning" of sparse attacks
(Croce & Hein 2019, "Sparse and imperceivable adversarial attacks", §3: CornerSearch removes pixels of its
found support one by one while it stays adversarial), here with the remaining values re-optimised rather
than kept.

``swaps``: where no single pixel can be removed, moves that remove two pixels of ``S`` and add one outside
it (``S \\ {j1, j2} ∪ {p}``, one pixel smaller), ``p`` among the ``swaps`` pixels of largest first-order
capacity ``sum_channels |g| * room`` at the current point (``g`` the margin's gradient, ``room`` the distance
to the box face the gradient points at): a local-search exchange step, which can leave a support that is
locally minimal under removals alone.

The returned point per image is never larger (in l0) than the start, and it is the start itself where
nothing could be removed (or the clean image where the start was not adversarial: ``prune`` finds no start
of its own).

Measured (BENCHMARKS.md, "Issue 10: l0 support pruning (session 5)"; MNIST LeNet-5, 2 epochs, 48 images, one
thread): from the output of ``minimal``'s l0 ensemble without it, ``prune`` removes one pixel on 3 images
(mean 4.4167 -> 4.3542) for 152 passes per image and under a second (the ensemble: ~8850 passes per image);
``swaps=8`` one more image (4.3125) for 2691 passes per image, so the ensemble runs it without swaps. From the
public peers' points it shrinks foolbox's B&B on 5 images (4.6042 -> 4.5000) and adv-lib's sigma-zero on 12
(5.1875 -> 4.8958). What it cannot do is change basin: the two images where the ensemble stays a pixel behind
the peers need a support that shares 3 of 5 pixels with ours (image 12: remove three, add two, one of them
23rd by first-order capacity) or one of another class (image 15: class 7 against our class 8, no pixel in
common).
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated

import torch
from torch import nn

from robust_cli.attacks.best import Best
from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.losses import margin
from robust_cli.norms import check_norm
from robust_cli.schema import Range, schema_of

CHUNK = 4096
"""Candidate rows per masked-attack batch (memory bound: an image's support can hold hundreds of pixels)."""


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[b]``: ``max_{k != y} f_k - f_y`` (``> 0``: misclassified), the negated ``losses.margin``."""
    return -margin(logits, y)


def _masked_ascent(model: nn.Module, x0: torch.Tensor, y: torch.Tensor, z: torch.Tensor, mask: torch.Tensor,
                   steps: int, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign ascent of the margin on the pixels ``mask`` ``[n,1,H,W]`` (bool) from ``z`` ``[n,C,H,W]``.

    Returns ``(point [n,C,H,W], margin [n])``: per row the misclassified iterate of largest margin (by the
    argmax of the logits the model gave for that very tensor), ``margin`` ``-inf`` where none was.
    """
    z = torch.where(mask, z, x0)
    best_z, best_c = z.clone(), torch.full((z.shape[0],), -math.inf, dtype=z.dtype, device=z.device)
    for k in range(steps + 1):
        with torch.enable_grad():
            zg = z.detach().requires_grad_(True)
            logits = model(zg)
            c = _margin(logits, y)
            grad = torch.autograd.grad(c.sum(), zg)[0] if k < steps else None
        c = c.detach()
        keep = (logits.detach().argmax(1) != y) & (c > best_c)
        best_c = torch.where(keep, c, best_c)
        best_z = torch.where(keep[:, None, None, None], z, best_z)
        if grad is None:
            break
        # a cosine decay from lr: the first steps jump to the box faces, the last ones settle between them
        eta = lr * 0.5 * (1 + math.cos(math.pi * k / steps))
        z = torch.where(mask, (z + eta * grad.sign()).clamp(0, 1), x0).detach()
    return best_z, best_c


def _try(model, x, y, rows, masks, starts, steps, lr):
    """Run ``_masked_ascent`` on candidate ``(rows[i], masks[i], starts[i])`` in chunks; ``(points, margins)``."""
    points, margins = [], []
    for lo in range(0, rows.numel(), CHUNK):
        sl = slice(lo, lo + CHUNK)
        r = rows[sl]
        p, c = _masked_ascent(model, x[r], y[r], starts[sl], masks[sl], steps, lr)
        points.append(p)
        margins.append(c)
    return torch.cat(points), torch.cat(margins)


def _removals(support: torch.Tensor, cur: torch.Tensor, x: torch.Tensor, images: torch.Tensor):
    """Candidates ``S \\ {j}`` for every pixel ``j`` of each image's support ``[B,H,W]`` in ``images``."""
    img, hh, ww = support[images].nonzero(as_tuple=True)
    rows = images[img]
    masks = support[rows].clone()
    masks[torch.arange(rows.numel(), device=rows.device), hh, ww] = False
    masks = masks[:, None]
    return rows, masks, torch.where(masks, cur[rows], x[rows])


def _swaps(model, support, cur, x, y, images, swaps):
    """Candidates ``S \\ {j1, j2} ∪ {p}``: every pair of the support, ``p`` among the ``swaps`` pixels outside it
    of largest first-order capacity at ``cur``."""
    with torch.enable_grad():
        z = cur[images].detach().requires_grad_(True)
        g = torch.autograd.grad(_margin(model(z), y[images]).sum(), z)[0]
    room = torch.where(g > 0, 1 - x[images], x[images])
    capacity = (g.abs() * room).sum(1)  # [b,H,W]
    capacity = capacity.masked_fill(support[images], -math.inf).flatten(1)
    top = capacity.topk(min(swaps, capacity.shape[1]), dim=1)
    face = (g > 0).to(x.dtype)  # [b,C,H,W]: the box face each value's gradient points at
    rows, masks, adds_at = [], [], []
    for i, b in enumerate(images.tolist()):
        pix = support[b].nonzero()
        adds = top.indices[i][torch.isfinite(top.values[i])].tolist()
        for (a, b_), p in itertools.product(itertools.combinations(range(pix.shape[0]), 2), adds):
            m = support[b].clone()
            m[tuple(pix[a])] = m[tuple(pix[b_])] = False
            m.view(-1)[p] = True
            rows.append(b)
            masks.append(m)
            adds_at.append((i, p))
    if not rows:
        return None
    rows = torch.tensor(rows, device=x.device)
    masks = torch.stack(masks)[:, None]
    starts = torch.where(masks, cur[rows], x[rows])
    # the added pixel starts at the faces its capacity was measured to (the ascent may move it back)
    which, pix = (torch.tensor(v, device=x.device) for v in zip(*adds_at))
    added = torch.zeros_like(masks).flatten(1).scatter_(1, pix[:, None], True).view_as(masks)
    return rows, masks, torch.where(added, face[which], starts)


@register_attack(norms=("l0",), budget=False)
def prune(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l0",
    x_init: torch.Tensor | None = None,
    steps: Annotated[int, Range(ge=1)] = 30,
    lr: Annotated[float, Range(gt=0, le=1)] = 1.0,
    swaps: Annotated[int, Range(ge=0)] = 0,
    max_support: Annotated[int, Range(ge=1)] = 64,
) -> torch.Tensor:
    """Remove pixels from the support of ``x_init`` on ``x`` ``[B,C,H,W]`` in [0,1], true labels ``y`` ``[B]``.

    Args:
        x_init: ``[B,C,H,W]``: the starting adversarials (rows the model classifies as ``y`` are returned as
            ``x``: ``prune`` only shrinks). None: every row is returned as ``x``.
        steps: masked sign-ascent steps per candidate support (one forward and backward each).
        lr: the first step size (values in [0,1]; 1 reaches any box face at once), decayed towards 0 by a cosine.
        swaps: where no pixel can be removed, the pixels outside the support tried in "remove two, add one"
            moves (each pair of the support with each of these); 0: removals only.
        max_support: images whose support has more pixels are left as they are (a round costs one masked
            attack per support pixel; swaps one per pair).

    Returns:
        ``[B,C,H,W]``: per image the smallest misclassified point found (the start where nothing was removed).
    """
    check_norm(norm, prune.norms, who="prune")
    x = x.detach()
    with frozen_eval(model):
        best = Best(x, norm)
        best.start(model, y, x_init)
        active = best.found & (best.size <= max_support)
        while bool(active.any()):
            images = active.nonzero().squeeze(1)
            cur = best.x_adv.clone()  # best.offer writes its points in place
            support = (cur != x).any(1)  # [B,H,W]
            rows, masks, starts = _removals(support, cur, x, images)
            improved = _take(model, best, x, y, rows, masks, starts, steps, lr)
            stuck = images[~improved[images]]
            if swaps and stuck.numel():
                cand = _swaps(model, support, cur, x, y, stuck, swaps)
                if cand is not None:
                    improved |= _take(model, best, x, y, *cand, steps, lr)
            active = active & improved
    return best.x_adv


def _take(model, best: Best, x, y, rows, masks, starts, steps, lr) -> torch.Tensor:
    """Per image, offer the verified successful candidate of largest margin to ``best``; ``[B]`` bool, where
    the kept point changed."""
    improved = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if rows.numel() == 0:
        return improved
    points, margins = _try(model, x, y, rows, masks, starts, steps, lr)
    ok = torch.isfinite(margins)
    if not bool(ok.any()):
        return improved
    points, margins, rows = points[ok], margins[ok], rows[ok]
    with torch.no_grad():  # re-verify on the very tensors kept (never trust the ascent's bookkeeping)
        fooled = model(points).argmax(1) != y[rows]
    points, margins, rows = points[fooled], margins[fooled], rows[fooled]
    if rows.numel() == 0:
        return improved
    # the largest margin per image: order by margin (descending), then group by image; each group's first
    order = torch.argsort(margins, descending=True, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]
    grouped = rows[order]
    first = torch.ones_like(grouped, dtype=torch.bool)
    first[1:] = grouped[1:] != grouped[:-1]
    chosen, images = order[first], grouped[first]
    improved[images] = best.offer(points[chosen], torch.ones_like(images, dtype=torch.bool), images)
    return improved


SCHEMAS = {"prune": schema_of(prune, "prune")}
