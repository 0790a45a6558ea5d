"""A global l2 Lipschitz bound ``L`` of a model's logits, valid for every shipped architecture, and the
certificate it gives.

``||f(x + r) - f(x)||_2 <= L ||r||_2`` for all ``x, r`` with ``L`` the product over a chain of the layers'
bounds, residual blocks counted as ``L(post) * (L(branch) + L(shortcut))`` (an empty shortcut: 1) since a
skip adds, it does not multiply. Per layer (all in float64, at the layer's actual input size):

- Conv2d: the largest singular value over frequencies of the kernel's 2-D DFT on an ``N x N`` grid with
  ``N = n + 2 p`` (Sedghi, Gupta & Long 2019, "The singular values of convolutional layers", Thm 6):
  the zero-padded conv is a coordinate selection of the circular conv on that grid after an isometric
  zero embedding (no wrap-around reaches a kept output), and striding is a further selection, so this is
  an upper bound, not an estimate (the power iteration of ``evaluation.lipschitz`` is a lower one).
  A BatchNorm right after it is folded into the kernel first (per output channel), as is the input
  normalisation right before it (per input channel).
- Linear: the spectral norm (SVD). BatchNorm alone: ``max |gamma| / sqrt(var + eps)``; ``Normalize``:
  ``1 / min std``.
- average pooling (also adaptive, and ResNeXt's group mean): Schur's test ``sqrt(max row sum * max column
  sum)`` of its non-negative matrix, both sums computed exactly at the input size.
- max pooling: ``sqrt(m)``, ``m`` the most windows one input lies in (each window's max is 1-Lipschitz in
  l2 and ``sum_w ||r_w||^2 <= m ||r||^2``).
- ReLU, Dropout (eval), Flatten, ``t tanh(z/t)``: 1.

Each float64 singular value carries a relative error far below ``SAFETY - 1 = 1e-6``; the bound is
multiplied by ``SAFETY`` per layer to cover it.

Certificate (Tsuzuku, Sato & Sugiyama 2018, "Lipschitz-margin training", §4, Prop. 1): every logit
difference ``f_y - f_j = (e_y - e_j)^T f`` is ``sqrt(2) L``-Lipschitz, so an image whose margin
``f_y - max_{j != y} f_j`` is ``m > 0`` keeps its label within l2 radius ``m / (sqrt(2) L)``, and within
linf radius ``m / (sqrt(2) L sqrt(d))`` (``||r||_2 <= sqrt(d) ||r||_inf``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robust_cli.certification.structure import GroupMean, Residual, nodes_of
from robust_cli.models.layers import Normalize

SAFETY = 1.0 + 1e-6


def conv_operator_norm(weight: torch.Tensor, in_hw: tuple[int, int], padding: tuple[int, int],
                       dilation: tuple[int, int] = (1, 1), groups: int = 1) -> float:
    """Upper bound on the l2 operator norm of ``conv2d(., weight, padding, dilation, groups, any stride)``
    on inputs of spatial size ``in_hw``: the max singular value of the kernel's DFT on the padded grid.

    ``weight`` ``[out, in/groups, kh, kw]``. Grouped kernels are expanded to their block-diagonal full form.
    """
    w = weight.detach().double().cpu()
    out_c, in_g, kh, kw = w.shape
    if groups > 1:
        full = torch.zeros(out_c, in_g * groups, kh, kw, dtype=w.dtype)
        per = out_c // groups
        for g in range(groups):
            full[g * per:(g + 1) * per, g * in_g:(g + 1) * in_g] = w[g * per:(g + 1) * per]
        w = full
    # the dilated kernel, zeros between taps
    eh, ew = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    dil = torch.zeros(w.shape[0], w.shape[1], eh, ew, dtype=w.dtype)
    dil[:, :, ::dilation[0], ::dilation[1]] = w
    n_h, n_w = max(in_hw[0] + 2 * padding[0], eh), max(in_hw[1] + 2 * padding[1], ew)
    spectrum = torch.fft.fft2(dil, s=(n_h, n_w))  # [out, in, n_h, n_w]
    mats = spectrum.permute(2, 3, 0, 1).reshape(n_h * n_w, w.shape[0], w.shape[1])
    return float(torch.linalg.matrix_norm(mats, ord=2).max()) * SAFETY


def _bn_scale(bn: nn.Module) -> torch.Tensor:
    """``gamma / sqrt(var + eps)`` per channel (eval-mode BatchNorm is ``scale * x + shift``)."""
    scale = 1 / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale * bn.weight.detach().double() if bn.weight is not None else scale


def _schur(op: nn.Module, in_shape: tuple[int, ...]) -> float:
    """``sqrt(max row sum * max column sum)`` of a linear map with non-negative matrix (pooling)."""
    ones = torch.ones(1, *in_shape, dtype=torch.float64, requires_grad=True)
    out = op(ones)
    (cols,) = torch.autograd.grad(out.sum(), ones)
    return math.sqrt(float(out.detach().max()) * float(cols.max())) * SAFETY


def _maxpool_bound(pool: nn.MaxPool2d, in_shape: tuple[int, ...]) -> float:
    """``sqrt(most windows covering one input)``, the counts by the adjoint of a window-sum."""
    z = torch.zeros(1, *in_shape, dtype=torch.float64, requires_grad=True)
    s = F.avg_pool2d(z, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, count_include_pad=True,
                     divisor_override=1)
    (counts,) = torch.autograd.grad(s.sum(), z)
    if pool.dilation not in (1, (1, 1)):
        raise NotImplementedError("no bound for a dilated max pooling")
    return math.sqrt(float(counts.max()))


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def chain_bound(nodes: list, x: torch.Tensor) -> tuple[float, torch.Tensor, list[dict]]:
    """``(L, output, per-layer factors)`` of a node list run on one float64 input ``x`` ``[1, ...]``."""
    total, factors, i = 1.0, [], 0
    while i < len(nodes):
        node = nodes[i]
        shape = tuple(x.shape[1:])
        if isinstance(node, Residual):
            lb, xb, _ = chain_bound(node.branch, x)
            ls, xs, _ = chain_bound(node.shortcut, x)
            lp, x, _ = chain_bound(node.post, xb + xs)
            value, name = lp * (lb + ls), "Residual"
            total *= value
            factors.append({"layer": name, "bound": value})
            i += 1
            continue
        used = 1
        if isinstance(node, nn.Conv2d):
            w = node.weight.detach().double()
            prev = nodes[i - 1] if i > 0 else None
            if (isinstance(prev, Normalize) and node.groups == 1 and prev.std.numel() == w.shape[1]
                    and factors and factors[-1]["layer"] == "Normalize"):
                # fold the preceding normalisation: undo its factor, scale the kernel's input channels
                total /= factors.pop()["bound"]
                w = w * (1 / prev.std.double()).view(1, -1, 1, 1)
            nxt = nodes[i + 1] if i + 1 < len(nodes) else None
            if isinstance(nxt, nn.BatchNorm2d):
                w = w * _bn_scale(nxt).view(-1, 1, 1, 1)
                used = 2
            value = conv_operator_norm(w, shape[-2:], _pair(node.padding), _pair(node.dilation), node.groups)
        elif isinstance(node, nn.Linear):
            value = float(torch.linalg.matrix_norm(node.weight.detach().double(), ord=2)) * SAFETY
        elif isinstance(node, (nn.BatchNorm1d, nn.BatchNorm2d)):
            value = float(_bn_scale(node).abs().max()) * SAFETY
        elif isinstance(node, Normalize):
            value = float((1 / node.std.double()).max()) * SAFETY
        elif isinstance(node, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, GroupMean)):
            value = _schur(node, shape)
        elif isinstance(node, nn.MaxPool2d):
            value = _maxpool_bound(node, shape)
        else:  # ReLU, Flatten, Dropout, Identity, ScaledTanh: 1-Lipschitz (structure.py admits no others)
            value = 1.0
        for k in range(used):
            x = nodes[i + k](x)
        total *= value
        factors.append({"layer": type(node).__name__, "bound": value})
        i += used
    return total, x, factors


def lipschitz_bound(model: nn.Module, in_shape: tuple[int, ...]) -> tuple[float, list[dict]]:
    """``(L, per-layer factors)``: an upper bound on the l2 -> l2 Lipschitz constant of ``model``'s logits
    on inputs ``[*, *in_shape]``. The model is used in eval mode on a float64 copy; it is not changed."""
    import copy

    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        nodes = nodes_of(m)
        x = torch.zeros(1, *in_shape, dtype=torch.float64)
    with torch.enable_grad():
        total, _, factors = chain_bound(nodes, x)
    return total, factors


def lipschitz_radii(logits: torch.Tensor, y: torch.Tensor, L: float, norm: str, d: int) -> torch.Tensor:
    """Certified radius ``[N]`` (float64) from ``logits`` ``[N,K]``: ``margin / (sqrt(2) L)`` in l2,
    divided by ``sqrt(d)`` in linf; 0 where the image is misclassified (margin <= 0)."""
    z = logits.double()
    true = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], float("-inf")).amax(1)
    r = ((true - other) / (math.sqrt(2) * L)).clamp_min(0)
    return r / math.sqrt(d) if norm == "linf" else r


__all__ = ["conv_operator_norm", "lipschitz_bound", "lipschitz_radii"]
