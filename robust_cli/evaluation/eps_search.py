"""Per-sample adversarial distance of a budget (eps-bounded) attack: a batched search over eps.

A budget attack answers "is there an adversarial within eps?"; its distance for an image is the smallest eps
at which it succeeds (the adversarial distance whose error curve Finlay et al., "Improved robustness to
adversarial examples using Lipschitz regularization of the loss", §4, Definition 4.1, plot). Every sample of
a batch carries its own eps (a ``[B]`` tensor) and the whole batch is attacked at once at each search step,
so there is no per-sample Python loop. The search runs over ``[0, hi]`` with ``hi`` the largest
perturbation the box ``[0,1]`` allows, so a sample the attack cannot break at ``hi`` is a failure:

- ``bisection`` (:func:`search_eps`): ``hi`` first, then ``steps`` halvings; resolution ``hi / 2**steps``.
  Assumes success is monotone in eps (true for exact attacks on linear models; a random start breaks it a
  little).
- ``grid``: ``steps`` equally spaced eps in ``(0, hi]``; resolution ``hi / steps``. Needs no monotonicity
  and observes it: a sample that succeeds at some eps and fails at a larger one is reported.
- ``adaptive`` (the default of ``robust eval``, :mod:`robust_cli.evaluation.adaptive_search`): per image to a
  relative tolerance ``rtol`` of the distance (or an absolute ``eps_tol``), the batch shrinking to the
  unresolved images, warm-started, with the minimal-norm attacks' distances as first upper brackets;
  ``steps`` caps its rounds. Its resolution is the achieved ``hi - lo`` per image.

The attack runs on the counting model (its cost), the search's own success tests on the bare model (not its
cost). Every success is re-verified (misclassified by the bare model, within the eps it was asked for); the
caller re-verifies what comes back once more (clipped, fp32), and the distance it reports is the size of
that image, which is at most the eps it was found at.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robust_cli.attacks.contract import frozen_eval
from robust_cli.attacks.geometry import as_batch_eps, batch_norm, view_as_images
from robust_cli.attacks.losses import is_adversarial


METHODS = ("adaptive", "bisection", "grid")


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


def attack_at(
    attack: Callable[..., torch.Tensor],
    attack_model: nn.Module,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    eps: torch.Tensor,
    params: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One search step: ``(success [B] bool, x_adv [B,C,H,W] in [0,1])`` of the attack at eps ``[B]``.

    The attack runs on ``attack_model``; a success counts only where the bare ``model`` misclassifies the
    (clipped) output and the output is within its eps (re-verified, never trusted). ``params["targeted"]``:
    success is the prediction of the target ``y``.
    """
    x_adv = attack(attack_model, x, y, norm=norm, eps=eps, **params).detach().clamp(0, 1)
    with torch.no_grad(), frozen_eval(model):
        ok = is_adversarial(model(x_adv), y, bool(params.get("targeted", False)))
    return ok & (batch_norm(x_adv - x, norm) <= eps * (1 + 1e-6)), x_adv


def search_eps(
    attack: Callable[..., torch.Tensor],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    lo: float | torch.Tensor,
    hi: float | torch.Tensor,
    steps: int,
    params: dict[str, Any] | None = None,
    *,
    attack_model: nn.Module | None = None,
    return_adv: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-sample adversarial distance of a budget attack by batched bisection over ``eps``.

    Every round calls ``attack(attack_model, x, y, norm=norm, eps=mid, **params)`` once on the whole batch
    with a per-sample ``mid`` ``[B]`` and tests the result on ``model`` (:func:`attack_at`). The bracket
    ``[lo, hi]`` shrinks to the succeeding half per sample, so after ``steps`` rounds
    ``hi - lo = (hi0 - lo0) / 2^steps``.

    Args:
        attack: a function registered with ``budget=True``.
        model: the bare model, for the success tests (``[B,C,H,W]`` in [0,1] -> logits ``[B,K]``).
        x: ``[B,C,H,W]`` in [0,1]; y: ``[B]`` labels (targets when ``params["targeted"]``).
        norm: the attack's norm.
        lo, hi: float or ``[B]`` starting bracket; ``hi`` is tried first and samples where it fails get inf.
        steps: bisection rounds after that first try (``steps + 1`` attack calls in all).
        params: the attack's own options (a dict, so its ``steps`` cannot clash with this one).
        attack_model: the model handed to the attack (a counting wrapper of ``model``); default ``model``.
        return_adv: also return the adversarial images ``[B,C,H,W]`` found at the returned eps (``x`` where
            none; the distance to report is then ``batch_norm(x_adv - x)``, which is at most ``dist``).

    Returns:
        ``[B]`` distances: 0 where ``x`` is already misclassified, the smallest eps at which the attack
        succeeded otherwise, ``inf`` where it failed even at ``hi``.
    """
    params = dict(params or {})
    attack_model = model if attack_model is None else attack_model
    lo_t, hi_t = as_batch_eps(lo, x).clone(), as_batch_eps(hi, x).clone()
    with torch.no_grad(), frozen_eval(model):
        clean = is_adversarial(model(x), y, bool(params.get("targeted", False)))
    found, best = attack_at(attack, attack_model, model, x, y, norm, hi_t, params)
    for _ in range(steps):
        mid = (lo_t + hi_t) / 2
        ok, x_adv = attack_at(attack, attack_model, model, x, y, norm, mid, params)
        hi_t = torch.where(ok, mid, hi_t)
        lo_t = torch.where(ok, lo_t, mid)
        best = torch.where(view_as_images(ok, x), x_adv, best)
    dist = torch.where(found, hi_t, torch.full_like(hi_t, float("inf")))
    dist = torch.where(clean, torch.zeros_like(dist), dist)
    best = torch.where(view_as_images(found & ~clean, x), best, x)
    return (dist, best) if return_adv else dist


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
    rtol: float = 0.01,
    eps_tol: float | None = None,
    upper: torch.Tensor | None = None,
) -> SearchResult:
    """Search eps per sample for the smallest adversarial of a budget attack.

    Args:
        attack: a budget attack, ``attack(model, x, y, norm=, eps=[B], **params) -> x_adv``.
        model: the bare model, for the search's success tests (``[B,C,H,W]`` -> logits).
        x: ``[B,C,H,W]`` clean images in [0,1], correctly classified (the caller filters); y: ``[B]``.
        norm: the attack's norm.
        params: the attack's own options (without ``eps``).
        method: ``bisection``, ``grid`` or ``adaptive``.
        steps: bisection halvings, grid points, or the adaptive search's rounds after its first bracket
            (``4 * steps`` rounds per image with probes, most of them probes: ``adaptive_search.probe_search``).
        attack_model: the model handed to the attack (a counting wrapper of ``model``); default ``model``.
        rtol, eps_tol: ``adaptive`` only: the relative or (where given) absolute tolerance per image.
        upper: ``adaptive`` only: ``[B]`` distances of earlier (minimal-norm) attacks, the first eps tried.

    Returns:
        A ``SearchResult``.
    """
    if method not in METHODS:
        raise ValueError(f"eps_search must be one of {METHODS}, got {method!r}")
    if steps < 1:
        raise ValueError(f"search_steps must be >= 1, got {steps}")
    params = dict(params or {})
    attack_model = model if attack_model is None else attack_model
    hi = box_radius(x, norm)
    if method == "adaptive":
        from robust_cli.evaluation.adaptive_search import adaptive_search

        try:
            takes = inspect.signature(attack).parameters
        except (TypeError, ValueError):
            takes = {}
        x_adv, eps, res = adaptive_search(attack, model, x, y, norm, params, hi0=hi, rtol=rtol, eps_tol=eps_tol,
                                          max_rounds=steps, upper=upper, attack_model=attack_model,
                                          warm_start="x_init" in takes,
                                          probe={"x_init", "early_stop", "probe", "stopped"} <= set(takes))
        return SearchResult(x_adv, eps, torch.zeros_like(eps, dtype=torch.bool), res)
    if method == "bisection":
        eps, x_adv = search_eps(attack, model, x, y, norm, 0.0, hi, steps, params, attack_model=attack_model,
                                return_adv=True)
        return SearchResult(x_adv, eps, torch.zeros_like(eps, dtype=torch.bool), hi / 2**steps)

    best = x.clone()
    found = torch.full_like(hi, float("inf"))
    max_fail = torch.full_like(hi, -1.0)  # the largest eps with an observed failure
    for k in range(1, steps + 1):
        eps = hi * (k / steps)
        ok, adv = attack_at(attack, attack_model, model, x, y, norm, eps, params)
        first = ok & torch.isinf(found)
        best = torch.where(view_as_images(first, adv), adv, best)
        found = torch.where(first, eps, found)
        max_fail = torch.where(ok, max_fail, eps)
    return SearchResult(best, found, torch.isfinite(found) & (max_fail > found), hi / steps)
