"""EAD, the elastic-net attack (Chen et al. 2018, "EAD: elastic-net attacks to deep neural networks via
adversarial examples", §3, eq. 5-9, Algorithm 1), minimal l1.

For a constant ``c`` the attack minimises over ``x_hat`` in ``[0,1]^d`` (eq. 7)::

    c * f(x_hat) + beta * ||x_hat - x||_1 + ||x_hat - x||_2^2,
    f(x_hat) = max(Z_y - max_{j != y} Z_j, -kappa)        (untargeted; eq. 5 for a target t: max_{j!=t} Z_j - Z_t)

with ``Z`` the logits and ``kappa`` the ``confidence``, by ISTA (eq. 8) or, by default, FISTA (Algorithm 1)::

    x_{k+1} = S_beta(y_k - lr_k grad g(y_k)),  g = c f + ||. - x||_2^2
    y_{k+1} = x_{k+1} + k / (k + 3) (x_{k+1} - x_k)                  (FISTA only; ISTA: y = x)

where ``S_beta`` is the element-wise shrinkage-thresholding projected onto the box (eq. 9: ``x_i`` within
``beta`` of ``x_i^0`` snaps back to it, the rest moves ``beta`` towards it and is clipped to [0,1]; the
threshold is ``beta`` itself, as in the paper and the authors' code) and ``lr_k = lr (1 - k/steps)^(1/2)``
(the authors' polynomial decay). ``c`` is set per image by a binary search (§4.1): from ``const_init``,
halved towards the largest failing value after a success, times ten until the first success.

Of the adversarial iterates (re-checked: misclassified, margin past ``kappa``) the attack returns the best by
the ``decision`` rule of §3: ``l1`` the smallest ``||x_hat - x||_1``, ``en`` the smallest elastic-net
``beta ||.||_1 + ||.||_2^2``. Each iteration costs one forward/backward pass and one forward pass.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from torch import nn

from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.geometry import batch_norm, view_as_images
from robust_cli.schema import Range, schema_of


def _margin_loss(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """``Z_y - max_{j != y} Z_j`` (untargeted) or ``max_{j != t} Z_j - Z_t`` (targeted), per sample ``[B]``."""
    own = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - own if targeted else own - other


def shrink(z: torch.Tensor, x: torch.Tensor, beta: float) -> torch.Tensor:
    """``S_beta`` of eq. 9 onto the box: ``z`` within ``beta`` of ``x`` goes to ``x``, the rest ``beta`` closer,
    clipped to [0,1]."""
    d = z - x
    return torch.where(d > beta, (z - beta).clamp(max=1), torch.where(d < -beta, (z + beta).clamp(min=0), x))


@register_attack(norms=("l1",), budget=False)
def ead(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l1",
    steps: Annotated[int, Range(ge=1)] = 1000,
    search_steps: Annotated[int, Range(ge=1)] = 9,
    lr: Annotated[float, Range(gt=0)] = 0.01,
    beta: Annotated[float, Range(ge=0)] = 0.01,
    const_init: Annotated[float, Range(gt=0)] = 0.001,
    confidence: Annotated[float, Range(ge=0)] = 0.0,
    decision: Literal["l1", "en"] = "l1",
    fista: bool = True,
    targeted: bool = False,
) -> torch.Tensor:
    """Minimal-l1 EAD on ``x`` ``[B,C,H,W]`` in [0,1], labels ``y`` ``[B]`` (targets when ``targeted``).

    Args:
        norm: ``l1``.
        steps: (F)ISTA iterations per value of ``c`` (paper: 1000).
        search_steps: binary-search rounds over ``c`` (paper: 9).
        lr: the initial step ``lr_0`` of the polynomially decaying (F)ISTA step (paper: 0.01).
        beta: the l1 weight of eq. 7, also the shrinkage threshold (the paper varies it from 1e-3 to 1e-1;
            1e-2 here: on MNIST LeNet-5 it gives 31% smaller l1 than 1e-3, see BENCHMARKS.md).
        const_init: the first ``c`` (paper: 1e-3).
        confidence: ``kappa``, the margin an adversarial must clear (paper: 0).
        decision: ``l1`` or ``en``, the rule choosing among the adversarial iterates (§3).
        fista: FISTA (Algorithm 1) or plain ISTA (eq. 8).
        targeted: ``y`` holds target classes (eq. 5).

    Returns:
        ``[B,C,H,W]`` in [0,1]: the best adversarial by ``decision`` per image; ``x`` where none was found
        (including images the model already misclassifies).
    """
    if norm != "l1":
        raise ValueError(f"ead supports l1, got norm={norm!r}")
    x = x.detach()
    b = len(x)
    lower = torch.zeros(b, dtype=x.dtype, device=x.device)
    upper = torch.full_like(lower, float("inf"))
    const = torch.full_like(lower, const_init)
    best = x.clone()
    best_score = torch.full_like(lower, float("inf"))
    with frozen_eval(model):
        with torch.no_grad():
            logits0 = model(x)
        done = logits0.argmax(1) != y if not targeted else logits0.argmax(1) == y
        for _ in range(search_steps):
            x_k, y_k = x.clone(), x.clone()
            found = torch.zeros(b, dtype=torch.bool, device=x.device)
            for k in range(steps):
                with torch.enable_grad():
                    z = y_k.requires_grad_(True)
                    loss = const * _margin_loss(model(z), y, targeted).clamp_min(-confidence)
                    loss = loss + batch_norm(z - x, "l2").pow(2)
                    (grad,) = torch.autograd.grad(loss.sum(), z)
                step = lr * (1 - k / steps) ** 0.5
                x_new = shrink(y_k.detach() - step * grad, x, beta)
                y_k = x_new + (k / (k + 3)) * (x_new - x_k) if fista else x_new
                x_k = x_new
                with torch.no_grad():
                    margin = _margin_loss(model(x_k), y, targeted)
                hit = margin < -confidence
                r = x_k - x
                score = batch_norm(r, "l1") if decision == "l1" else beta * batch_norm(r, "l1") + batch_norm(r, "l2")**2
                better = hit & (score < best_score)
                best = torch.where(view_as_images(better, x), x_k, best)
                best_score = torch.where(better, score, best_score)
                found |= hit
            # binary search on c (authors' code): success -> smaller c; failure -> larger, x10 until bounded
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(torch.isfinite(upper), (lower + upper) / 2, const * 10)
    return torch.where(view_as_images(done, x), x, best)


SCHEMAS = {"ead": schema_of(ead, "ead")}
