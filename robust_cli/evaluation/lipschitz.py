"""Lipschitz statistics of a trained model (Finlay et al. §3.1, §3.5, Table 1), for ``lipschitz.json``.

- ``max_grad_norm``: ``max_i ||grad_x l(x_i)||_2`` over the evaluated images, with ``l`` the per-sample CE:
  the data-based *lower* estimate of the loss's Lipschitz constant (Finlay eq 11).
- ``max_jacobian_norm``: ``max_i ||J_f(x_i)||_2``, the spectral norm of the logits' input Jacobian ``[K, d]``:
  the same estimate for the model (l2 -> l2).
- ``weight_norm_product``: ``prod_l ||W_l||_2`` over the linear maps of the model (Finlay §3.5, Bartlett):
  Linear and Conv2d layers (the conv operator's spectral norm by power iteration at the layer's input shape),
  eval-mode BatchNorm (``max |gamma| / sqrt(var + eps)``) and the input normalisation (``1 / min std``).
  A data-independent *upper* bound when every other layer is 1-Lipschitz and the network is a chain;
  it is not a bound for residual networks (a skip adds, it does not multiply), reported all the same.
- ``margin_radius_estimate``: Finlay's estimate (§3.5) ``margin(x) / (2 L)`` of the l2 radius, with
  ``margin = f_y - max_{j!=y} f_j`` on correctly classified images and ``L = weight_norm_product``: if ``L``
  bounded the Lipschitz constant, a perturbation ``r`` would move every logit by at most ``L ||r||_2``, the
  margin by at most ``2 L ||r||``, and no smaller l2 perturbation could change the prediction. It is an
  *estimate, not a certificate*: ``weight_norm_product`` is no bound for residual networks (above) and its
  conv norms come from power iteration (which approaches the norm from below). Certified radii come from
  ``robust eval certify=lipschitz`` (``certification.lipschitz_bound``: residual blocks bounded as
  ``1 + L_branch``, conv norms bounded from above) and ``certify=[ibp,crown]``.
- ``margin_radius_estimate_empirical``: the same with ``L = max_jacobian_norm`` (a lower estimate of the
  constant, so the radius is typically larger than the true one).

Files written before the rename hold ``margin_lower_bound`` / ``margin_lower_bound_empirical``
(:data:`LEGACY_KEYS`); a report reads them under the new names, and ``robust eval`` rewrites such a file.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust_cli.attacks.contract import frozen_eval
from robust_cli.attacks.losses import loss_gradient
from robust_cli.attacks.losses import margin as logit_margin
from robust_cli.host_memory import release_freed_host_memory
from robust_cli.models.layers import Normalize

#: the keys of lipschitz.json before they were named estimates: new name -> old name
LEGACY_KEYS = {"margin_radius_estimate": "margin_lower_bound",
               "margin_radius_estimate_empirical": "margin_lower_bound_empirical"}


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250, *,
                    scale_free: bool = False):
    """Yield ``grad_x l(x_i)`` ``[b,C,H,W]`` batch by batch, ``l`` the per-sample CE of the true label.

    ``x`` ``[N,C,H,W]`` in [0,1], ``y`` ``[N]``; the model runs in eval mode with frozen parameters (restored
    afterwards), so no parameter gradient is left behind. By ``attacks.losses.loss_gradient`` (no float32
    cancellation on confident images); ``scale_free``: the
    direction the gradient attacks follow, zero only where the model itself is flat.
    """
    for i in range(0, x.shape[0], batch_size):
        with frozen_eval(model):
            grad, _ = loss_gradient(model, x[i:i + batch_size], y[i:i + batch_size], "ce", scale_free=scale_free)
        yield grad
        del grad
        release_freed_host_memory()  # the batch's freed activations back to the OS (peak flat in N)


def input_gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """``||grad_x CE(f(x_i), y_i)||_2`` per image ``[N]`` (per-sample loss, not the batch mean)."""
    return torch.cat([g.flatten(1).norm(dim=1) for g in input_gradients(model, x, y, batch_size)])


def zero_gradient_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250) -> float:
    """Fraction of the images ``x`` ``[N,C,H,W]`` whose input gradient, in the direction the gradient attacks
    follow (scale-free CE), is exactly 0: near 1 flags gradient masking (a flat or saturated model), not
    mere confidence (float32 CE gradients vanish on confident images; this direction does not)."""
    zero = [g.flatten(1).abs().amax(dim=1) == 0 for g in input_gradients(model, x, y, batch_size, scale_free=True)]
    return float(torch.cat(zero).double().mean()) if zero else math.nan


def jacobian_norms(model: nn.Module, x: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    """Spectral norm of the input Jacobian of the logits per image ``[N]``.

    One backward pass per class over a whole batch: in eval mode the samples are independent, so the gradient
    of ``sum_b f_k(x_b)`` with respect to ``x_b`` is row ``k`` of ``J_f(x_b)``.
    """
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].detach().clone().requires_grad_(True)
        logits = model(xb)
        rows = []
        for k in range(logits.shape[1]):
            (g,) = torch.autograd.grad(logits[:, k].sum(), xb, retain_graph=k + 1 < logits.shape[1])
            rows.append(g.flatten(1))
        jac = torch.stack(rows, dim=1)  # [B, K, d]
        out.append(torch.linalg.matrix_norm(jac.double(), ord=2).float())
    return torch.cat(out)


def _conv_spectral_norm(conv: nn.Conv2d, in_shape: tuple[int, ...], iters: int = 50) -> float:
    """Spectral norm of the linear map ``x -> conv(x)`` (bias excluded) on inputs ``[1, *in_shape]``."""
    g = torch.Generator(device="cpu").manual_seed(0)
    w = conv.weight.detach()
    v = torch.randn(1, *in_shape, generator=g).to(w)
    v = v / v.norm()
    sigma = 0.0

    def apply(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    for _ in range(iters):
        u = apply(v)
        sigma = float(u.norm())
        # the adjoint of the convolution is its transpose; output_padding recovers the input size exactly
        vt = F.conv_transpose2d(u, w, None, conv.stride, conv.padding, 0, conv.groups, conv.dilation)
        pad = [0, in_shape[-1] - vt.shape[-1], 0, in_shape[-2] - vt.shape[-2]]
        vt = F.pad(vt, pad)
        if float(vt.norm()) == 0.0:
            return 0.0
        v = vt / vt.norm()
    return sigma


def weight_norms(model: nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """``[{"layer", "type", "norm"}]``: the spectral norm of every linear map of the model, in forward order.

    ``x`` ``[B,C,H,W]`` is one batch, run once to record each layer's input shape.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm, Normalize)):
            def record(mod, inputs, output, name=name):
                if name not in shapes:
                    shapes[name] = tuple(inputs[0].shape[1:])
                    order.append(name)

            hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    modules = dict(model.named_modules())
    out = []
    for name in order:
        module = modules[name]
        if isinstance(module, nn.Linear):
            value = float(torch.linalg.matrix_norm(module.weight.detach().double(), ord=2))
        elif isinstance(module, nn.Conv2d):
            value = _conv_spectral_norm(module, shapes[name])
        elif isinstance(module, Normalize):
            value = float((1 / module.std).max())
        else:
            scale = 1 / torch.sqrt(module.running_var + module.eps) if module.running_var is not None else None
            if scale is None:
                continue  # batch statistics at eval time: not a fixed linear map
            if module.weight is not None:
                scale = scale * module.weight.detach().abs()
            value = float(scale.max())
        out.append({"layer": name, "type": type(module).__name__, "norm": value})
    return out


def _stats(v: torch.Tensor) -> dict[str, float | None]:
    if v.numel() == 0:
        return {"mean": None, "median": None, "min": None, "max": None}
    v = v.double()
    return {"mean": float(v.mean()), "median": float(v.median()), "min": float(v.min()), "max": float(v.max())}


def lipschitz_statistics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250) -> dict[str, Any]:
    """Everything ``lipschitz.json`` holds, for images ``x`` ``[N,C,H,W]`` in [0,1] and labels ``y`` ``[N]``.

    The model is put in eval mode with frozen parameters for the duration and restored afterwards.
    """
    with frozen_eval(model):
        grad = input_gradient_norms(model, x, y, batch_size)
        zero = zero_gradient_fraction(model, x, y, batch_size) if x.shape[0] else None
        jac = jacobian_norms(model, x, max(1, batch_size // 2))
        layers = weight_norms(model, x)
        with torch.no_grad():
            logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    product = math.prod(layer["norm"] for layer in layers) if layers else float("nan")
    m = logit_margin(logits, y)
    correct = m > 0
    max_jac = float(jac.max()) if jac.numel() else float("nan")
    return {
        "n": int(x.shape[0]),
        "max_grad_norm": float(grad.max()) if grad.numel() else None,
        "mean_grad_norm": float(grad.mean()) if grad.numel() else None,
        "zero_grad_fraction": zero,
        "max_jacobian_norm": max_jac,
        "weight_norm_product": product,
        "weight_norms": layers,
        "margin_radius_estimate": {"L": "weight_norm_product", "certificate": False,
                                   **_stats(m[correct] / (2 * product))},
        "margin_radius_estimate_empirical": {"L": "max_jacobian_norm", "certificate": False,
                                             **_stats(m[correct] / (2 * max_jac))},
    }
