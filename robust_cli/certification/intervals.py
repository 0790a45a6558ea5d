"""Interval bound propagation (Gowal et al. 2018, "On the effectiveness of interval bound propagation for
training verifiably robust models", §3, eqs 5-6) through the node lists of ``structure.py``.

A box is ``(center, radius)`` ``[B, ...]`` (float64). Affine layers map it exactly,
``center' = A center + b``, ``radius' = |A| radius`` (eq 6); monotone layers (ReLU, max pooling,
``t tanh(z/t)``) map its corners; a residual block adds the boxes of its two paths (``x + y`` lies in the
sum of boxes). Every box contains every value the layer takes on inputs in the input box. For an l2 ball the
first non-linear layer's input can start from the ball's own range instead of its box's (``l2_ball_bounds``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robust_cli.certification.structure import GroupMean, Residual, ScaledTanh
from robust_cli.models.layers import Normalize

Box = tuple[torch.Tensor, torch.Tensor]


def input_box(x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lower, upper)`` of ``{x' in [0,1]^d : ||x' - x||_inf <= eps}``; the l2 ball of radius eps lies in
    it too. ``x`` ``[B, ...]``, ``eps`` ``[B]``."""
    e = eps.view(-1, *([1] * (x.dim() - 1))).to(x)
    return (x - e).clamp(0, 1), (x + e).clamp(0, 1)


def _squared_affine(node: nn.Module, v: torch.Tensor) -> torch.Tensor | None:
    """``(A o A) v`` (``A`` the linear part of ``node``, squared elementwise), or None for a node not handled."""
    if isinstance(node, nn.Conv2d):
        return F.conv2d(v, node.weight.square(), None, node.stride, node.padding, node.dilation, node.groups)
    if isinstance(node, nn.Linear):
        return v @ node.weight.square().T
    if isinstance(node, (nn.BatchNorm1d, nn.BatchNorm2d, Normalize)):
        return _abs_affine(node, _abs_affine(node, v))  # a diagonal scale, squared
    if isinstance(node, (nn.Flatten, nn.Dropout, nn.Identity)):
        return node(v)
    return None


MIXING = (nn.Conv2d, nn.Linear)


def l2_ball_bounds(nodes: list, x: torch.Tensor, eps: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """``(i, lower, upper)``: bounds of the input of the first non-linear node ``nodes[i]`` over the l2 ball.

    Before it the nodes are affine, ``z = A x' + b``, and over ``||x' - x||_2 <= eps`` each ``z_k`` ranges over
    ``A_k x + b_k -+ eps ||A_k||_2`` exactly (Cauchy-Schwarz; the [0,1] box dropped, which only widens it). The
    enclosing box that interval propagation starts from gives ``eps ||A_k||_1`` instead, up to ``sqrt(d_k)`` times
    wider for a row of ``d_k`` weights (5x5 kernels: ~4x). ``||A_k||_2^2 = ((A o A) 1)_k`` node by node where at most
    one node mixes values (a convolution or a linear layer) and the others scale them (normalisation, batch
    norm, reshapes): then ``A o A`` is the product of the squared nodes. None otherwise (or where no non-linear
    node follows, or a residual block comes first): the caller keeps the box.
    ``x`` ``[B, ...]``, ``eps`` ``[B]``; float64 as the rest of the bounds.
    """
    c, sq, mixing = x, torch.ones_like(x[:1]), 0
    for i, node in enumerate(nodes):
        if isinstance(node, (nn.ReLU, nn.MaxPool2d, ScaledTanh)):
            if i == 0:
                return None
            half = eps.view(-1, *([1] * (c.dim() - 1))).to(c) * sq.clamp_min(0).sqrt()
            return i, c - half, c + half
        mixing += isinstance(node, MIXING)
        squared = None if isinstance(node, Residual) else _squared_affine(node, sq)
        if squared is None or mixing > 1:
            return None
        c, sq = node(c), squared
    return None


def _abs_affine(node: nn.Module, radius: torch.Tensor) -> torch.Tensor:
    """``|A| radius`` for the linear part ``A`` of an affine node."""
    if isinstance(node, nn.Conv2d):
        return F.conv2d(radius, node.weight.abs(), None, node.stride, node.padding, node.dilation, node.groups)
    if isinstance(node, nn.Linear):
        return radius @ node.weight.abs().T
    if isinstance(node, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale = 1 / torch.sqrt(node.running_var + node.eps)
        if node.weight is not None:
            scale = scale * node.weight
        shape = (1, -1) + (1,) * (radius.dim() - 2)
        return radius * scale.abs().view(shape)
    if isinstance(node, Normalize):
        return radius / node.std
    if isinstance(node, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, GroupMean, nn.Flatten, nn.Dropout, nn.Identity)):
        return node(radius)  # non-negative weights and no offset (Dropout: eval mode)
    raise NotImplementedError(type(node).__name__)


def propagate(nodes: list, box: Box, *, clamp: dict | None = None, record: list | None = None) -> Box:
    """The box of the node list's output from the box ``(center, radius)`` of its input.

    ``clamp``: ``{id(node): (lower, upper)}`` tighter bounds of a node's *input* (CROWN's), intersected with
    the propagated box; ``record``: appended ``(node, lower, upper)`` of each non-linear node's input.
    """
    c, r = box
    for node in nodes:
        if isinstance(node, Residual):
            cb, rb = propagate(node.branch, (c, r), clamp=clamp, record=record)
            cs, rs = propagate(node.shortcut, (c, r), clamp=clamp, record=record)
            c, r = propagate(node.post, (cb + cs, rb + rs), clamp=clamp, record=record)
        elif isinstance(node, (nn.ReLU, nn.MaxPool2d, ScaledTanh)):
            lo, hi = c - r, c + r
            if clamp is not None and id(node) in clamp:
                cl, ch = clamp[id(node)]
                lo, hi = torch.maximum(lo, cl), torch.minimum(hi, ch)
                hi = torch.maximum(hi, lo)
            if record is not None:
                record.append((node, lo, hi))
            lo, hi = node(lo), node(hi)
            c, r = (hi + lo) / 2, (hi - lo) / 2
        else:
            c, r = node(c), _abs_affine(node, r)
    return c, r


def margin_lower_bounds(nodes: list, lower: torch.Tensor, upper: torch.Tensor, y: torch.Tensor,
                        clamp: dict | None = None) -> torch.Tensor:
    """``[B, K]`` lower bounds of ``f_y - f_j`` over the box ``[lower, upper]`` (``+inf`` at ``j = y``).

    The last affine node is applied to the specification directly (``(e_y - e_j)^T W`` before taking
    absolute values, Gowal et al. §3, "elision of the last layer"), tighter than subtracting logit boxes.
    ``clamp``: tighter bounds of some non-linear nodes' inputs, as for ``propagate`` (``l2_ball_bounds``'s).
    """
    last = len(nodes)
    while last > 0 and not isinstance(nodes[last - 1], (nn.ReLU, nn.MaxPool2d, Residual, ScaledTanh)):
        last -= 1
    c, r = propagate(nodes[:last], ((upper + lower) / 2, (upper - lower) / 2), clamp=clamp)
    offset, matrix = affine_matrix(nodes[last:], tuple(c.shape[1:]), c)
    spec = matrix[y][:, None, :] - matrix[None, :, :]  # [B, K, flat_in]: rows (e_y - e_j)^T W
    cf, rf = c.flatten(1), r.flatten(1)
    val = (spec @ cf[:, :, None]).squeeze(2) - (spec.abs() @ rf[:, :, None]).squeeze(2)
    val = val + offset[0][y][:, None] - offset[0][None, :]
    return val.scatter(1, y[:, None], float("inf"))


def affine_matrix(nodes: list, in_shape: tuple[int, ...], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(offset [1, K], matrix [K, d])`` of an affine node list on inputs ``[*, *in_shape]`` (``d`` their
    size): one backward pass per output, so a wide input costs ``K`` passes, not ``d``."""
    zero = torch.zeros(1, *in_shape, dtype=like.dtype, device=like.device, requires_grad=True)
    with torch.enable_grad():
        out = zero
        for node in nodes:
            out = node(out)
        out = out.flatten(1)
        rows = [torch.autograd.grad(out[0, k], zero, retain_graph=True)[0].flatten()
                for k in range(out.shape[1])]
    return out.detach(), torch.stack(rows)
