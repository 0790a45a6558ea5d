"""``minimal``: the per-image worst case over a strong set of attacks, each started from the running best.

For the chosen norm the members (``<norm>_attacks``, names of registered attacks) run in order on the same
images. Each member that takes ``x_init`` starts from the best adversarial found so far (Brendel & Bethge
2019, "Accurate, reliable and fast robustness evaluation", §3, start from any adversarial and refine it);
each result is re-checked with the model and the smallest misclassified point per image is kept. A
refiner (``refiners``: B&B, which follows the boundary from its start and so ends in that start's basin)
instead runs from ``refine_starts`` points per image, batched: the running best, then the best member
points of other classes, then other distinct ones (``_ranked_starts``). The
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
from robust_cli.attacks.geometry import view_as_images
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


def _ranked_starts(model: nn.Module, best: Best, results: list[tuple[torch.Tensor, torch.Tensor]],
                   k: int) -> torch.Tensor:
    """``[k*B,C,H,W]``: per image ``k`` starts for a refiner, start ``i`` of image ``b`` at row ``i*B + b``.

    Start 0 is the running best. Each further start is the smallest member point (``results``: ``[B,C,H,W]``
    points with ``[B]`` sizes, ``inf`` where not adversarial) that the model puts in a class none of the
    starts so far is in, else the smallest one not yet taken whose size differs from every taken one (a tie
    is the same point, or one as good); the clean image where none is left (the refiner then finds its own
    start). Why classes first: a boundary-following refiner stays on the boundary of the class it starts in,
    and where the per-image minimum over every peer beat ours by most it was another class (digits l1 image
    84: FAB's class-2 point 0.90 against our class-8 0.98; BENCHMARKS.md, issue 10).
    """
    points = torch.stack([best.x_adv] + [p for p, _ in results])  # [N, B, C, H, W]
    sizes = torch.stack([best.size] + [d for _, d in results])  # [N, B]
    with torch.no_grad():
        classes = model(points.flatten(0, 1)).argmax(1).view(sizes.shape)
    n, bsz = sizes.shape
    rank = torch.argsort(torch.argsort(sizes, dim=0, stable=True), dim=0, stable=True).double()  # [N, B] 0 = smallest
    left = torch.isfinite(sizes)
    left[0] = False  # start 0
    taken_class = classes[:1].clone()  # [t, B]
    taken_size = sizes[:1].clone()
    picks = [best.x_adv]
    cols = torch.arange(bsz, device=sizes.device)
    for _ in range(1, k):
        new_class = (classes[:, None, :] != taken_class[None]).all(1)  # [N, B]
        new_size = (((sizes[:, None, :] - taken_size[None]).abs() > taken_size[None] * 1e-9)
                    | ~torch.isfinite(taken_size[None])).all(1)
        score = torch.where(left & new_class & new_size, rank,
                            torch.where(left & new_size, rank + n, torch.full_like(rank, torch.inf)))
        i = score.argmin(0)  # [B]
        ok = torch.isfinite(score.gather(0, i[None]).squeeze(0))
        picks.append(torch.where(view_as_images(ok, best.x0), points[i, cols], best.x0))
        left[i, cols] = False
        taken_class = torch.cat([taken_class, torch.where(ok, classes[i, cols], -1)[None]])
        taken_size = torch.cat([taken_size, torch.where(ok, sizes[i, cols], torch.inf)[None]])
    return torch.cat(picks)


@register_attack(norms=("l0", "l1", "l2", "linf"), budget=False)
def minimal(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    x_init: torch.Tensor | None = None,
    l0_attacks: Sequence[str] = ("sigma_zero", "pdpgd", "jsma", "sparsefool", "fmn", "bb"),
    l1_attacks: Sequence[str] = ("sparsefool", "fmn", "ead", "alma", "fab", "fab_t", "pdpgd", "bb"),
    l2_attacks: Sequence[str] = ("deepfool", "ddn", "fmn", "alma", "fab", "cw", "pdpgd", "bb"),
    linf_attacks: Sequence[str] = ("deepfool", "fab", "fmn", "pdpgd", "bb"),
    search_steps: Annotated[int, Range(ge=1)] = 10,
    refiners: Sequence[str] = ("bb",),
    refine_starts: Annotated[int, Range(ge=1)] = 3,
) -> torch.Tensor:
    """The per-image smallest adversarial over the members of ``norm`` on ``x`` ``[B,C,H,W]`` in [0,1].

    Args:
        x_init: ``[B,C,H,W]`` or None, a starting adversarial per image (kept when misclassified, and handed
            to the first member that takes one).
        l0_attacks, l1_attacks, l2_attacks, linf_attacks: the members per norm, run in this order with their
            own defaults (cheap ones first, so that the refining ones start from a good point). l1 runs
            ``fab_t`` besides ``fab``: its runs against each likely class reach classes the untargeted run
            misses (digits LeNet-5 image 84: class 2 at 0.90 where FAB and the rest found class 8 at 0.98).
        search_steps: bisection rounds of a budget member's eps.
        refiners: members that refine a start (B&B) and run, batched, from ``refine_starts`` starts per image.
        refine_starts: the running best plus the best member results of other classes, then the next-best
            distinct ones (``_ranked_starts``; the clean image where fewer exist, i.e. the refiner's own
            start). A boundary-following refiner ends in the basin of its start (BENCHMARKS.md, issue 10).

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
        results: list[tuple[torch.Tensor, torch.Tensor]] = []  # each non-budget member's point and size
        for name in names:
            fn = registry.get(name)
            if fn is None or name == "minimal" or norm not in fn.norms:
                log.info("minimal: skipping %s (%s)", name, "not registered" if fn is None else
                         "the ensemble itself" if name == "minimal" else f"no {norm}")
                continue
            if fn.budget:
                _budget_member(fn, model, x, y, norm, best, search_steps)
                continue
            takes_start = "x_init" in inspect.signature(fn).parameters
            if takes_start and name in refiners and refine_starts > 1:
                starts = _ranked_starts(model, best, results, refine_starts)  # [k*B, C, H, W]
                out = fn(model, x.repeat(refine_starts, 1, 1, 1), y.repeat(refine_starts), norm=norm,
                         x_init=starts)
                for chunk in out.split(x.shape[0]):
                    best.check(model, chunk, y)
                continue
            start = {"x_init": best.x_adv.clone()} if takes_start else {}
            out = fn(model, x, y, norm=norm, **start).detach().clamp(0, 1)
            results.append((out, torch.where(best.check(model, out, y),
                                             perturbation_size(out, x, norm).double(), torch.inf)))
    return best.x_adv


SCHEMAS = {"minimal": schema_of(minimal, "minimal")}
