"""DeepFool (Moosavi-Dezfooli et al. 2016; thesis §2.4.1.4, eq. 2.17-2.19), l2 and linf, minimal-norm.

At the current point ``x_t`` each candidate class ``j`` is linearised, ``w_j = grad(f_j - f_y)``,
``gap_j = f_y - f_j >= 0``; the nearest linearised boundary is ``j* = argmin_j gap_j / ||w_j||_q`` (``q`` the
dual norm: 2 for l2, 1 for linf) and the step that reaches it is::

    l2:   r_t = (gap_j* + 1e-4) / ||w_j*||_2^2 * w_j*
    linf: r_t = (gap_j* + 1e-4) / ||w_j*||_1   * sign(w_j*)

Optionally each step is clipped, ``r_t <- r_t min(1, max_step / ||r_t||)`` (Matyasko thesis Ch.3 §3.5: 0.5;
Ch.4 §4.5: 0.1), so that a far linearisation cannot overshoot. Steps accumulate,
``x_{t+1} = clip_[0,1](x + (1 + overshoot) * sum_t r_t)``, until ``x_{t+1}`` is misclassified
or ``steps`` run out (thesis §5.4: 50 iterations, overshoot 0.02, as in the authors' code).

Box handling (the thesis notes DeepFool ignores it): values sitting on a box face whose ``w`` points out of
the box cannot move, so they are dropped from ``w`` before the norm and the step. On a linear model the
iterates then converge to the exact box-constrained minimiser for the chosen class.

All samples and all candidate classes are handled in one batched forward/backward per step: the active
images are repeated once per candidate class.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from robust_cli.attacks.class_gradients import logit_difference_gradients
from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.geometry import batch_norm, view_as_images
from robust_cli.attacks.losses import is_adversarial
from robust_cli.schema import Range, schema_of


@register_attack(norms=("l2", "linf"), budget=False)
def deepfool(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    steps: Annotated[int, Range(ge=1)] = 50,
    overshoot: Annotated[float, Range(ge=0)] = 0.02,
    candidates: Annotated[int, Range(ge=1)] = 9,
    max_step: Annotated[float, Range(gt=0)] | None = None,
) -> torch.Tensor:
    """Minimal-norm DeepFool on ``x`` ``[B,C,H,W]`` in [0,1] with true labels ``y`` ``[B]``.

    Args:
        norm: ``l2`` or ``linf``.
        steps: at most this many linearisation steps.
        overshoot: the accumulated perturbation is scaled by ``1 + overshoot`` (crosses the boundary).
        candidates: the other classes considered, the top ones by clean logit (all when ``>= K - 1``).
        max_step: clip each step ``r_t`` to this norm (in ``norm``) before it accumulates; None: no clip.
            Matyasko's thesis clips at 0.5 (Ch.3 §3.5, DeepFool overestimates the distance of regularised
            networks otherwise) and at 0.1 with 500 steps (Ch.4 §4.5).

    Returns:
        ``[B,C,H,W]`` in [0,1]: the first misclassified iterate per sample; ``x`` itself where the model
        already misclassifies ``x`` or no adversarial was found within ``steps``.
    """
    if norm not in ("l2", "linf"):
        raise ValueError(f"deepfool supports l2 and linf, got norm={norm!r}")
    x = x.detach()
    with frozen_eval(model):
        with torch.no_grad():
            logits0 = model(x)
        k = logits0.shape[1]
        m = max(1, min(candidates, k - 1))
        others = logits0.scatter(1, y[:, None], float("-inf"))
        cand = others.topk(m, dim=1).indices  # [B, m]
        active = ~is_adversarial(logits0, y)
        found = torch.zeros_like(active)
        r_tot = torch.zeros_like(x)
        x_adv = x.clone()
        for t in range(steps + 1):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xa = x_adv[idx]
            # diff [b, m] = f_cand - f_y and its gradient w [b, m, C, H, W]: one forward, m backward passes
            diff, w, logits = logit_difference_gradients(model, xa, y[idx], cand[idx])
            fooled = is_adversarial(logits, y[idx])
            found[idx] = fooled
            still = ~fooled
            active[idx] = still
            if not bool(still.any()) or t == steps:
                break
            # rows [b' * m]: sample-major, candidate-minor
            w, diff, xa, sel = w[still].flatten(0, 1), diff[still].reshape(-1), xa[still], idx[still]
            # values on a box face that w pushes outwards cannot move: leave them out
            xrep = xa.repeat_interleave(m, dim=0)
            blocked = ((xrep <= 0) & (w < 0)) | ((xrep >= 1) & (w > 0))
            w = torch.where(blocked, torch.zeros_like(w), w)
            dual = batch_norm(w, "l2" if norm == "l2" else "l1").clamp_min(1e-12)
            gap = (-diff).clamp_min(0)
            dist = (gap / dual).view(-1, m)
            best = dist.argmin(dim=1)  # [b]
            pick = torch.arange(len(sel), device=x.device) * m + best
            w, gap, dual = w[pick], gap[pick], dual[pick]
            if norm == "l2":
                step = w * view_as_images((gap + 1e-4) / dual**2, w)
            else:
                step = w.sign() * view_as_images((gap + 1e-4) / dual, w)
            if max_step is not None:
                step = step * view_as_images((max_step / batch_norm(step, norm).clamp_min(1e-30)).clamp(max=1), step)
            r_tot[sel] = r_tot[sel] + step
            x_adv[sel] = (x[sel] + (1 + overshoot) * r_tot[sel]).clamp(0, 1)
    return torch.where(view_as_images(found, x), x_adv, x)


SCHEMAS = {"deepfool": schema_of(deepfool, "deepfool")}
