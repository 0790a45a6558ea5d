"""What the attacks optimise and test: the logit margin, the success test and the attack losses.

``margin`` is the ``m_y(x) = f(x)_y - max_{i != y} f(x)_i`` of Matyasko thesis Ch.5 §5.2, eq 5.2 (the point is
misclassified iff it is negative); ``attack_loss`` is the objective the gradient attacks ascend
(cross-entropy, as in Finlay et al., "Improved robustness to adversarial examples using Lipschitz
regularization of the loss", §2.3, or the Carlini-Wagner margin).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``f_y - max_{j != y} f_j`` per sample ``[B]``: positive iff the prediction is ``y`` (ties aside)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return true - other.amax(dim=1)


def is_adversarial(logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """``[B]`` bool: the prediction differs from ``y`` (untargeted) or equals the target ``y`` (targeted)."""
    pred = logits.argmax(dim=1)
    return pred == y if targeted else pred != y


def _others_logsumexp(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``logsumexp_{j != y} f_j`` per sample ``[B]`` (``-inf`` for a single class)."""
    return logits.scatter(1, y[:, None], float("-inf")).logsumexp(dim=1)


def attack_loss(
    logits: torch.Tensor, y: torch.Tensor, loss: str = "ce", targeted: bool = False, *, scale_free: bool = False
) -> torch.Tensor:
    """Per-sample objective ``[B]`` the gradient attacks *ascend*; ``logits`` ``[B,K]``, ``y`` ``[B]``.

    ``ce``: cross-entropy of the true label (untargeted) or minus that of the target (targeted), evaluated
    as ``CE = softplus(s)`` with ``s = logsumexp_{j!=y} f_j - f_y`` (the same value as ``-log softmax_y``).
    Why this form: the textbook backward ``softmax - onehot`` forms ``p_y - 1`` by cancellation, which in
    float32 is exactly 0 once ``1 - p_y`` is below about 3e-8 (margin above ~17): the true-class term drops
    out of the input gradient and FGSM/PGD step along a wrong direction. Here ``dCE/df`` is
    ``sigmoid(s) * (softmax_{j!=y}(f), -1)`` (y-th entry -1): no cancellation.
    ``margin``: ``max_{j!=y} f_j - f_y`` (untargeted, the Carlini-Wagner margin) or ``f_t - max_{j!=t} f_j``
    (targeted); unlike CE its gradient does not vanish on confidently classified points.

    ``scale_free`` (``ce`` only): return ``s`` itself, whose gradient is ``grad CE / sigmoid(s)``: per sample
    the same direction as CE's, but the factor ``sigmoid(s) ~ exp(s)``, which underflows to 0 in float32
    once the margin exceeds ~100 (a blind, all-zero gradient), is gone. For attacks that only use the
    direction (sign, l2-normalised or top-k steps); the value is not the cross-entropy.
    """
    if loss == "ce":
        s = _others_logsumexp(logits, y) - logits.gather(1, y[:, None]).squeeze(1)
        ce = s if scale_free else torch.nn.functional.softplus(s)
        return -ce if targeted else ce
    if loss == "margin":
        m = margin(logits, y)
        return m if targeted else -m
    raise ValueError(f"unknown loss {loss!r}; expected 'ce' or 'margin'")


def attack_loss_grad(
    logits: torch.Tensor, y: torch.Tensor, loss: str = "ce", targeted: bool = False, *, scale_free: bool = False,
    with_value: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(attack_loss(logits, y, loss, targeted, scale_free=scale_free) [B], its gradient w.r.t. the logits
    [B,K])``, the gradient in closed form: ``torch.autograd.grad(logits, x, grad_outputs=G)`` then gives the
    input gradient of the summed loss without autograd through the loss's scatter/logsumexp/gather/amax
    (about a dozen small kernels per step, a measurable share of an attack step on a small model).

    Closed forms, written with the very operations autograd's backward formulas use, so that ``G`` equals
    autograd's gradient bit for bit (tested):

    - ``ce`` scale-free, ``s = logsumexp_{j!=y} f_j - f_y``: ``ds/df_j = exp(f_j - logsumexp_{i!=y} f_i)``
      (the softmax over the other classes; ``logsumexp``'s backward) for ``j != y``, ``ds/df_y = -1``;
    - ``margin``, ``max_{j!=y} f_j - f_y``: ``1 / n`` at each of the ``n`` other classes that attain the
      max (``amax``'s backward splits ties evenly), ``-1`` at ``y``;

    negated when targeted. The plain ``ce`` (``softplus(s)``) has no bitwise closed form here (its backward
    uses its own ``exp``), so its ``G`` comes from autograd on the logits alone (still no model pass).
    ``logits`` need not require grad; the result does not. ``with_value=False``: the value is not formed
    (``None`` in its place) where the closed form does not need it (direction-only callers: a few kernels
    less per step).
    """
    logits = logits.detach()
    if loss not in ("ce", "margin") or (loss == "ce" and not scale_free):
        with torch.enable_grad():
            z = logits.requires_grad_(True)
            value = attack_loss(z, y, loss, targeted, scale_free=scale_free)
            (g,) = torch.autograd.grad(value.sum(), z)
        return value.detach(), g
    yi = y[:, None]
    if loss == "ce":
        g, _, lse = scale_free_ce_logit_gradient(logits, y)
        top = lse
    else:
        other = logits.scatter(1, yi, float("-inf"))
        top = other.amax(dim=1, keepdim=True)
        g = (other == top).to(logits.dtype)
        g = g.div_(g.sum(1, keepdim=True)).scatter_(1, yi, -1.0)
    value = top.squeeze(1) - logits.gather(1, yi).squeeze(1) if with_value else None
    if targeted:
        g = g.neg_()
        value = None if value is None else value.neg_()
    return value, g


def scale_free_ce_logit_gradient(
    logits: torch.Tensor, y: torch.Tensor, targeted: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(G [B,K], others [B,K], lse [B,1])``: the gradient of the scale-free CE ``s = logsumexp_{j!=y} f_j - f_y``
    (negated when targeted) w.r.t. the ``logits`` ``[B,K]``, with the pieces a caller may reuse: ``others``,
    the logits with ``-inf`` at ``y``, and ``lse = logsumexp_{j!=y} f_j``. All detached.

    ``G_j = exp(f_j - lse)`` for ``j != y`` (``logsumexp``'s backward: the softmax over the other classes),
    ``G_y = -1``; formed with autograd's own operations, so bit for bit its gradient (see
    :func:`attack_loss_grad`, tested in ``tests/test_attack_fast_paths.py``).
    """
    yi = y[:, None]
    others = logits.detach().scatter(1, yi, float("-inf"))
    lse = others.logsumexp(dim=1, keepdim=True)
    g = (others - lse).exp_().scatter_(1, yi, -1.0)
    return (g.neg_() if targeted else g), others, lse


def objective_gradient(
    model: nn.Module, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_x sum_b objective(model(x))_b, logits)``: the input gradient ``[B,C,H,W]`` and logits ``[B,K]``.

    ``objective`` maps logits ``[B,K]`` to a per-sample value ``[B]``; it is summed (not averaged) so each
    sample's gradient is its own, with no ``1/B`` factor. Runs with grad enabled even when called under
    ``torch.no_grad()``; only ``x`` requires grad, so nothing reaches the parameters (call inside
    ``frozen_eval``).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x)
        (grad,) = torch.autograd.grad(objective(logits).sum(), x)
    return grad, logits.detach()


def loss_value_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce", targeted: bool = False,
    *, scale_free: bool = False, with_value: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """``(loss [B], grad_x sum_b loss_b [B,C,H,W], logits [B,K])``: :func:`attack_loss` per sample, its input
    gradient (each sample's own: summed, not averaged) and the logits, all detached (the loss ``None`` with
    ``with_value=False``, see :func:`attack_loss_grad`).

    One forward and one input-only backward; the loss's own part of the backward in closed form
    (:func:`attack_loss_grad`: the same bits as autograd through the loss). Runs with grad enabled even
    under ``torch.no_grad()``; only ``x`` requires grad (call inside ``frozen_eval``).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x)
        value, g = attack_loss_grad(logits, y, loss, targeted, scale_free=scale_free, with_value=with_value)
        (grad,) = torch.autograd.grad(logits, x, grad_outputs=g)
    return value, grad, logits.detach()


def loss_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce", targeted: bool = False,
    *, scale_free: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_x sum_b loss_b, logits)``: the per-sample input gradient ``[B,C,H,W]`` and the logits ``[B,K]``
    of :func:`loss_value_gradient`. ``scale_free``: see ``attack_loss`` (direction-only users).
    """
    _, grad, logits = loss_value_gradient(model, x, y, loss, targeted, scale_free=scale_free, with_value=False)
    return grad, logits


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """The Difference of Logits Ratio ``[B]`` of Croce & Hein 2020 ("Reliable evaluation of adversarial
    robustness with an ensemble of diverse parameter-free attacks", §4, eq. 6 and the targeted eq. 7), to be
    ascended; ``logits`` ``[B,K]`` (``K >= 3``, targeted ``K >= 4``), ``y`` ``[B]`` true labels::

        DLR(z, y)      = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)
        DLR-T(z, y, t) = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)

    with ``z_pi1 >= z_pi2 >= ...`` the sorted logits. Invariant to shifting and rescaling the logits, so a
    model cannot hide behind saturated softmax scores.
    """
    top = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    if target is None:
        return -margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)
