"""PDGD: primal-dual gradient descent, the l2 minimal-norm attack of thesis Ch.5 (Algorithm 2; SPEC.md §3).

The primal player takes Adam steps on the whole proxy-Lagrangian ``lam_1 ||r||_2 + lam_2 g(x + r)``
(eq 5.3 with the softplus surrogate ``g`` of the margin by default) and projects onto the box; the dual
player, the best-so-far bookkeeping, restarts, the lr grid and fine-tuning are those of PDPGD
(``robust_cli/attacks/pdpgd.py``), which runs the same engine with a proximal primal step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from robust_cli.attacks.contract import register_attack
from robust_cli.attacks.pdpgd import _attack, _run_options

DEFAULT_STEP_SIZE = 0.1  # from the thesis grid {0.01, 0.05, 0.1, 0.5, 1.0}; see BENCHMARKS.md


@dataclass
class PDGDConfig:
    """Options of ``attack=pdgd`` (thesis Ch.5 §5.4 defaults; SPEC.md §3). l2 only."""

    _target_: str = "robust_cli.attacks.pdgd.pdgd"
    name: str = "pdgd"
    steps: int = 500  # iterations per run; one forward and one backward pass each
    step_size: float | None = None  # Adam lr; None = DEFAULT_STEP_SIZE
    lr_grid: list[float] = field(default_factory=list)  # run every lr, keep the best per sample
    lr_final: float = 0.01  # lr decays to lr_final * its start over the run
    lr_decay: str = "linear"  # linear (thesis) | exponential (the authors' code)
    dual_ratio_init: float = 0.01  # lam_1 / lam_2 at the start
    dual_lr: float = 0.1
    dual_lr_final: float = 0.01
    dual_ema: float = 0.9
    dual_ratio_min: float = 1e-6
    loss: str = "softplus"  # softplus | hinge | squared_hinge | linear | exp
    loss_margin: float = 0.0
    restarts: int = 1  # run 0 from r = 0, the others from U[-init_range, init_range]
    init_range: float = 0.5
    finetune_steps: int = 0
    finetune_lr_factor: float = 0.1
    targeted: bool = False
    seed: int = 0


SCHEMAS = {"pdgd": PDGDConfig}


@register_attack(norms=("l2",), budget=False)
def pdgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str = "l2", steps: int = 500,
         step_size: float | None = None, lr_grid=(), lr_final: float = 0.01, lr_decay: str = "linear",
         dual_ratio_init: float = 0.01, dual_lr: float = 0.1, dual_lr_final: float = 0.01,
         dual_ema: float = 0.9, dual_ratio_min: float = 1e-6, loss: str = "softplus",
         loss_margin: float = 0.0, restarts: int = 1, init_range: float = 0.5, finetune_steps: int = 0,
         finetune_lr_factor: float = 0.1, targeted: bool = False, seed: int = 0) -> torch.Tensor:
    """Primal-dual gradient descent (thesis Algorithm 2) minimising the l2 norm.

    Args:
        model: maps ``[B, C, H, W]`` in [0,1] to logits ``[B, K]``; its mode and parameters are untouched.
        x: ``[B, C, H, W]`` in [0,1]; y: ``[B]`` int64 true labels (targets when ``targeted``).
        norm: must be ``"l2"``. The other options are those of ``PDGDConfig``.
    Returns:
        ``[B, C, H, W]`` in [0,1]: per sample the smallest-l2 misclassified iterate; ``x`` where none was
        found and where ``x`` is already misclassified.
    """
    if norm != "l2":
        raise ValueError(f"pdgd supports only norm l2, got {norm!r}")
    lrs = [float(v) for v in lr_grid] or [float(step_size if step_size is not None else DEFAULT_STEP_SIZE)]
    opts = _run_options(steps, lr_final, lr_decay, "adam", 5, 0.01, False, dual_ratio_init, dual_lr, dual_lr_final,
                        dual_ema, dual_ratio_min, loss, loss_margin, "element", "l0", targeted)
    return _attack(model, x, y, "l2", "grad", lrs, int(restarts), float(init_range), int(finetune_steps),
                   float(finetune_lr_factor), seed, opts)
