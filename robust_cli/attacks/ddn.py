"""DDN: Decoupled Direction and Norm (Rony et al. 2019, "Decoupling direction and norm for efficient
gradient-based L2 adversarial attacks and defenses", §3, Algorithm 1), minimal l2.

Per iteration ``k`` (one forward and backward pass), with ``g`` the gradient of the loss to ascend:
``delta <- delta + alpha_k g / ||g||_2``; ``eps <- eps (1 - gamma)`` if ``x + delta`` is adversarial else
``eps (1 + gamma)``; ``delta <- eps delta / ||delta||_2``; ``x + delta`` clipped to [0,1].
The step ``alpha_k`` is annealed from 1 to 0.01 by a cosine (the authors' code; Algorithm 1 fixes it), and
``eps`` is capped by the farthest point of the box. The loss is the cross-entropy in its scale-free form
(``attack_loss(scale_free=True)``: the same direction, with no float32 underflow on confident points,
where the plain CE gradient is 0 and Algorithm 1 would divide by it); ``loss=cross_entropy`` is the paper's
loss, computed as the authors' code does.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from torch import nn
from torch.nn.functional import cross_entropy as ce_loss

from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.geometry import batch_norm, view_as_images
from robust_cli.attacks.losses import loss_gradient, objective_gradient
from robust_cli.attacks.best import Best, worst_norm
from robust_cli.norms import check_norm
from robust_cli.schema import Range, schema_of


@register_attack(norms=("l2",), budget=False)
def ddn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str = "l2",
        steps: Annotated[int, Range(ge=1)] = 100, gamma: Annotated[float, Range(gt=0, lt=1)] = 0.05,
        init_norm: Annotated[float, Range(gt=0)] = 1.0, lr: Annotated[float, Range(gt=0)] = 1.0,
        lr_final: Annotated[float, Range(gt=0)] = 0.01, targeted: bool = False,
        loss: Literal["scale_free", "cross_entropy"] = "scale_free") -> torch.Tensor:
    """DDN (Algorithm 1); ``x`` ``[B,C,H,W]`` in [0,1], ``y`` ``[B]`` (targets when ``targeted``).

    Args:
        steps: iterations (the paper: 100 to 1,000).
        gamma: the relative change of the norm ``eps`` per iteration (the paper: 0.05).
        init_norm: the first ``eps`` (the paper: 1).
        lr: the first step ``alpha`` along the unit gradient (the paper: 1) ...
        lr_final: ... annealed by a cosine to ``lr * lr_final``.
        targeted: ``y`` holds targets.
        loss: ``scale_free`` (see the module) or ``cross_entropy``: the paper's loss as the authors' code
            (adv-lib 0.2.8's ``ddn``) computes it, with its iterate ``x + delta`` recomposed every step, so
            that on one machine and batch the run retraces theirs bit for bit (at their 1000 steps: a
            draw of another local minimum for the ``minimal`` ensemble; BENCHMARKS.md, issue 10, session 8).
            Its gradient vanishes on confidently classified points (see ``attack_loss``).

    Returns:
        ``[B,C,H,W]`` in [0,1]: per sample the smallest-l2 adversarial iterate, ``x`` where none was found.
    """
    check_norm(norm, ddn.norms, who="ddn")
    x, y = x.detach(), y.to(x.device)
    delta = torch.zeros_like(x)
    eps = torch.full((x.shape[0],), float(init_norm), device=x.device, dtype=x.dtype)
    cap = worst_norm(x, "l2")
    with frozen_eval(model):
        best = Best(x, "l2", y=y, targeted=targeted, dtype=x.dtype)
        plain = loss == "cross_entropy"
        # the direction where the gradient vanishes: one random unit draw per call (not one per step); the
        # authors' code draws afresh each step from the global generator: here a private one seeded 0, the same
        # numbers as theirs under torch.manual_seed(0) (as the benchmarks run it)
        fallback = None if plain else torch.randn_like(x) / math.sqrt(x[0].numel())
        gen = torch.Generator(device=x.device).manual_seed(0) if plain else None
        xa = x.clone()
        # eps's factors as tensors of its dtype: one where + one product per step (was two products and a where)
        shrink, grow = (torch.tensor(1 + s * gamma, dtype=eps.dtype, device=x.device) for s in (-1, 1))
        sign = -1.0 if targeted else 1.0  # cross_entropy: ascend the true class's CE, descend the target's
        for k in range(steps):
            if plain:
                xa = x + delta  # theirs: the perturbation kept, the point recomposed (not the clipped xa)
                grad, logits = objective_gradient(model, xa, lambda z: ce_loss(z, y, reduction="none") * sign)
            else:
                grad, logits = loss_gradient(model, xa, y, "ce", targeted, scale_free=True)
            adv = best.update(xa, logits, r=delta)  # delta is xa - x
            if k == steps - 1:  # the next point would never be evaluated
                break
            gn = batch_norm(grad, "l2")
            if plain:
                unit = grad.div_(view_as_images(gn, x))
                vanished = gn < 1e-12  # confident points: the float32 CE gradient underflows to 0
                if bool(vanished.any()):
                    unit[vanished] = torch.randn(unit[vanished].shape, generator=gen, dtype=x.dtype, device=x.device)
            else:
                unit = grad.div_(view_as_images(gn.clamp_min(1e-30), x))
                if not bool((gn > 0).all()):  # rare: a vanished gradient steps along the fallback
                    unit = torch.where(view_as_images(gn > 0, x), unit, fallback)
            alpha = lr * (lr_final + (1 - lr_final) * (1 + math.cos(math.pi * k / steps)) / 2)
            delta = delta.add_(unit, alpha=alpha)
            eps = torch.minimum(eps.mul_(torch.where(adv, shrink, grow)), cap)
            delta = delta.mul_(view_as_images(eps / batch_norm(delta, "l2").clamp_min(1e-30), x))
            xa = torch.add(x, delta, out=xa).clamp_(0, 1)  # the next iterate, in the box (its graph is gone)
            delta = torch.sub(xa, x, out=delta)
    return best.x_adv


SCHEMAS = {"ddn": schema_of(ddn, "ddn")}
