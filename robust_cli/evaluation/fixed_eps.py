"""Budget attacks at fixed eps: robust accuracy at exactly the listed budgets, no search (``mode=fixed``).

The protocol of the robustness papers and of AutoAttack (Croce & Hein 2020, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks", §5): the attack runs once per
budget ``eps_1 < eps_2 < ...``, and an image is broken at ``eps_k`` when a verified adversarial lies within
``eps_k``. An adversarial found at ``eps_j`` is one at every ``eps_k >= eps_j`` too, so each budget attacks
only the images no smaller budget broke, and the per-image result is the size of the adversarial found at the
smallest breaking budget (``inf`` where none): ``robust accuracy(eps_k) = P[size > eps_k]``, the error curve
of Finlay et al. (Def. 4.1) read at ``eps_k``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from robust_cli.evaluation.eps_search import SearchResult, attack_at


def _at_most(eps: float, dtype: torch.dtype) -> torch.Tensor:
    """The largest ``dtype`` value ``<= eps``: ``float32(0.1) > 0.1``, and an adversarial of exactly that size
    would not count as within the budget 0.1 when the summary reads the curve at 0.1."""
    e = torch.tensor(eps, dtype=dtype)
    return torch.nextafter(e, torch.tensor(-1.0, dtype=dtype)) if float(e) > eps else e


def attack_at_budgets(
    attack: Callable[..., torch.Tensor],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    budgets: Sequence[float],
    params: dict[str, Any] | None = None,
    *,
    attack_model: nn.Module | None = None,
) -> SearchResult:
    """Run a budget attack at each of ``budgets`` (ascending) on the images not yet broken.

    Args:
        attack: a budget attack, ``attack(model, x, y, norm=, eps=[b], **params)``.
        model: the bare model, for the success tests; ``attack_model`` the one the attack runs on (counting).
        x: ``[B,C,H,W]`` correctly classified images in [0,1]; y: ``[B]`` labels.
        budgets: the eps to attack at.

    Returns:
        A ``SearchResult``: ``x_adv`` the verified adversarial of the smallest breaking budget (``x`` where
        none), ``eps`` that budget ``[B]`` in float64, the listed value itself (``inf`` where none): a float32
        copy of 0.3 is above 0.3, and would not read as broken at 0.3; resolution 0 (no search).
    """
    params = dict(params or {})
    attack_model = model if attack_model is None else attack_model
    best = x.clone()
    found = torch.full((x.shape[0],), float("inf"), dtype=torch.float64, device=x.device)
    for eps in sorted(float(e) for e in budgets):
        rows = torch.isinf(found).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        e = _at_most(eps, x.dtype).expand(rows.numel()).to(x.device)
        ok, adv = attack_at(attack, attack_model, model, x[rows], y[rows], norm, e, params)
        best[rows[ok]] = adv[ok]
        found[rows[ok]] = eps
    zeros = torch.zeros_like(found)
    return SearchResult(best, found, zeros.bool(), zeros)
