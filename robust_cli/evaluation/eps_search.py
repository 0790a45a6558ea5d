"""Per-sample adversarial distance of a budget (eps-bounded) attack: a batched search over eps.

A budget attack answers "is there an adversarial within eps?"; its distance for an image is the smallest eps
at which it succeeds. Every sample of a batch carries its own eps (a ``[B]`` tensor) and the whole batch is
attacked at once at each search step, so there is no per-sample Python loop. The search runs over
``[0, hi]`` with ``hi`` the largest perturbation the box ``[0,1]`` allows, so a sample the attack cannot
break at ``hi`` is a failure:

- ``bisection``: ``robust_cli.attacks.base.search_eps`` (the attacks' own, reused): ``hi`` first, then
  ``steps`` halvings; resolution ``hi / 2**steps``. Assumes success is monotone in eps (true for exact
  attacks on linear models; a random start breaks it a little).
- ``grid``: ``steps`` equally spaced eps in ``(0, hi]``; resolution ``hi / steps``. Needs no monotonicity
  and observes it: a sample that succeeds at some eps and fails at a larger one is reported.

The attack runs on the counting model (its cost), the search's own success tests on the bare model (not its
cost). The caller re-verifies what comes back (clipped, fp32); the distance it reports is the size of that
image, which is at most the eps it was found at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robust_cli.attacks.base import batch_norm, search_eps, view_as_images


@dataclass
class SearchResult:
    """What the search found for a batch of ``B`` images.

    Attributes:
        x_adv: ``[B,C,H,W]`` in [0,1], the adversarial kept per sample (the input where none).
        eps: ``[B]`` the smallest eps at which the attack succeeded (``inf`` where never).
        non_monotone: ``[B]`` bool, success observed at some eps and failure at a larger one (grid only).
        resolution: ``[B]`` the eps step of the search: a distance is the attack's optimum up to this much.
    """

    x_adv: torch.Tensor
    eps: torch.Tensor
    non_monotone: torch.Tensor
    resolution: torch.Tensor


def box_radius(x: torch.Tensor, norm: str) -> torch.Tensor:
    """The largest perturbation size inside the box: ``||max(x, 1 - x)||`` per sample, ``[B]``.

    For l0 it is the number of values ``d`` (any value can be changed).
    """
    if norm == "l0":
        return torch.full((x.shape[0],), float(x[0].numel()), dtype=x.dtype, device=x.device)
    return batch_norm(torch.maximum(x, 1 - x), norm)


def search_distance(
    attack: Callable[..., torch.Tensor],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    params: dict[str, Any] | None = None,
    *,
    method: str = "bisection",
    steps: int = 10,
    attack_model: nn.Module | None = None,
) -> SearchResult:
    """Search eps per sample for the smallest adversarial of a budget attack.

    Args:
        attack: a budget attack, ``attack(model, x, y, norm=, eps=[B], **params) -> x_adv``.
        model: the bare model, for the search's success tests (``[B,C,H,W]`` -> logits).
        x: ``[B,C,H,W]`` clean images in [0,1], correctly classified (the caller filters); y: ``[B]``.
        norm: the attack's norm.
        params: the attack's own options (without ``eps``).
        method: ``bisection`` or ``grid``.
        steps: bisection halvings, or grid points.
        attack_model: the model handed to the attack (a counting wrapper of ``model``); default ``model``.

    Returns:
        A ``SearchResult``.
    """
    if method not in ("bisection", "grid"):
        raise ValueError(f"eps_search must be 'bisection' or 'grid', got {method!r}")
    if steps < 1:
        raise ValueError(f"search_steps must be >= 1, got {steps}")
    params = dict(params or {})
    attack_model = model if attack_model is None else attack_model
    hi = box_radius(x, norm)

    def run(_model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, **kwargs) -> torch.Tensor:
        return attack(attack_model, xs, ys, **kwargs).detach().clamp(0, 1)

    if method == "bisection":
        eps, x_adv = search_eps(run, model, x, y, norm, 0.0, hi, steps, params, return_adv=True)
        return SearchResult(x_adv, eps, torch.zeros_like(eps, dtype=torch.bool), hi / 2**steps)

    best = x.clone()
    found = torch.full_like(hi, float("inf"))
    max_fail = torch.full_like(hi, -1.0)  # the largest eps with an observed failure
    for k in range(1, steps + 1):
        eps = hi * (k / steps)
        adv = run(model, x, y, norm=norm, eps=eps, **params)
        with torch.no_grad():
            ok = model(adv).argmax(1) != y
        ok = ok & (batch_norm(adv - x, norm) <= eps * (1 + 1e-6))  # within its budget, as bisection demands
        first = ok & torch.isinf(found)
        best = torch.where(view_as_images(first, adv), adv, best)
        found = torch.where(first, eps, found)
        max_fail = torch.where(ok, max_fail, eps)
    return SearchResult(best, found, torch.isfinite(found) & (max_fail > found), hi / steps)
