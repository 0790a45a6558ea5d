"""``minimal``: the per-image worst case over a strong set of attacks, each started from the running best.

For the chosen norm the members (``<norm>_attacks``, names of registered attacks) run in order on the same
images. Each member that takes ``x_init`` starts from the best adversarial found so far (Brendel & Bethge
2019, "Accurate, reliable and fast robustness evaluation", §3, start from any adversarial and refine it);
each result is re-checked with the model and the smallest misclassified point per image is kept. The
returned image is thus never larger than any member's, per image: the ensemble evaluation of Croce & Hein
(2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks",
§4), read as a minimal-norm attack.

Members are resolved by name when the attack runs (``robust_cli.attacks.list_attacks()``), so attacks added
later (``fmn``, ``fab``, ``cw``, ``ddn``, ``alma``, ``ead``) take part as soon as they are registered; a name
that is not registered, or whose attack does not support the norm, is skipped with a log line. A budget
(eps-bounded) member gets a per-image bisection of eps on ``[0, running best]`` (``search_steps`` rounds; the
box radius where nothing was found yet), its successes re-checked within their eps, as the evaluation's eps
search does.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Annotated

import torch
from torch import nn

from robust_cli.attacks.best import Best, perturbation_size
from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.schema import Range, schema_of

log = logging.getLogger(__name__)


def _budget_member(fn, model, x, y, norm: str, best: Best, search_steps: int) -> None:
    """Bisection of a budget attack's eps per image, offering every verified success to ``best``."""
    radius = torch.maximum(x, 1 - x)
    box = float(x[0].numel()) if norm == "l0" else None
    hi = torch.where(best.found, best.size, torch.as_tensor(box) if box is not None else
                     perturbation_size(radius, torch.zeros_like(x), norm).double())
    lo = torch.zeros_like(hi)
    for _ in range(search_steps):
        mid = (lo + hi) / 2
        cand = fn(model, x, y, norm=norm, eps=mid.to(x.dtype)).detach().clamp(0, 1)
        adversarial = best.check(model, cand, y)
        ok = adversarial & (perturbation_size(cand, x, norm).double() <= mid * (1 + 1e-6))
        hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid)


@register_attack(norms=("l0", "l1", "l2", "linf"), budget=False)
def minimal(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    x_init: torch.Tensor | None = None,
    l0_attacks: Sequence[str] = ("sigma_zero", "pdpgd", "jsma", "sparsefool", "fmn", "bb"),
    l1_attacks: Sequence[str] = ("sparsefool", "fmn", "ead", "alma", "fab", "pdpgd", "bb"),
    l2_attacks: Sequence[str] = ("deepfool", "ddn", "fmn", "alma", "fab", "cw", "pdpgd", "bb"),
    linf_attacks: Sequence[str] = ("deepfool", "fab", "fmn", "pdpgd", "bb"),
    search_steps: Annotated[int, Range(ge=1)] = 10,
) -> torch.Tensor:
    """The per-image smallest adversarial over the members of ``norm`` on ``x`` ``[B,C,H,W]`` in [0,1].

    Args:
        x_init: ``[B,C,H,W]`` or None, a starting adversarial per image (kept when misclassified, and handed
            to the first member that takes one).
        l0_attacks, l1_attacks, l2_attacks, linf_attacks: the members per norm, run in this order with their
            own defaults (cheap ones first, so that the refining ones start from a good point).
        search_steps: bisection rounds of a budget member's eps.

    Returns:
        ``[B,C,H,W]`` in [0,1]: per image the smallest misclassified point of any member (or ``x_init``),
        ``x`` itself where none was found.
    """
    from robust_cli.attacks import list_attacks

    names = {"l0": l0_attacks, "l1": l1_attacks, "l2": l2_attacks, "linf": linf_attacks}[norm]
    registry = list_attacks()
    x = x.detach()
    with frozen_eval(model):
        best = Best(x, norm)
        best.start(model, y, x_init)
        for name in names:
            fn = registry.get(name)
            if fn is None or name == "minimal" or norm not in fn.norms:
                log.info("minimal: skipping %s (%s)", name, "not registered" if fn is None else
                         "the ensemble itself" if name == "minimal" else f"no {norm}")
                continue
            if fn.budget:
                _budget_member(fn, model, x, y, norm, best, search_steps)
                continue
            start = {"x_init": best.x_adv.clone()} if "x_init" in inspect.signature(fn).parameters else {}
            best.check(model, fn(model, x, y, norm=norm, **start), y)
    return best.x_adv


SCHEMAS = {"minimal": schema_of(minimal, "minimal")}
