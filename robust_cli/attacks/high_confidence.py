"""The high-confidence targeted attack of Matyasko's thesis (Ch.4 §4.4, Algorithm 1, eq. 4.6-4.8), l2.

The attack seeks the smallest ``r`` with ``p_t(x + r) >= C`` (eq. 4.6) for a target ``t`` and a confidence
``C``. Linearising the log-likelihood (eq. 4.7, log rather than softmax, whose gradient saturates) gives the
l2-minimal step of eq. 4.8 / Algorithm 1, lines 5-8::

    f = log C - log p_t(x_hat);   w = grad_x log p_t(x_hat);   x_hat <- clip_[0,1](x_hat + f / ||w||_2^2 * w)

repeated while ``p_t(x_hat) < C``, at most ``steps`` times (the defense of Ch.4 §4.5 runs 5; its evaluation
500 with each step's l2 norm clipped at 0.1 and the point projected onto the box after each update). The
step aims at ``log C + 1e-4`` (as DeepFool's ``gap + 1e-4``): on a log-concave ``p_t`` the linearisation
undershoots, so the iterates approach ``log C`` from below and would otherwise never reach it.

:func:`high_confidence_steps` is the core, written for the adversary-critic defense (Ch.4 §4.4), which
back-propagates through the attack: with ``create_graph=True`` the gradients ``w`` keep their graph, and the
stopping indicator ``I(p_t < C)`` is a hard 0/1 in the forward pass whose backward pass is that of
``sigmoid(f)``, the sigmoid-adjusted straight-through estimator the thesis uses (§4.4, after eq. 4.8).

As an evaluation attack (``attack=high_confidence``) the target is the class of the nearest linearised
decision boundary at ``x``, ``argmin_{j != y} |f_y - f_j| / ||grad(f_y - f_j)||_2`` (DeepFool's choice), and
the distance the evaluation measures is the l2 norm of a perturbation that makes the model assign that class
with confidence ``C``: an upper bound on the minimal l2 adversarial distance, the larger the higher ``C``.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.class_gradients import all_but, logit_difference_gradients
from robust_cli.attacks.geometry import batch_norm, view_as_images
from robust_cli.schema import Range, schema_of

AIM = 1e-4  # the step aims this far past log C


def nearest_boundary_class(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[B]`` the class ``j != y`` whose linearised boundary is nearest to ``x`` in l2 (no graph kept)."""
    g, w, _ = logit_difference_gradients(model, x, y)  # g = f_j - f_y, w = its gradient, j over all_but(y)
    dist = g.abs() / w.flatten(2).norm(dim=2).clamp_min(1e-12)  # [B, K-1]
    return all_but(y, g.shape[1] + 1).gather(1, dist.argmin(1, keepdim=True)).squeeze(1)


def high_confidence_steps(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, confidence: float | torch.Tensor, *,
    steps: int = 5, max_step: float | None = None, create_graph: bool = False,
) -> torch.Tensor:
    """Algorithm 1 from ``x`` ``[B,C,H,W]`` in [0,1] towards ``target`` ``[B]``; returns ``x_hat`` in [0,1].

    Args:
        model: called as it is (mode and parameters untouched: wrap it in ``frozen_eval`` to attack a frozen
            model; the critic defense leaves its parameters on so the loss reaches them).
        confidence: ``C`` in (0,1), a float or per sample ``[B]`` (the defense: the running mean confidence
            of each sample's target class).
        steps: at most this many updates; a sample stops once ``p_t(x_hat) >= C``.
        max_step: clip each update's l2 norm to this (thesis Ch.4 §4.5: 0.1); None: no clip.
        create_graph: keep the graph through the gradients and the steps, so that ``x_hat`` is differentiable
            in ``x`` and in the parameters; the stopping indicator's gradient is the sigmoid straight-through
            estimator. False: every step is detached (an evaluation attack).
    """
    c = torch.as_tensor(confidence, dtype=x.dtype, device=x.device).expand(len(x))
    log_c = c.log()
    x_hat = x if create_graph else x.detach()
    for _ in range(steps):
        with torch.enable_grad():
            z = x_hat if create_graph and x_hat.requires_grad else x_hat.detach().requires_grad_(True)
            log_p = torch.log_softmax(model(z), dim=1).gather(1, target[:, None]).squeeze(1)
            (w,) = torch.autograd.grad(log_p.sum(), z, create_graph=create_graph)
        f = log_c - log_p
        hard = (f > 0).to(x.dtype)
        if not bool(hard.any()):
            break
        mask = hard + (torch.sigmoid(f) - torch.sigmoid(f).detach()) if create_graph else hard
        scale = (f.clamp_min(0) + AIM) / batch_norm(w, "l2").pow(2).clamp_min(1e-30)
        r = w * view_as_images(scale * mask, w)
        if max_step is not None:
            r = r * view_as_images((max_step / batch_norm(r, "l2").clamp_min(1e-30)).clamp(max=1), r)
        x_hat = (x_hat + r).clamp(0, 1)
        if not create_graph:
            x_hat = x_hat.detach()
    return x_hat


@register_attack(norms=("l2",), budget=False)
def high_confidence(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l2",
    steps: Annotated[int, Range(ge=1)] = 5,
    confidence: Annotated[float, Range(gt=0, lt=1)] | None = None,
    max_step: Annotated[float, Range(gt=0)] | None = None,
    targeted: bool = False,
) -> torch.Tensor:
    """Algorithm 1 as an evaluation attack on ``x`` ``[B,C,H,W]`` in [0,1], true labels ``y`` ``[B]``.

    Args:
        norm: ``l2`` (the step of eq. 4.8 is l2-minimal).
        steps: at most this many updates (the defense: 5; the thesis's evaluation: 500 with ``max_step=0.1``).
        confidence: ``C``; None: the model's confidence on ``x`` itself (the thesis's evaluation, Ch.4 §4.5).
        max_step: clip each update's l2 norm to this; None: no clip.
        targeted: ``y`` holds the targets; otherwise the target is the class of the nearest linearised
            boundary (:func:`nearest_boundary_class`).

    Returns:
        ``[B,C,H,W]`` in [0,1]: the final iterate where the model (re-checked here) no longer predicts the
        true class (untargeted) or predicts the target (targeted); ``x`` elsewhere.
    """
    if norm != "l2":
        raise ValueError(f"high_confidence supports l2, got norm={norm!r}")
    x = x.detach()
    with frozen_eval(model):
        with torch.no_grad():
            p0 = torch.softmax(model(x), dim=1)
        target = y if targeted else nearest_boundary_class(model, x, y)
        c = p0.amax(1) if confidence is None else confidence
        x_hat = high_confidence_steps(model, x, target, c, steps=steps, max_step=max_step)
        with torch.no_grad():
            pred = model(x_hat).argmax(1)
    hit = pred == y if targeted else pred != y
    return torch.where(view_as_images(hit, x), x_hat, x)


SCHEMAS = {"high_confidence": schema_of(high_confidence, "high_confidence")}
