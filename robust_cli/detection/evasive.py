"""The evasive attack: misclassify *and* keep the detector's gradient norm below its threshold (the
seminar slides' "C-W style self attack": "attack while also making gradient small"; Carlini & Wagner 2017,
"Adversarial examples are not easily detected", §3: the detector's score added to the attack loss).

Per image, projected gradient ascent inside the eps ball (linf: sign steps; l2: normalised steps) on

    min(max_{j != y} f_j - f_y, kappa) - lam * max(0, g(x') - margin * t) / t,

``g`` the detector score (``detection.gradient_norm``, differentiated through: double backprop), ``t``
the threshold. An iterate counts as a success when the model misclassifies it in fp32 and ``g <= t`` (both
re-checked without the graph); the distance is found by bisection on eps over ``search_steps`` rounds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robust_cli.attacks.contract import frozen_eval
from robust_cli.attacks.geometry import project


def _score(model: nn.Module, x: torch.Tensor, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g [B], logits [B,K])``: the detector score at the predicted label, differentiable if asked."""
    x = x if x.requires_grad else x.detach().requires_grad_(True)
    logits = model(x)
    pred = logits.argmax(1).detach()
    loss = F.cross_entropy(logits, pred, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    return grad.flatten(1).norm(dim=1), logits


def evade_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str, threshold: float,
             *, steps: int = 30, step_size: float = 0.1, lam: float = 10.0, kappa: float = 1.0,
             margin: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_adv [B,C,H,W], success [B])``: the best evasive iterate within ``eps`` ``[B]`` of ``x``."""
    best, success = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    delta = torch.zeros_like(x)
    e = eps.view(-1, *([1] * (x.dim() - 1)))
    for _ in range(steps):
        xa = (x + delta).detach().requires_grad_(True)
        with torch.enable_grad():
            g, logits = _score(model, xa, create_graph=True)
            true = logits.gather(1, y[:, None]).squeeze(1)
            other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
            obj = (other - true).clamp(max=kappa) - lam * F.relu(g - margin * threshold) / threshold
            (grad,) = torch.autograd.grad(obj.sum(), xa)
        with torch.enable_grad():
            g_now, logits_now = _score(model, xa.detach(), create_graph=False)
        ok = (logits_now.argmax(1) != y) & (g_now <= threshold)
        best[ok & ~success] = xa.detach()[ok & ~success]
        success |= ok
        unit = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view_as(e)
        step = grad.sign() if norm == "linf" else unit
        delta = project(delta + step_size * e * step, x, eps, norm)
    return best, success


def evasive_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, threshold: float, r_max: float,
                   *, search_steps: int = 8, **options) -> torch.Tensor:
    """``x_adv`` ``[B,C,H,W]``: per image the evasive adversarial of the smallest eps found by bisection over
    ``[0, r_max]`` (the input itself where none was found at ``r_max``). ``x`` in [0,1]."""
    with frozen_eval(model):
        hi = torch.full((x.shape[0],), float(r_max), device=x.device)
        best, found = evade_at(model, x, y, hi, norm, threshold, **options)
        lo = torch.zeros_like(hi)
        for _ in range(search_steps):
            mid = (lo + hi) / 2
            adv, ok = evade_at(model, x, y, mid, norm, threshold, **options)
            ok &= found
            best[ok] = adv[ok]
            hi = torch.where(ok, mid, hi)
            lo = torch.where(ok, lo, mid)
    return best
