"""PDPGD: primal-dual proximal gradient descent, a minimal-norm attack (Matyasko thesis Ch.5, §5.3, Algorithm 3).

The primal player takes an Adam step on the constraint surrogate ``g`` alone, then the proximal operator of
``lam * step * ||.||`` (eq 5.10) in Adam's diagonal metric, then projects onto the box
(:class:`robust_cli.attacks.primal_steps.ProximalStep`; the operators of eqs 5.11-5.16 are in
:mod:`robust_cli.attacks.proximal`). The thesis solves that prox inexactly, by a few proximal-gradient inner
iterations (proximal Adam); here it is exact where a closed form exists (l2: Newton on its secular equation;
linf: Newton on its clipping level; l1, l0: elementwise, or per pixel for l0 on colour images), which is both
cheaper and, in l2 and colour l0, stronger (``PROXIMAL_EXACT_DEFAULT``).
The dual player, restarts, the lr grid, fine-tuning and the warm start from ``x_init`` are the engine's
(:mod:`robust_cli.attacks.primal_dual`), shared with PDGD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import torch
from torch import nn

from robust_cli.attacks.contract import register_attack
from robust_cli.attacks.primal_dual import PrimalDualOptions, primal_dual
from robust_cli.attacks.primal_steps import ProximalStep
from robust_cli.schema import Range, schema_of


PROXIMAL_EXACT_DEFAULT = {"linf": True, "l2": True, "l1": False, "l0": True}
"""``proximal_exact`` where none is given, per norm: the exact prox in Adam's metric
(``proximal.in_diagonal_metric``) or the thesis's inexact proximal Adam iterations (``proximal_steps``,
``proximal_tol``). Single runs of 500 steps at the default lr, mean l2 / linf over the correctly classified
images, iterations -> exact (BENCHMARKS.md, issue 16, session 13): l2 on the MNIST LeNet-5 0.5856 -> 0.5488
(images 0-99) and 0.6442 -> 0.6068 (100-199), smaller on 95 and 91 of 99 images; on the digits LeNet-5 0.4747 ->
0.4675 (images 0-199); linf (at lr 0.05, its default then) within the noise of a run on both (MNIST 0.0415 ->
0.0412, digits 0.0905 -> 0.0904) and 2x as fast on MNIST (a few Newton steps on the level instead of five
l1-ball projections). l1 keeps the iterations with the authors' lr 0.1:
mean / median l1 over the correctly classified images, against the exact prox at 0.5 (the earlier default) and
at 0.1 (issue 10, session 5): MNIST LeNet-5 (38 images) 3.8097 / 3.4116 and 3.6403 / 3.4150 -> 3.5689 /
3.2110; digits LeNet-5 (94) 1.1995 / 1.0977 and 1.2112 / 1.0946 -> 1.2130 / 1.0934. l0 takes the exact hard
threshold: elementwise on values and on one-channel images, by pixel (``prox_l0_group_diagonal``) on colour
images, where the iterations kept every pixel of small metric (session 14, a LeNet-5 on coloured MNIST, 255
test images, all found either way: mean changed pixels 179.3 -> 4.88, 1.7x as fast; ``l0_prox=l23``, which
iterates, 4.87 at 3.5x the time; adv-lib's PDPGD 64.5 with its l0 operator, 8.83 with its l2/3 one)."""


@dataclass
class PDPGDOptions(PrimalDualOptions):
    """Options of ``pdpgd``: the shared primal-dual ones (``PrimalDualOptions``) and the proximal step's.

    Attributes:
        optimizer: ``adam`` (proximal Adam) or ``sgd`` (plain proximal gradient).
        proximal_steps: inner iterations of the inexact proximal Adam step (thesis §5.4: 5) ...
        proximal_tol: ... stopped at a relative change below this (thesis: 1e-2).
        proximal_exact: True: the exact prox in Adam's metric, where it has a form here (l2, linf, l1, l0 on
            values or on pixels, l2/3 on values or on one-channel pixels); False: the thesis's proximal Adam
            iterations (``proximal_steps``, ``proximal_tol``); None: per norm, ``PROXIMAL_EXACT_DEFAULT`` (l1
            False, else True).
        l0_mode: l0 counts changed ``pixel`` s (all channels of a pixel together, eq 5.15) or ``element`` s.
        l0_prox: the l0 operator: ``l0`` (hard threshold, eq 5.14/5.16 exact), ``l23`` (the prox of
            ``|.|^(2/3)``, the authors' choice) or ``l0_max`` (eq 5.16 as printed).
    """

    optimizer: Literal["adam", "sgd"] = "adam"
    proximal_steps: Annotated[int, Range(ge=1)] = 5
    proximal_tol: float = 0.01
    proximal_exact: Optional[bool] = None
    l0_mode: Literal["pixel", "element"] = "pixel"
    l0_prox: Literal["l0", "l23", "l0_max"] = "l0"


@register_attack(norms=("linf", "l2", "l1", "l0"), budget=False)
def pdpgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, x_init: Optional[torch.Tensor] = None,
          **options) -> torch.Tensor:
    """Primal-dual proximal gradient descent (thesis Algorithm 3) for ``norm`` in linf, l2, l1, l0.

    Args:
        model: maps ``[B, C, H, W]`` in [0,1] to logits ``[B, K]``; its mode and parameters are untouched.
        x: ``[B, C, H, W]`` in [0,1]; y: ``[B]`` int64 true labels (targets when ``targeted``).
        x_init: ``[B, C, H, W]`` or None: starting adversarials (the best of earlier attacks); where one is
            misclassified the result is never larger, and one more run per lr starts from it (``primal_dual``).
        norm: the norm minimised; l0 counts pixels (``l0_mode="pixel"``) or values (``"element"``).
        **options: the fields of ``PDPGDOptions`` (an unknown one is a ``TypeError``).

    Returns:
        ``[B, C, H, W]`` in [0,1]: per sample the smallest-norm misclassified point over ``x_init`` and all
        runs; ``x`` itself where none was found and where ``x`` is already misclassified.
    """
    if norm not in pdpgd.norms:
        raise ValueError(f"pdpgd supports norms {pdpgd.norms}, got {norm!r}")
    o = PDPGDOptions(**options)
    exact = PROXIMAL_EXACT_DEFAULT[norm] if o.proximal_exact is None else o.proximal_exact
    primal = ProximalStep(norm, channels=x.shape[1], optimizer=o.optimizer, proximal_steps=o.proximal_steps,
                          proximal_tol=o.proximal_tol, proximal_exact=exact, l0_mode=o.l0_mode,
                          l0_prox=o.l0_prox)
    return primal_dual(model, x, y, norm=norm, options=o, primal=primal, x_init=x_init)


pdpgd.options = PDPGDOptions  # the schema (robust_cli.schema.options_of) reads the options from here

SCHEMAS = {"pdpgd": schema_of(pdpgd, "pdpgd")}
