"""The step-size rule of APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks", §3.1, Algorithm 1): checkpoints and the two halving conditions.

Checkpoints ``w_j`` of an ``N``-iteration budget, the paper's ``w_j = ceil(p_j N)`` with::

    p_0 = 0,  p_1 = 0.22,  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)

counted in whole iterations as the authors' released AutoAttack code counts them: the first interval
``max(floor(0.22 N), 1)``, each next one the previous minus ``max(floor(0.03 N), 1)``, at least
``max(floor(0.06 N), 1)``. At the published budget (``N = 100``) both give 22, 41, 57, 70, 80, 87, 93, 99;
at small budgets (torchattacks' default ``N = 10``: 2, 3, 4, ..., against the formula's 3, 5, 6, 8, 9, 10)
only the counted ones reproduce AutoAttack's runs, whose robust accuracy ours is compared with.

At checkpoint ``w_j`` the step ``eta`` of a sample is halved, and its iterate restarts from the best point
found so far ``x_max``, when one of the two conditions holds:

1. ``sum_{i = w_{j-1}}^{w_j - 1} 1[f(x^(i+1)) > f(x^(i))] < rho (w_j - w_{j-1})`` (too few steps increased
   the objective: the step oscillates), ``rho = 0.75``;
2. ``eta^(w_{j-1}) == eta^(w_j)`` and ``f_max^(w_{j-1}) == f_max^(w_j)`` (the step was not reduced at the
   last checkpoint and the best value has not moved since).
"""

from __future__ import annotations

import torch


def checkpoints(steps: int) -> list[int]:
    """The checkpoints ``w_j`` (``j >= 1``, in ``(0, steps]``, increasing) of ``steps`` iterations."""
    interval = first = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out: list[int] = []
    w = first
    while w <= steps:
        out.append(w)
        interval = max(interval - shrink, shortest)
        w += interval
    return out


class StepSizeRule:
    """Per-sample state of Algorithm 1's step-size rule for a batch of ``B`` samples.

    Call :meth:`observe` after every iteration with the new and the previous objective values ``[B]``, and
    :meth:`at_checkpoint` with the current best value ``f_max`` ``[B]`` when the iteration count is a
    checkpoint; it returns the ``[B]`` bool mask of samples whose step is halved (and whose iterate the
    caller moves back to ``x_max``).
    """

    def __init__(self, f_max: torch.Tensor, rho: float = 0.75):
        self.rho = rho
        self.increases = torch.zeros_like(f_max)
        self.f_max_last = f_max.clone()
        self.reduced_last = torch.zeros_like(f_max, dtype=torch.bool)
        self.last = 0

    def observe(self, f_new: torch.Tensor, f_old: torch.Tensor) -> None:
        self.increases += (f_new > f_old).to(self.increases.dtype)

    def at_checkpoint(self, k: int, f_max: torch.Tensor) -> torch.Tensor:
        """The halving mask at checkpoint ``w_j = k`` (iterations done so far)."""
        oscillating = self.increases < self.rho * (k - self.last)  # condition 1
        stalled = ~self.reduced_last & (f_max <= self.f_max_last)  # condition 2
        halve = oscillating | stalled
        self.reduced_last = halve
        self.f_max_last = f_max.clone()
        self.increases.zero_()
        self.last = k
        return halve
