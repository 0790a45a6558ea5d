"""JSMA (Papernot et al. 2016, "The limitations of deep learning in adversarial settings", §III, Algorithm 3,
eq. 10: the saliency map over pairs of features), l0, minimal-norm, untargeted.

Each iteration takes the Jacobian of the logits at the current point and saturates the pair of features
(values) ``p, q`` of largest saliency, until the point is misclassified or ``gamma * d`` values are changed
(Papernot's Upsilon). Untargeted (Matyasko thesis Ch.5 evaluates JSMA untargeted): the target ``t`` is the
class, among the ``candidates`` top classes at the current point, whose chosen pair closes the largest
share of its logit gap ``f_y - f_t`` to first order (DeepFool's choice of the nearest class, re-made every
iteration; ``candidates=1``: the runner-up), and "the other classes" of the paper's ``beta`` is the true
class ``y`` that must lose. Per value a direction ``s_i`` is chosen (``directions``):
``both`` moves each value towards the box face where ``f_t - f_y`` grows, ``increase`` is the paper's
``theta = +1`` (values set to 1), ``decrease`` its ``theta = -1``. With ``D_i = s_i * room_i`` the change,
``alpha_i = D_i d f_t / d x_i`` and ``beta_i = D_i d f_y / d x_i``:

- ``saliency=pairs`` (eq. 10): the pair maximising ``(alpha_p + alpha_q) * |beta_p + beta_q|`` among those with
  ``alpha_p + alpha_q > 0`` and ``beta_p + beta_q < 0`` (the best additive pair where none qualifies);
- ``saliency=margin``: the pair maximising the first-order gain of the margin, ``sum (alpha - beta)``
  (the two values of largest ``alpha_i - beta_i``; on a linear model the greedy l0 knapsack).

Where the pair that fooled the model holds a value too many, each of its two values alone is tried as well
(two forward passes; the first misclassified point can be one value smaller than a whole pair allows).
Logits rather than the softmax: the paper's Jacobian of F is taken on the last hidden layer in its §IV.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from torch import nn

from robust_cli.attacks.best import Best
from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.losses import is_adversarial
from robust_cli.schema import Range, schema_of


def _pair_scores(alpha: torch.Tensor, beta: torch.Tensor, allowed: torch.Tensor, saliency: str,
                 chunk: int = 8) -> torch.Tensor:
    """``[b, 2]`` the chosen pair of feature indices per image (``alpha``, ``beta``, ``allowed`` ``[b, d]``)."""
    gain = torch.where(allowed, alpha - beta, torch.full_like(alpha, float("-inf")))
    additive = gain.topk(2, dim=1).indices
    if saliency == "margin":
        return additive
    out = []
    for i in range(0, alpha.shape[0], chunk):  # [chunk, d, d] pair tables
        a = alpha[i:i + chunk, :, None] + alpha[i:i + chunk, None, :]
        b = beta[i:i + chunk, :, None] + beta[i:i + chunk, None, :]
        ok = (a > 0) & (b < 0) & allowed[i:i + chunk, :, None] & allowed[i:i + chunk, None, :]
        ok &= ~torch.eye(a.shape[1], dtype=torch.bool, device=a.device)
        score = torch.where(ok, a * b.abs(), torch.full_like(a, -1.0))
        flat = score.flatten(1).argmax(1)
        pair = torch.stack((flat // a.shape[1], flat % a.shape[1]), 1)
        none = score.flatten(1).amax(1) < 0
        out.append(torch.where(none[:, None], additive[i:i + chunk], pair))
    return torch.cat(out)


@register_attack(norms=("l0",), budget=False)
def jsma(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l0",
    gamma: Annotated[float, Range(gt=0, le=1)] = 1.0,
    saliency: Literal["pairs", "margin"] = "pairs",
    directions: Literal["both", "increase", "decrease"] = "both",
    candidates: Annotated[int, Range(ge=1)] = 9,
) -> torch.Tensor:
    """Untargeted JSMA on ``x`` ``[B,C,H,W]`` in [0,1], true labels ``y`` ``[B]``.

    Args:
        gamma: at most this fraction of the values is changed (Papernot: 0.145 on MNIST; 1 = until fooled).
        saliency: ``pairs`` (eq. 10) or ``margin`` (the additive first-order margin gain).
        directions: the directions a value may be saturated in (``increase`` = the paper's theta = +1).
        candidates: target classes considered per iteration, the top ones by current logit (1 = the runner-up).

    Returns:
        ``[B,C,H,W]``: the first misclassified point per image, ``x`` where none was found within gamma.
    """
    if norm != "l0":
        raise ValueError(f"jsma supports l0 only, got norm={norm!r}")
    x = x.detach()
    b, d = x.shape[0], x[0].numel()
    rounds = int(gamma * d) // 2
    with torch.no_grad():
        m = max(1, min(candidates, model(x[:1]).shape[1] - 1))
    with frozen_eval(model):
        best = Best(x, norm)
        cur = x.flatten(1).clone()
        free = torch.ones_like(cur, dtype=torch.bool)
        active = torch.arange(b, device=x.device)
        last = torch.zeros(b, 2, dtype=torch.long, device=x.device)  # the pair changed last, per image
        for it in range(rounds + 1):
            xa = cur[active].view(-1, *x.shape[1:])
            xr = xa.repeat_interleave(m, dim=0).requires_grad_(True)  # one copy per candidate target
            with torch.enable_grad():
                logits = model(xr)
                t = logits.detach()[::m].scatter(1, y[active, None], float("-inf")).topk(m, dim=1).indices
                yr = y[active].repeat_interleave(m)
                ft = logits.gather(1, t.reshape(-1, 1)).squeeze(1)
                fy = logits.gather(1, yr[:, None]).squeeze(1)
                gt = torch.autograd.grad(ft.sum(), xr, retain_graph=True)[0]
                gy = torch.autograd.grad(fy.sum(), xr)[0]
            fooled = is_adversarial(logits.detach()[::m], y[active])
            best.offer(xa.detach(), fooled, active)
            if it > 0 and bool(fooled.any()):  # the last pair may be one value too many: try each alone
                done = active[fooled]
                for k in range(2):
                    single = cur[done].clone()
                    single.scatter_(1, last[done, k:k + 1], x.flatten(1)[done].gather(1, last[done, k:k + 1]))
                    best.check(model, single.view(-1, *x.shape[1:]), y[done], done)
            keep = ~fooled & free[active].any(1)
            keep_r = keep.repeat_interleave(m)
            gap = (fy - ft).detach()[keep_r].clamp_min(1e-12)
            active, gt, gy = active[keep], gt.flatten(1)[keep_r], gy.flatten(1)[keep_r]
            if active.numel() == 0 or it == rounds:
                break
            xc = cur[active].repeat_interleave(m, dim=0)
            up = {"both": gt > gy, "increase": torch.ones_like(gt, dtype=torch.bool),
                  "decrease": torch.zeros_like(gt, dtype=torch.bool)}[directions]
            target = torch.where(up, torch.ones_like(xc), torch.zeros_like(xc))
            change = target - xc
            allowed = free[active].repeat_interleave(m, dim=0) & (change != 0)
            pairs = _pair_scores(change * gt, change * gy, allowed, saliency)  # [b*m, 2]
            # the target whose pair closes the largest share of its gap (first order), as DeepFool picks a class
            share = (change * (gt - gy)).gather(1, pairs).sum(1) / gap
            pick = torch.arange(len(active), device=x.device) * m + share.view(-1, m).argmax(1)
            pair, target = pairs[pick], target[pick]
            rows = active[:, None].expand(-1, 2)
            cur[rows, pair] = target.gather(1, pair)
            free[rows, pair] = False
            last[active] = pair
    return best.x_adv


SCHEMAS = {"jsma": schema_of(jsma, "jsma")}
