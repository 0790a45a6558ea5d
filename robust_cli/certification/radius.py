"""Certified radii per image, and the certified error curve they give.

An image is *certified at eps* when no perturbation of norm ``<= eps`` (inside [0,1]) changes its correct
prediction. The radius reported is an eps at which it is certified, so the whole ball of that radius is
robust; the certified error ``P[radius <= eps]`` (``evaluation.curves.error_curve`` of the radii, 0 for
misclassified images) is therefore an upper bound on the true robust error, as the attacked curve is a
lower bound on it, and it lies above the attacked curve (radius < distance of any adversarial found).

Methods: ``lipschitz`` (closed form, ``lipschitz_bound.py``, l2 and linf, every model); ``ibp``
(``intervals.py``, every model; in l2 the ball's exact bounds up to the first non-linear layer where they have
a closed form (``intervals.l2_ball_bounds``), else its enclosing box); ``crown`` (``crown.py``,
feed-forward models). For ``ibp``/``crown`` the radius is the largest eps of a per-image bisection over
``[FLOOR r_max, r_max]`` in log scale (``r_max`` = 1 in linf, ``sqrt(d)`` in l2: the diameter of
[0,1]^d) that is certified, 0 below the floor; the bounds are computed in float64 on a float64 copy of the
model.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from robust_cli.certification.crown import crown_margin_bounds
from robust_cli.certification.intervals import input_box, l2_ball_bounds, margin_lower_bounds
from robust_cli.certification.lipschitz_bound import lipschitz_bound, lipschitz_radii
from robust_cli.certification.structure import decision_nodes, is_chain

METHODS = ("lipschitz", "ibp", "crown")
FLOOR = 1e-6  # the smallest radius the bisection resolves, relative to r_max
NORMS = ("l2", "linf")


def supports(model: nn.Module, method: str) -> bool:
    """``method`` applies to ``model`` (CROWN needs a feed-forward chain)."""
    return method != "crown" or is_chain(decision_nodes(model))


def certified_margins(nodes: list, x: torch.Tensor, eps: torch.Tensor, y: torch.Tensor, method: str,
                      norm: str, max_neurons: int = 256) -> torch.Tensor:
    """``[B]`` a lower bound of ``min_{j != y} f_y - f_j`` over the threat set (float64)."""
    if method == "ibp":
        lo, hi = input_box(x, eps)
        first = l2_ball_bounds(nodes, x, eps) if norm == "l2" else None  # the ball, not its box, up to a ReLU
        clamp = None if first is None else {id(nodes[first[0]]): first[1:]}
        return margin_lower_bounds(nodes, lo, hi, y, clamp=clamp).amin(1)
    if method == "crown":
        return crown_margin_bounds(nodes, x, eps, y, norm, max_neurons).amin(1)
    raise ValueError(f"unknown bound method {method!r}")


def certified_radii(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, norm: str, *,
                    steps: int = 12, batch_size: int = 100, max_neurons: int = 256) -> tuple[torch.Tensor, dict]:
    """``(radii [N] float64 on the CPU, info)`` for images ``x`` ``[N,C,H,W]`` in [0,1], labels ``y``.

    ``info``: ``{"L": ...}`` for ``lipschitz``. The model is not changed (a float64 eval copy is bounded).
    """
    if method not in METHODS:
        raise ValueError(f"unknown certification method {method!r}; expected one of {', '.join(METHODS)}")
    if norm not in NORMS:
        raise ValueError(f"certification supports {', '.join(NORMS)}, not {norm}")
    m = copy.deepcopy(model).double().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    d = int(x[0].numel())
    with torch.no_grad():
        logits = torch.cat([m(x[i:i + batch_size].double()) for i in range(0, x.shape[0], batch_size)])
    correct = (logits.argmax(1) == y).cpu()
    if method == "lipschitz":
        L, factors = lipschitz_bound(m, tuple(x.shape[1:]))
        return lipschitz_radii(logits, y, L, norm, d).cpu() * correct, {"L": L, "factors": factors}
    if not supports(m, method):
        raise ValueError(f"{method} bounds feed-forward models only")
    nodes = decision_nodes(m)
    r_max = 1.0 if norm == "linf" else math.sqrt(d)
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size].double(), y[i:i + batch_size]
        ok = correct[i:i + batch_size].to(xb.device)
        # bisection on log(eps) over [r_max * FLOOR, r_max]: relative resolution FLOOR ** (-1 / 2**steps)
        lo = torch.full((xb.shape[0],), math.log(r_max * FLOOR), dtype=torch.float64, device=xb.device)
        hi = torch.full_like(lo, math.log(r_max))
        with torch.no_grad():
            top = certified_margins(nodes, xb, hi.exp(), yb, method, norm, max_neurons) > 0
            floor = certified_margins(nodes, xb, lo.exp(), yb, method, norm, max_neurons) > 0
            lo = torch.where(top, hi, lo)
            for _ in range(steps):
                mid = (lo + hi) / 2
                good = certified_margins(nodes, xb, mid.exp(), yb, method, norm, max_neurons) > 0
                lo = torch.where(good & ~top, mid, lo)
                hi = torch.where(good | top, hi, mid)
        lo = torch.where(floor, lo.exp(), torch.zeros_like(lo))  # not even certified at the floor: 0
        out.append((lo * ok).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64), {}
