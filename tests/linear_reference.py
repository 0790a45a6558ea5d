"""A linear classifier whose minimal adversarial perturbation is known exactly, box constraint included.

For logits ``f(x) = W x + b`` the misclassified region is the union over ``j != y`` of the half-spaces
``{x + r : a_j . r >= gap_j}`` with ``a_j = w_j - w_y`` and ``gap_j = f_y(x) - f_j(x) >= 0``. For one ``j``
only moving each value in the direction of ``sign(a_j,i)`` helps, by at most ``room_i`` (the distance to
the box face that way), and a move of ``s_i`` in ``[0, room_i]`` buys ``|a_j,i| s_i`` of the gap. So the
smallest perturbation reaching half-space ``j`` inside the box ``[0,1]^d`` is, per norm:

- l1: a fractional knapsack, filling values in decreasing ``|a_i|`` until the gap is covered;
- l0: the smallest ``k`` whose ``k`` largest capacities ``|a_i| room_i`` cover the gap;
- linf: the ``t`` with ``sum_i |a_i| min(t, room_i) = gap`` (monotone in ``t``: bisection);
- l2: ``s_i = min(lambda |a_i|, room_i)`` with ``lambda`` set by the gap (KKT; monotone: bisection);

and the minimal distance is the minimum over ``j != y`` (``inf`` where no half-space is reachable).
Without the box these reduce to the textbook ``gap / ||a||_q`` with q the dual norm.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearModel(nn.Module):
    """``[B, C, H, W] -> [B, K]``: one linear layer on the flattened image."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, in_shape: tuple[int, int, int]):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _register_nodes() -> None:
    """``LinearModel`` as certification nodes (robust_cli.certification.structure): flatten, then fc."""
    from robust_cli.certification.structure import NODE_BUILDERS

    NODE_BUILDERS[LinearModel] = lambda m: [nn.Flatten(), m.fc]


_register_nodes()


def make_problem(n: int = 16, in_shape=(1, 6, 6), num_classes: int = 3, seed: int = 0):
    """A random linear model and ``n`` images in [0.05, 0.95] labelled with its own prediction.

    Rows of ``W`` have zero mean, so the grey image scores 0 for every class and all labels occur.

    Returns:
        model (``LinearModel``, float64-free, eval mode), x ``[n, *in_shape]`` in [0,1], y ``[n]`` int64.
    """
    g = torch.Generator().manual_seed(seed)
    d = int(torch.tensor(in_shape).prod())
    weight = torch.randn(num_classes, d, generator=g)
    weight = weight - weight.mean(1, keepdim=True)
    model = LinearModel(weight, torch.zeros(num_classes), in_shape).eval()
    x = 0.05 + 0.9 * torch.rand(n, *in_shape, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _bisect(fn, lo: torch.Tensor, hi: torch.Tensor, iters: int = 100) -> torch.Tensor:
    """Smallest ``t`` in ``[lo, hi]`` with ``fn(t) >= 0`` for a non-decreasing ``fn`` (per sample)."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        ok = fn(mid) >= 0
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid)
    return hi


def minimal_distance(model: LinearModel, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """The exact minimal norm ``[B]`` (float64) of ``r`` with ``x + r`` in [0,1] misclassified.

    ``norm`` is l0 (number of changed values), l1, l2 or linf. Ties ``f_j = f_y`` count as misclassified.
    """
    weight = model.fc.weight.detach().double()
    bias = model.fc.bias.detach().double()
    xf = x.flatten(1).double()
    logits = xf @ weight.T + bias
    gaps = logits.gather(1, y[:, None]) - logits  # [B, K], f_y - f_j
    best = torch.full((x.shape[0],), float("inf"), dtype=torch.float64)
    for j in range(weight.shape[0]):
        a = weight[j][None, :] - weight[y]  # [B, d]: raising f_j - f_y
        gap = gaps[:, j].clamp_min(0)
        mag = a.abs()
        room = torch.where(a > 0, 1 - xf, xf)
        reachable = (mag * room).sum(1) >= gap
        if norm == "l1":
            order = mag.argsort(dim=1, descending=True)
            m, r = mag.gather(1, order), room.gather(1, order)
            cap = (m * r).cumsum(1)
            k = (cap < gap[:, None]).sum(1).clamp_max(m.shape[1] - 1)  # first value that finishes the gap
            before_cap = torch.where(k > 0, cap.gather(1, (k - 1).clamp_min(0)[:, None]).squeeze(1), 0.0)
            before_cost = torch.where(k > 0, r.cumsum(1).gather(1, (k - 1).clamp_min(0)[:, None]).squeeze(1), 0.0)
            dist = before_cost + (gap - before_cap) / m.gather(1, k[:, None]).squeeze(1)
        elif norm == "l0":
            cap = (mag * room).sort(dim=1, descending=True).values.cumsum(1)
            dist = (cap < gap[:, None]).sum(1).double() + 1
        elif norm == "linf":
            dist = _bisect(lambda t, mag=mag, room=room, gap=gap: (mag * torch.minimum(t[:, None], room)).sum(1) - gap,
                           torch.zeros_like(gap), torch.ones_like(gap))
        elif norm == "l2":
            lam = _bisect(lambda t, mag=mag, room=room, gap=gap:
                          (mag * torch.minimum(t[:, None] * mag, room)).sum(1) - gap,
                          torch.zeros_like(gap), torch.full_like(gap, 1e6))
            dist = torch.minimum(lam[:, None] * mag, room).norm(dim=1)
        else:
            raise ValueError(f"unknown norm {norm!r}")
        dist = torch.where(reachable & (y != j), dist, torch.tensor(float("inf"), dtype=torch.float64))
        best = torch.minimum(best, dist)
    return best
