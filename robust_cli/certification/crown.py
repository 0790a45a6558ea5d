"""CROWN linear bounds (Zhang et al. 2018, "Efficient neural network robustness certification with general
activation functions", §3, Thm 3.2, with the adaptive lower slope of §3.3 "CROWN-Ada") for feed-forward
ReLU node lists (``structure.is_chain``: MLP, LeNet-5, All-CNN, NIN), linf and l2.

A lower bound of ``Lambda . z_m`` (``Lambda`` ``[B, S, *shape]``, one row per bounded quantity) is carried
backwards to the input: an affine layer ``z = A z' + b`` turns it into ``(Lambda A) . z' + Lambda . b``; a
ReLU with input bounds ``l < 0 < u`` is relaxed by ``z >= a z'`` (``a = 1`` if ``u > -l`` else 0) where the
coefficient is positive and by ``z <= u (z' - l) / (u - l)`` where it is negative (exact where the input
sign is fixed). At the input the linear function is minimised in closed form over the threat set:
``sum_i min(c_i lo_i, c_i hi_i)`` over the box ``[x - eps, x + eps] ∩ [0,1]`` (linf), ``c . x - eps
||c||_2`` over the l2 ball (the box constraint dropped, which only loosens it).

The input bounds of every ReLU are the intersection of the interval box (``intervals.py``; in l2, for the first
non-linear layer, the ball's own bounds, ``intervals.l2_ball_bounds``) and, for layers
of at most ``max_neurons`` units (a backward pass per unit: the cost), CROWN's own bounds of that layer
(both are sound, so their intersection is). A max pooling whose windows do not overlap (LeNet-5's) is relaxed
as DeepPoly does (``_max_pool_back``); at any other the backward pass stops and minimises over the box of its
output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from robust_cli.certification.intervals import _abs_affine, input_box, l2_ball_bounds

MAX_ELEMENTS = 2**24  # float64 entries of one backward pass's coefficients (128 MiB)


def _affine_back(node: nn.Module, lam: torch.Tensor, in_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Lambda A [B,S,*in_shape], Lambda . b [B,S])`` for the affine node ``z = A z' + b``."""
    b, s = lam.shape[:2]
    zero = torch.zeros(1, *in_shape, dtype=lam.dtype, device=lam.device)
    offset = node(zero)  # [1, *out]
    bias = (lam * offset.unsqueeze(1)).flatten(2).sum(2)
    z = torch.zeros(b * s, *in_shape, dtype=lam.dtype, device=lam.device, requires_grad=True)
    with torch.enable_grad():
        out = node(z)
        (grad,) = torch.autograd.grad(out, z, lam.reshape(b * s, *out.shape[1:]))
    return grad.view(b, s, *in_shape), bias


def _box_min(lam: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``min over z in [lo, hi] of Lambda . z`` ``[B,S]`` (``lo, hi`` ``[B, *shape]``)."""
    return torch.minimum(lam * lo.unsqueeze(1), lam * hi.unsqueeze(1)).flatten(2).sum(2)


def _relaxable(node: nn.MaxPool2d) -> bool:
    """Windows that do not overlap (stride = kernel, no padding or dilation, floor mode): LeNet-5's pooling."""
    return (_pair(node.kernel_size) == _pair(node.stride or node.kernel_size) and _pair(node.padding) == (0, 0)
            and _pair(node.dilation) == (1, 1) and not node.ceil_mode)


def _max_pool_back(node: nn.MaxPool2d, lam: torch.Tensor, bounds_in: tuple, bounds_out: tuple
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Lambda' [B,S,C,H,W], constant [B,S])`` with ``Lambda . maxpool(z) >= Lambda' . z + constant`` on the box.

    Per window, ``m = max_j z_j`` lies between ``z_{j*}`` (``j*`` the input of largest lower bound) and the
    constant ``max_j u_j``. A positive coefficient takes the lower bound, a negative one the upper bound. Where
    ``j*`` dominates the window, ``l_{j*} >= u_j`` for every other ``j``, then ``m = z_{j*}`` exactly and both signs
    route to it. These are the max-pool bounds of DeepPoly (Singh et al. 2019, §4); windows must not overlap,
    since each window's other inputs are masked out in place.
    """
    (lb, ub), (lo_out, hi_out) = bounds_in, bounds_out
    b, c, h, w = lb.shape
    _, idx = F.max_pool2d(lb, node.kernel_size, node.stride, return_indices=True)  # [B,C,Ho,Wo] into H*W
    flat_idx = idx.flatten(2)
    others = ub.flatten(2).scatter(2, flat_idx, float("-inf")).view_as(ub)
    dominated = (lo_out >= F.max_pool2d(others, node.kernel_size, node.stride)).unsqueeze(1)  # [B,1,C,Ho,Wo]
    pos, neg = lam.clamp_min(0), lam.clamp_max(0)
    route = pos + torch.where(dominated, neg, torch.zeros_like(neg))
    const = (torch.where(dominated, torch.zeros_like(neg), neg) * hi_out.unsqueeze(1)).flatten(2).sum(2)
    s = lam.shape[1]
    out = torch.zeros(b, s, c, h * w, dtype=lam.dtype, device=lam.device)
    out.scatter_add_(3, flat_idx.unsqueeze(1).expand(b, s, c, flat_idx.shape[2]), route.flatten(3))
    return out.view(b, s, c, h, w), const


def backward_bound(nodes: list, lam: torch.Tensor, shapes: list, bounds: dict, x: torch.Tensor,
                   eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Lower bound ``[B,S]`` of ``Lambda . nodes(x')`` over the threat set of ``x`` (``[B, ...]``).

    ``shapes[i]`` the input shape of node ``i``; ``bounds[i]`` ``(l, u)`` of its input (non-linear nodes),
    and for a max pooling also ``bounds[i, "out"]`` of its output.
    """
    total = torch.zeros(lam.shape[:2], dtype=lam.dtype, device=lam.device)
    for i in range(len(nodes) - 1, -1, -1):
        node = nodes[i]
        if isinstance(node, nn.MaxPool2d):
            if not _relaxable(node):
                lo, hi = bounds[i, "out"]
                return total + _box_min(lam, lo, hi)
            lam, const = _max_pool_back(node, lam, bounds[i], bounds[i, "out"])
            total = total + const
            continue
        if isinstance(node, nn.ReLU):
            lb, ub = (t.unsqueeze(1) for t in bounds[i])
            active, unstable = lb >= 0, (lb < 0) & (ub > 0)
            upper_slope = torch.where(unstable, ub / (ub - lb).clamp_min(1e-300), active.to(lam.dtype))
            lower_slope = torch.where(unstable, (ub > -lb).to(lam.dtype), active.to(lam.dtype))
            pos, neg = lam.clamp_min(0), lam.clamp_max(0)
            total = total + (neg * torch.where(unstable, -upper_slope * lb, torch.zeros_like(lb))).flatten(2).sum(2)
            lam = pos * lower_slope + neg * upper_slope
        else:
            lam, bias = _affine_back(node, lam, shapes[i])
            total = total + bias
    if norm == "l2":
        flat = lam.flatten(2)
        return total + (flat * x.flatten(1).unsqueeze(1)).sum(2) - eps.view(-1, 1) * flat.norm(dim=2)
    lo, hi = input_box(x, eps)
    return total + _box_min(lam, lo, hi)


def crown_margin_bounds(nodes: list, x: torch.Tensor, eps: torch.Tensor, y: torch.Tensor, norm: str,
                        max_neurons: int = 256) -> torch.Tensor:
    """``[B, K]`` lower bounds of ``f_y - f_j`` over the threat set (``+inf`` at ``j = y``).

    ``x`` ``[B, ...]`` float64 in [0,1], ``eps`` ``[B]``, ``norm`` linf | l2; ``nodes`` a chain.
    """
    lo, hi = input_box(x, eps)
    c, r = (hi + lo) / 2, (hi - lo) / 2
    shapes, bounds = [], {}
    first = l2_ball_bounds(nodes, x, eps) if norm == "l2" else None  # exact over the ball up to a ReLU
    for i, node in enumerate(nodes):
        shapes.append(tuple(c.shape[1:]))
        if isinstance(node, (nn.ReLU, nn.MaxPool2d)):
            lb, ub = c - r, c + r
            if first is not None and first[0] == i:
                lb, ub = torch.maximum(lb, first[1]), torch.minimum(ub, first[2])
                ub = torch.maximum(ub, lb)
            n = c[0].numel()
            # where only affine layers precede, the box of a linf ball is already exact (eq 6 of IBP), and so are
            # l2_ball_bounds (what the backward pass would give: it drops the box in l2 too)
            exact = (norm == "linf" or (first is not None and first[0] == i)) and not any(
                isinstance(p, (nn.ReLU, nn.MaxPool2d)) for p in nodes[:i])
            if isinstance(node, nn.ReLU) and i > 0 and n <= max_neurons and not exact:
                eye = torch.eye(n, dtype=c.dtype, device=c.device).view(n, *c.shape[1:])
                rows = torch.cat([eye, -eye])
                # the rows are independent: chunks keep [B, rows, *widest layer] under MAX_ELEMENTS
                widest = max(math.prod(shape) for shape in shapes)
                chunk = max(1, MAX_ELEMENTS // (c.shape[0] * widest))
                both = torch.cat([backward_bound(nodes[:i], rows[j:j + chunk].unsqueeze(0).expand(
                    c.shape[0], -1, *c.shape[1:]).contiguous(), shapes, bounds, x, eps, norm)
                    for j in range(0, 2 * n, chunk)], dim=1)
                lb = torch.maximum(lb, both[:, :n].view_as(lb))
                ub = torch.minimum(ub, (-both[:, n:]).view_as(ub))
                ub = torch.maximum(ub, lb)
            bounds[i] = (lb, ub)
            lb, ub = node(lb), node(ub)
            bounds[i, "out"] = (lb, ub)
            c, r = (ub + lb) / 2, (ub - lb) / 2
        else:
            c, r = node(c), _abs_affine(node, r)
    k = c.shape[1]
    eye = torch.eye(k, dtype=x.dtype, device=x.device)
    spec = eye[y].unsqueeze(1) - eye.unsqueeze(0)  # [B, K, K]: row j is e_y - e_j
    out = backward_bound(nodes, spec, shapes, bounds, x, eps, norm)
    return out.scatter(1, y[:, None], float("inf"))
