"""AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", §5): a fixed ensemble of attacks run as a cascade at one eps.

Each attack of the ensemble attacks only the images every earlier attack failed on; an image one of them
breaks (the model misclassifies the returned point, re-classified here, and the point is within eps) is
never attacked again. The robust accuracy at eps is the fraction of images no attack broke.

Versions (the published ones):

- ``standard``: APGD-CE (1 run), APGD-T (9 target classes, 1 run each), FAB-T (9 targets), Square (5000
  queries); in l1 (Square has none) APGD-CE, APGD-T and FAB-T;
- ``plus``: APGD-CE and APGD-DLR (5 runs each), FAB (5 runs), Square, APGD-T, FAB-T;
- ``rand`` (randomised defenses): APGD-CE and APGD-DLR with the gradient and value averaged over 20 passes
  (EOT).

Minimal-norm members (FAB, FAB-T) return their smallest adversarial; it counts where it lies within eps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import torch
from torch import nn

from robust_cli.attacks.apgd import Deepest, apgd, apgd_t
from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.fab import fab, fab_t
from robust_cli.attacks.geometry import as_batch_eps, batch_norm, enforce_budget
from robust_cli.attacks.losses import is_adversarial
from robust_cli.attacks.square import square
from robust_cli.schema import Range, schema_of

log = logging.getLogger(__name__)

#: (name, attack, options) of one member of an ensemble
Member = tuple[str, Callable[..., torch.Tensor], dict[str, Any]]


def ensemble(version: str, norm: str, *, steps: int = 100, n_queries: int = 5000, restarts: int | None = None,
             target_classes: int = 9, seed: int = 0, num_classes: int = 10) -> list[Member]:
    """The members of AutoAttack ``version`` in ``norm``, in cascade order. ``restarts``: runs of the
    multi-run members (None: the version's, 1 for ``standard``/``rand``, 5 for ``plus``). Members the
    ``num_classes`` cannot support are left out (DLR needs 3 classes, the targeted DLR 4)."""
    common = {"steps": steps, "seed": seed}
    if version == "standard":
        runs = 1 if restarts is None else restarts
        members: list[Member] = [
            ("apgd-ce", apgd, {**common, "loss": "ce", "restarts": runs}),
            ("apgd-t", apgd_t, {**common, "target_classes": target_classes, "restarts": runs}),
            ("fab-t", fab_t, {**common, "target_classes": target_classes, "restarts": runs}),
            ("square", square, {"n_queries": n_queries, "seed": seed}),
        ]
    elif version == "plus":
        runs = 5 if restarts is None else restarts
        members = [
            ("apgd-ce", apgd, {**common, "loss": "ce", "restarts": runs}),
            ("apgd-dlr", apgd, {**common, "loss": "dlr", "restarts": runs}),
            ("fab", fab, {**common, "restarts": runs}),
            ("square", square, {"n_queries": n_queries, "seed": seed}),
            ("apgd-t", apgd_t, {**common, "target_classes": target_classes, "restarts": 1}),
            ("fab-t", fab_t, {**common, "target_classes": target_classes, "restarts": 1}),
        ]
    elif version == "rand":
        runs = 1 if restarts is None else restarts
        members = [
            ("apgd-ce", apgd, {**common, "loss": "ce", "restarts": runs, "eot": 20}),
            ("apgd-dlr", apgd, {**common, "loss": "dlr", "restarts": runs, "eot": 20}),
        ]
    else:
        raise ValueError(f"unknown AutoAttack version {version!r}; expected standard, plus or rand")
    need = {"apgd-dlr": 3, "apgd-t": 4}
    return [m for m in members if norm in m[1].norms and num_classes >= need.get(m[0], 2)]


def cascade(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float | torch.Tensor,
            members: Sequence[Member]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``members`` in order, each on the images still robust; ``(x_adv [B,C,H,W], robust [B] bool)``.

    ``x`` ``[B,C,H,W]`` in [0,1], ``y`` ``[B]`` true labels, ``eps`` float or ``[B]``. An image counts as
    broken only where the model misclassifies the member's (clipped) point and its size is within eps;
    ``x_adv`` holds that point, and for a robust image the point of smallest margin any member returned.
    Images the model misclassifies to begin with are broken before any member runs.
    """
    eps_t = as_batch_eps(eps, x)
    x = x.detach()
    best = Deepest(x, y)
    with torch.no_grad(), frozen_eval(model):
        logits = model(x)
    best.offer(x, logits)
    robust = ~is_adversarial(logits, y)
    for name, attack, options in members:
        rows = robust.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        xs, ys, es = x[rows], y[rows], eps_t[rows]
        kwargs = {"eps": es} if attack.budget else {}
        out = attack(model, xs, ys, norm=norm, **kwargs, **options).detach().clamp(0, 1)
        with torch.no_grad(), frozen_eval(model):
            logits = model(out)
        within = batch_norm(out - xs, norm) <= es
        broken = is_adversarial(logits, ys) & within
        # a minimal-norm member's point outside eps is no candidate for the nearest miss either
        best.offer(out[within], logits[within], rows[within])
        robust[rows[broken]] = False
        log.debug("autoattack %s: %d of %d attacked images broken", name, int(broken.sum()), len(rows))
    return enforce_budget(best.x, x, eps_t, norm), robust


@register_attack(norms=("linf", "l2", "l1"), budget=True)
def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float | torch.Tensor,
    version: Literal["standard", "plus", "rand"] = "standard",
    steps: Annotated[int, Range(ge=1)] = 100,
    n_queries: Annotated[int, Range(ge=1)] = 5000,
    restarts: Annotated[int, Range(ge=1)] | None = None,
    target_classes: Annotated[int, Range(ge=1)] = 9,
    seed: int = 0,
) -> torch.Tensor:
    """AutoAttack ``version`` at ``eps`` on ``x`` ``[B,C,H,W]`` in [0,1], labels ``y`` ``[B]``.

    Args:
        version: ``standard``, ``plus`` or ``rand`` (module docstring).
        steps: iterations of the APGD and FAB members (published: 100).
        n_queries: Square's queries per image (published: 5000).
        restarts: runs of the multi-run members; None: the version's (1, or 5 for ``plus``).
        target_classes: the targets of APGD-T and FAB-T (published: 9).
        seed: every member's private generator.

    Returns:
        ``[B,C,H,W]`` in [0,1] within eps: the breaking point where a member broke the image, else its
        nearest miss.
    """
    with torch.no_grad(), frozen_eval(model):
        num_classes = int(model(x[:1]).shape[1])
    members = ensemble(version, norm, steps=steps, n_queries=n_queries, restarts=restarts,
                       target_classes=target_classes, seed=seed, num_classes=num_classes)
    return cascade(model, x, y, norm=norm, eps=eps, members=members)[0]


SCHEMAS = {"autoattack": schema_of(autoattack, "autoattack")}
