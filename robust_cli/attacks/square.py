"""Square Attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search", §3, Algorithms 1-3), linf and l2: score-based, no gradients.

Random search on the margin loss ``L(x) = z_y(x) - max_{j != y} z_j(x)`` (Algorithm 1): at each iteration a
square window of side ``s = max(1, round(sqrt(p_i h w)))`` at a random position gets a new perturbation, and
the candidate is kept if ``L`` decreased; an image whose margin is negative (misclassified) stops. One query
per iteration per active image, ``n_queries`` in all (the first one is the initialisation).

- linf (Algorithm 2, §3.1): the start is vertical stripes ``±eps`` per column and channel; the window is
  set to ``±eps`` per channel (a vertex of the ball).
- l2 (Algorithm 3, §3.2): the start is a grid of squares, each a centred pattern ``eta`` (nested squares of
  weight ``1/(k+1)^2``) with a random sign per channel, scaled to norm eps. An update moves the mass of a
  second window ``W2`` and the unused budget ``eps^2 - ||delta||^2`` into the window ``W1``: per channel
  ``delta_W2 <- 0`` and ``delta_W1 <- delta_W1 + lambda rho eta`` with a random sign ``rho`` and the
  ``lambda >= 0`` that makes ``||delta_W1||^2`` equal to that mass.

The fraction ``p_i`` follows the paper's schedule: ``p_init`` halved at iterations 10, 50, 200, 500, 1000,
2000, 4000, 6000, 8000 of a 10,000-query run, rescaled to ``n_queries``. The box is kept by clipping
``x + delta`` (which only shrinks the perturbation). Returns per image the point of smallest margin (the
evaluation re-verifies it).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import nn

from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.geometry import as_batch_eps, batch_norm, enforce_budget, view_as_images
from robust_cli.attacks.losses import margin
from robust_cli.schema import Range, schema_of

_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(p_init: float, i: int, n_queries: int) -> float:
    """The window fraction ``p_i`` at iteration ``i`` of ``n_queries`` (§3, the schedule of the experiments)."""
    it = int(i / n_queries * 10000)
    return p_init / 2 ** sum(it > h for h in _HALVINGS)


def window_mask(b: int, h: int, w: int, s: int, gen: torch.Generator, device) -> torch.Tensor:
    """``[b,1,h,w]`` bool: one ``s x s`` window per image at a uniformly random position."""
    top = torch.randint(0, h - s + 1, (b,), generator=gen).to(device)
    left = torch.randint(0, w - s + 1, (b,), generator=gen).to(device)
    rows = torch.arange(h, device=device)[None, :]
    cols = torch.arange(w, device=device)[None, :]
    r = (rows >= top[:, None]) & (rows < top[:, None] + s)
    c = (cols >= left[:, None]) & (cols < left[:, None] + s)
    return (r[:, :, None] & c[:, None, :])[:, None]


def centred_pattern(mask: torch.Tensor) -> torch.Tensor:
    """``[b,1,h,w]``: inside each square window of ``mask`` the pattern ``eta`` of nested centred squares,
    ``sum_{k >= ring} 1/(k+1)^2`` with ``ring`` the Chebyshev distance to the centre (0 outside)."""
    b, _, h, w = mask.shape
    m = mask[:, 0]
    s = int(m[0].any(1).sum())
    rows, cols = m.any(2).float(), m.any(1).float()
    top = rows.argmax(1).float()
    left = cols.argmax(1).float()
    centre = (s - 1) / 2
    ri = (torch.arange(h, device=mask.device)[None, :] - top[:, None] - centre).abs()
    ci = (torch.arange(w, device=mask.device)[None, :] - left[:, None] - centre).abs()
    ring = torch.maximum(ri[:, :, None], ci[:, None, :]).floor()
    k_max = math.ceil(s / 2)
    weights = torch.tensor([sum(1 / (k + 1) ** 2 for k in range(j, k_max)) for j in range(k_max + 1)],
                           device=mask.device)
    eta = weights[ring.long().clamp_max(k_max)]
    return torch.where(m, eta, torch.zeros_like(eta))[:, None]


def _signs(shape, gen, device) -> torch.Tensor:
    return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).float().to(device)


def _init_l2(x: torch.Tensor, eps: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The l2 start: a grid of ``eta`` squares of side ``max(1, h // 5)`` with random signs, norm ``eps``."""
    b, c, h, w = x.shape
    s = max(1, h // 5)
    delta = torch.zeros_like(x)
    for top in range(0, h - s + 1, s):
        for left in range(0, w - s + 1, s):
            m = torch.zeros(b, 1, h, w, dtype=torch.bool, device=x.device)
            m[:, :, top:top + s, left:left + s] = True
            delta = delta + centred_pattern(m) * _signs((b, c, 1, 1), gen, x.device)
    delta = delta / view_as_images(batch_norm(delta, "l2").clamp_min(1e-12), x) * view_as_images(eps, x)
    return (x + delta).clamp(0, 1) - x


def _update_l2(delta: torch.Tensor, eps: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
               gen: torch.Generator) -> torch.Tensor:
    """Algorithm 3's move: the mass of ``W2`` and the unused budget go into ``W1`` (module docstring)."""
    b, c = delta.shape[:2]
    only2 = w2 & ~w1
    unused = (eps**2 - batch_norm(delta, "l2") ** 2).clamp_min(0)
    d1 = torch.where(w1, delta, torch.zeros_like(delta))
    m1 = d1.pow(2).flatten(2).sum(2)  # [b, c]
    m2 = torch.where(only2, delta, torch.zeros_like(delta)).pow(2).flatten(2).sum(2)
    target = m1 + m2 + unused[:, None] / c
    eta = centred_pattern(w1) * _signs((b, c, 1, 1), gen, delta.device)
    ee = eta.pow(2).flatten(2).sum(2).clamp_min(1e-12)
    de = (d1 * eta).flatten(2).sum(2)
    # lambda >= 0 with ||d1 + lambda eta||^2 = target: lambda^2 ee + 2 lambda de + m1 - target = 0
    lam = (-de + (de**2 + ee * (target - m1).clamp_min(0)).sqrt()) / ee
    new = d1 + lam[:, :, None, None] * eta
    delta = torch.where(w1, new, torch.where(only2, torch.zeros_like(delta), delta))
    n = batch_norm(delta, "l2")
    return delta * view_as_images((eps / n.clamp_min(1e-12)).clamp_max(1), delta)


@register_attack(norms=("linf", "l2"), budget=True)
def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float | torch.Tensor,
    n_queries: Annotated[int, Range(ge=1)] = 5000,
    p_init: Annotated[float, Range(gt=0, le=1)] = 0.8,
    seed: int = 0,
) -> torch.Tensor:
    """Square Attack on ``x`` ``[B,C,H,W]`` in [0,1], true labels ``y`` ``[B]``, ``eps`` float or ``[B]``.

    Args:
        n_queries: model queries per image (AutoAttack: 5000); an image stops when misclassified.
        p_init: the initial window fraction of the image (paper: 0.8 linf, 0.8 in AutoAttack's l2 too).
        seed: the private generator of windows and signs.

    Returns:
        ``[B,C,H,W]`` in [0,1] within eps: per image the queried point of smallest margin.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"square supports linf and l2, got norm={norm!r}")
    eps_t = as_batch_eps(eps, x)
    e = view_as_images(eps_t, x)
    x = x.detach()
    b, c, h, w = x.shape
    gen = torch.Generator().manual_seed(seed)
    with frozen_eval(model), torch.no_grad():
        if norm == "linf":
            delta = (x + e * _signs((b, c, 1, w), gen, x.device)).clamp(0, 1) - x
        else:
            delta = _init_l2(x, eps_t, gen)
        loss = margin(model(x + delta), y)
        for i in range(1, n_queries):
            active = (loss > 0).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            xa, da, ea = x[active], delta[active], eps_t[active]
            s = max(1, min(h, w, round(math.sqrt(p_schedule(p_init, i, n_queries) * h * w))))
            w1 = window_mask(len(active), h, w, s, gen, x.device)
            if norm == "linf":
                vertex = view_as_images(ea, xa) * _signs((len(active), c, 1, 1), gen, x.device)
                cand = torch.where(w1, vertex, da)
            else:
                w2 = window_mask(len(active), h, w, s, gen, x.device)
                cand = _update_l2(da, ea, w1, w2, gen)
            cand = (xa + cand).clamp(0, 1) - xa
            new_loss = margin(model(xa + cand), y[active])
            better = new_loss < loss[active]
            delta[active] = torch.where(view_as_images(better, cand), cand, da)
            loss[active] = torch.where(better, new_loss, loss[active])
    return enforce_budget(x + delta, x, eps_t, norm)


SCHEMAS = {"square": schema_of(square, "square")}
