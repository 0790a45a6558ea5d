"""The Lipschitz constant of a labelled data set (Finlay et al. §3.2, Table 2).

``L(data) = max_{i,j: y_i != y_j} ||onehot(y_i) - onehot(y_j)|| / ||x_i - x_j||_2``, the largest slope any
function fitting the labels must have. Every pair of different labels has the same label distance (a
constant ``c``; 1 in the max norm on labels), so ``L = c / min_{y_i != y_j} ||x_i - x_j||_2``: the inverse
of the smallest distance between two differently labelled images. Exact duplicates with different labels
(``||x_i - x_j|| = 0``, which CIFAR-100 has) are excluded, as in the paper.

Computed exactly over all pairs, chunked: a block of rows against the rows after it, so memory is
``chunk_size x N`` distances at a time (MNIST's 60,000 training images fit) and each pair is seen once.
Distances come from a float32 matrix product on mean-centred data; near-zero ones (possible duplicates)
and the final minimum are recomputed in float64 from the differences, so the result is exact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

# squared float32 matmul distances below this are recomputed exactly: far above the rounding error of
# |a|^2 + |b|^2 - 2 a.b for images in [0,1] of up to ~10^4 values, far below any real nearest-neighbour gap
_NEAR = 0.05


def min_cross_label_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    chunk_size: int = 2048,
    device: torch.device | str = "cpu",
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[float, int, int]:
    """``min ||x_i - x_j||_2`` over pairs with ``y_i != y_j`` and ``x_i != x_j``.

    Args:
        x: ``[N, ...]`` images (any shape per image) in [0,1]; y: ``[N]`` labels.
        chunk_size: rows per block.
        on_chunk: called with the number of rows done after each block.

    Returns:
        ``(distance, i, j)``; ``(inf, -1, -1)`` when no such pair exists.
    """
    flat = x.flatten(1).to(device, torch.float64)
    flat = (flat - flat.mean(0, keepdim=True)).float()  # centring shrinks |a|^2 and so the rounding error
    labels = y.to(device)
    sq = (flat * flat).sum(1)
    n = flat.shape[0]
    best, best_i, best_j = float("inf"), -1, -1
    for a in range(0, n, chunk_size):
        b = min(a + chunk_size, n)
        rows, cols = flat[a:b], flat[a:]
        d2 = (sq[a:b, None] + sq[None, a:] - 2 * rows @ cols.T).clamp_min_(0)  # [b-a, n-a]
        diff = labels[a:b, None] != labels[None, a:]
        near = diff & (d2 < _NEAR)
        d2.masked_fill_(~diff | near, float("inf"))
        if near.any():
            # exact distances of the near pairs: a true duplicate (0) is excluded, anything else competes
            ii, jj = near.nonzero(as_tuple=True)
            exact = (x.flatten(1)[(ii + a).cpu()].double() - x.flatten(1)[(jj + a).cpu()].double()).pow(2).sum(1)
            exact = exact.to(d2)
            exact = torch.where(exact > 0, exact, torch.full_like(exact, float("inf")))
            d2[ii, jj] = exact.float()
        value, flat_idx = d2.flatten().min(0)
        if float(value) < best:
            i, j = divmod(int(flat_idx), d2.shape[1])
            best, best_i, best_j = float(value), a + i, a + j
        if on_chunk is not None:
            on_chunk(b - a)
    if best_i < 0:
        return float("inf"), -1, -1
    exact = float((x[best_i].double() - x[best_j].double()).flatten().norm())
    return exact, best_i, best_j


def data_lipschitz(x: torch.Tensor, y: torch.Tensor, *, label_distance: float = 1.0, **kwargs) -> dict:
    """Finlay's Table 2 constant: ``label_distance / min_{y_i != y_j} ||x_i - x_j||_2``.

    ``label_distance`` is the distance between two different labels (1 for one-hot labels in the max norm;
    Finlay's MNIST value 0.417 is reproduced with 1). Returns ``{"lipschitz", "min_distance", "pair",
    "labels", "n"}``.
    """
    dist, i, j = min_cross_label_distance(x, y, **kwargs)
    return {
        "lipschitz": label_distance / dist if dist > 0 else float("inf"),
        "min_distance": dist,
        "pair": [i, j],
        "labels": [int(y[i]), int(y[j])] if i >= 0 else [],
        "n": int(x.shape[0]),
        "label_distance": label_distance,
    }
