"""Universal adversarial perturbations (Moosavi-Dezfooli, Fawzi, Fawzi & Frossard 2017, "Universal
adversarial perturbations", §3, Algorithm 1), l2 and linf, and their fooling rate.

One image-agnostic ``v`` with ``||v|| <= eps``: pass over the crafting images; wherever ``x_i + v`` is
not yet fooled, DeepFool (``attacks.deepfool``) finds the minimal extra ``dv`` that fools it, and
``v <- P_eps(v + dv)`` (``P_eps`` the projection onto the eps ball: l2 rescaling, linf clipping). Stop after
``max_passes`` passes or once the fooling rate on the crafting images reaches ``1 - delta`` (§3, eq 1).

The fooling rate (§3, eq 1) is ``P[k(clip(x + v)) != k(x)]`` (prediction changed, not "wrong"), measured on
held-out images. Clipping to [0,1] only shrinks ``|x + v - x|`` value by value, so every perturbed image
stays within eps of its original.
"""

from __future__ import annotations

import torch
from torch import nn

from robust_cli.attacks.contract import frozen_eval
from robust_cli.attacks.deepfool import deepfool
from robust_cli.evaluation.runner import predict


def project_ball(v: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """``P_eps(v)`` for ``v`` ``[1,C,H,W]``: the nearest point of the l2 or linf ball of radius eps."""
    if norm == "linf":
        return v.clamp(-eps, eps)
    n = float(v.norm())
    return v * min(1.0, eps / n) if n > 0 else v


def fooling_rate(model: nn.Module, x: torch.Tensor, v: torch.Tensor, batch_size: int = 500) -> float:
    """``P[k(clip(x + v)) != k(x)]`` over ``x`` ``[N,C,H,W]``."""
    if not x.shape[0]:
        return float("nan")
    clean = predict(model, x, batch_size)
    pert = predict(model, (x + v).clamp(0, 1), batch_size)
    return float((clean != pert).double().mean())


def universal_perturbation(model: nn.Module, x: torch.Tensor, norm: str, eps: float, *, max_passes: int = 5,
                           delta: float = 0.2, deepfool_steps: int = 50, overshoot: float = 0.02) -> torch.Tensor:
    """Algorithm 1 on the crafting images ``x`` ``[N,C,H,W]`` in [0,1]: ``v`` ``[1,C,H,W]`` with ``||v|| <= eps``."""
    if norm not in ("l2", "linf"):
        raise ValueError(f"universal perturbations are l2 or linf, not {norm}")
    v = torch.zeros(1, *x.shape[1:], dtype=x.dtype, device=x.device)
    labels = predict(model, x)
    with frozen_eval(model):
        for _ in range(max_passes):
            for i in range(x.shape[0]):
                xi = (x[i:i + 1] + v).clamp(0, 1)
                if predict(model, xi)[0] != labels[i]:
                    continue
                adv = deepfool(model, xi, labels[i:i + 1], norm=norm, steps=deepfool_steps, overshoot=overshoot)
                if predict(model, adv)[0] != labels[i]:  # DeepFool found one: move v by its step
                    v = project_ball(v + (adv - xi), eps, norm)
            if fooling_rate(model, x, v) >= 1 - delta:
                break
    return v.detach()
