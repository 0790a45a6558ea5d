"""The step-size rule of APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks", §3.1, Algorithm 1): checkpoints and the two halving conditions.

Checkpoints ``w_j = ceil(p_j N)`` of an ``N``-iteration budget, with::

    p_0 = 0,  p_1 = 0.22,  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)

At checkpoint ``w_j`` the step ``eta`` of a sample is halved, and its iterate restarts from the best point
found so far ``x_max``, when one of the two conditions holds:

1. ``sum_{i = w_{j-1}}^{w_j - 1} 1[f(x^(i+1)) > f(x^(i))] < rho (w_j - w_{j-1})`` (too few steps increased
   the objective: the step oscillates), ``rho = 0.75``;
2. ``eta^(w_{j-1}) == eta^(w_j)`` and ``f_max^(w_{j-1}) == f_max^(w_j)`` (the step was not reduced at the
   last checkpoint and the best value has not moved since).
"""

from __future__ import annotations

import math

import torch


def checkpoints(steps: int) -> list[int]:
    """The checkpoints ``w_j`` (``j >= 1``, in ``(0, steps]``, increasing, no repeats) of ``steps`` iterations."""
    p_prev, p = 0.0, 0.22
    out: list[int] = []
    while p <= 1.0:
        w = math.ceil(p * steps)
        if 0 < w <= steps and (not out or w > out[-1]):
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
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
