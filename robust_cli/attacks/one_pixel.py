"""One-pixel attack (Su et al. 2019, "One pixel attack for fooling deep neural networks", §3: differential
evolution), l0 (changed pixels), black-box: it reads the model's outputs only, never a gradient.

A candidate is ``k`` pixels, each (row, column, one value per channel); the population of ``popsize``
candidates evolves by DE/rand/1 without crossover (§3.2: ``v = x_r1 + F (x_r2 - x_r3)``, ``F = 0.5``), a child
replacing its parent when it lowers the fitness, the softmax probability of the true class (computed from the
logits); an image stops as soon as some candidate is misclassified. For a minimal-norm answer ``k`` runs
from 1 to ``max_pixels``: the first ``k`` that fools the model is kept (the paper's 1, 3 and 5 pixels), the
misclassified candidate changing the fewest pixels.

Before the evolution (``corners``, on by default; not in the paper), every pixel is tried at every corner of
its value cube (each channel 0 or 1: 2 values per pixel in grayscale, 8 in RGB; ``H W 2^C`` queries, in
chunks of ``popsize``): an exhaustive search of that finite set, so a one-pixel adversarial at extreme
values, the strongest a single pixel of a ReLU network usually has, is never missed by chance (MNIST
LeNet-5, test image 65: adv-lib's sigma-zero changes one pixel, 1 -> 0, where every attack of ours changed
two; BENCHMARKS.md, issue 10, session 6).

Queries are counted per image: one per candidate image classified. A generation runs only while it fits in
what is left of ``max_queries``, so no image is classified more than ``max_queries`` times. Defaults: the
paper's population 400 and 100 generations (40,400 queries per ``k``). The corner sweep's queries count against
``max_queries`` too, so at the defaults the evolution of ``k = 1`` has that many fewer: on MNIST 1,568 (96
generations), on 32x32 RGB 8,192 (79); raise ``max_queries`` for the paper's full 100.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from robust_cli.attacks.best import Best, perturbation_size
from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.schema import Range, schema_of


def _paint(x: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Images ``[b*P,C,H,W]``: ``x`` ``[b,C,H,W]`` with the pixels of ``cand`` ``[b,P,k,2+C]`` written in."""
    b, p, k, _ = cand.shape
    _, c, h, w = x.shape
    img = x.repeat_interleave(p, dim=0).flatten(2)  # [b*P, C, H*W]
    flat = cand.reshape(b * p, k, 2 + c)
    where = (flat[..., 0].long().clamp(0, h - 1) * w + flat[..., 1].long().clamp(0, w - 1))  # [b*P, k]
    img.scatter_(2, where[:, None, :].expand(-1, c, -1), flat[..., 2:].transpose(1, 2))
    return img.view(b * p, c, h, w)


@register_attack(norms=("l0",), budget=False)
def one_pixel(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l0",
    max_pixels: Annotated[int, Range(ge=1)] = 1,
    popsize: Annotated[int, Range(ge=4)] = 400,
    steps: Annotated[int, Range(ge=0)] = 100,
    max_queries: Annotated[int, Range(ge=1)] = 40_400,
    mutation: Annotated[float, Range(gt=0, le=2)] = 0.5,
    seed: int = 0,
    corners: bool = True,
) -> torch.Tensor:
    """Differential-evolution pixel attack on ``x`` ``[B,C,H,W]`` in [0,1], true labels ``y`` ``[B]``.

    Args:
        max_pixels: the largest number of pixels ``k`` tried (1, 2, ... in turn).
        popsize: DE population per image. steps: generations per ``k``. mutation: ``F``.
        max_queries: model evaluations per image, all ``k`` together.
        seed: the private generator of the population and the mutation indices.
        corners: first try every pixel at every corner of its value cube (within ``max_queries``).

    Returns:
        ``[B,C,H,W]``: the misclassified candidate of fewest pixels per image, ``x`` where none was found.
    """
    if norm != "l0":
        raise ValueError(f"one_pixel supports l0 only, got norm={norm!r}")
    x = x.detach()
    b, c, h, w = x.shape
    gen = torch.Generator(device=x.device).manual_seed(seed)
    queries = torch.zeros(b, dtype=torch.long, device=x.device)
    scale = torch.tensor([h, w] + [1.0] * c, dtype=x.dtype, device=x.device)
    upper = torch.tensor([h - 1e-4, w - 1e-4] + [1.0] * c, dtype=x.dtype, device=x.device)  # rows, cols < H, W

    def evaluate(rows: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Fitness ``[b,P]`` (true-class probability) of the candidates ``[b,P,k,2+C]``; offers the
        misclassified ones."""
        p = cand.shape[1]
        imgs = _paint(x[rows], cand)
        with torch.no_grad():
            logits = model(imgs).view(len(rows), p, -1)
        queries[rows] += p
        fooled = logits.argmax(2) != y[rows, None]
        size = perturbation_size(imgs, x[rows].repeat_interleave(p, 0), "l0").view(len(rows), p)
        pick = torch.where(fooled, size, torch.full_like(size, float("inf"))).argmin(1)
        chosen = imgs.view(len(rows), p, c, h, w)[torch.arange(len(rows), device=x.device), pick]
        best.offer(chosen, fooled.any(1), rows)
        return logits.softmax(2).gather(2, y[rows, None, None].expand(-1, p, 1)).squeeze(2)

    with frozen_eval(model):
        best = Best(x, "l0")
        if corners:
            # [N, 2+C]: every (row, column) with every 0/1 value vector of its C channels
            cube = torch.cartesian_prod(*[torch.tensor([0.0, 1.0])] * c).reshape(-1, c).to(x)
            cells = torch.cartesian_prod(torch.arange(h), torch.arange(w)).to(x)
            all_corners = torch.cat([cells.repeat_interleave(len(cube), 0), cube.repeat(h * w, 1)], dim=1)
            for chunk in all_corners.split(popsize):
                rows = (~best.found & (queries + len(chunk) <= max_queries)).nonzero().squeeze(1)
                if rows.numel() == 0:
                    break
                evaluate(rows, chunk[None, :, None, :].expand(len(rows), -1, -1, -1))
        for k in range(1, max_pixels + 1):
            rows = (~best.found & (queries + popsize <= max_queries)).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            pop = torch.rand(len(rows), popsize, k, 2 + c, generator=gen, device=x.device, dtype=x.dtype) * scale
            fit = evaluate(rows, pop)
            for _ in range(steps):
                live = ~best.found[rows] & (queries[rows] + popsize <= max_queries)
                if not bool(live.any()):
                    break
                rows, pop, fit = rows[live], pop[live], fit[live]
                r = torch.rand(len(rows), popsize, popsize, generator=gen, device=x.device).argsort(2)[..., :3]
                pick = [pop.gather(1, r[..., i, None, None].expand(-1, -1, k, 2 + c)) for i in range(3)]
                child = pick[0] + mutation * (pick[1] - pick[2])
                child = torch.minimum(child.clamp_min(0), upper)
                child_fit = evaluate(rows, child)
                better = child_fit < fit
                pop = torch.where(better[..., None, None], child, pop)
                fit = torch.minimum(child_fit, fit)
    return best.x_adv


SCHEMAS = {"one_pixel": schema_of(one_pixel, "one_pixel")}
