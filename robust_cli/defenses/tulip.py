"""``tulip`` = J2-Lip (Finlay et al. 2018): the J2 step, then mean CE plus the Lipschitz penalty at ``x'``.

``loss = CE_mean(x') + lam * max_i ||grad_{x'_i} CE_mean(x')||_2`` with ``x' = x + eps g / ||g||_2`` (see
:mod:`robust_cli.defenses.at_l2` and :mod:`robust_cli.defenses.penalty`). With
``method=finite_difference`` the difference is taken along the J2 step's own gradient direction (no extra
backward pass), both points in one forward. The "& tanh" variant is ``model.tanh_head=true``.
"""

from __future__ import annotations

from dataclasses import dataclass

from robust_cli.defenses.at_l2 import AtL2


@dataclass
class TulipConfig:
    """``defense=tulip`` (J2-Lip)."""

    _target_: str = "robust_cli.defenses.tulip.Tulip"
    name: str = "tulip"
    eps: float = 0.01  # l2 norm of the J2 step, [0,1] pixel units
    clip: bool = False  # clip x' to [0, 1]
    lam: float = 0.1  # weight of the penalty
    norm: str = "l2"  # norm of the input gradient in the penalty: l2 | l1 | linf
    reduction: str = "max"  # max | mean over the batch
    method: str = "double_backprop"  # double_backprop | finite_difference
    h: float = 0.01  # finite-difference step


class Tulip(AtL2):
    """J2 + Lipschitz penalty at the perturbed inputs."""

    def __init__(self, eps: float = 0.01, clip: bool = False, lam: float = 0.1, norm: object = "l2",
                 reduction: str = "max", method: str = "double_backprop", h: float = 0.01):
        super().__init__(eps=eps, clip=clip, lam=lam, lip_norm=norm, reduction=reduction, method=method, h=h)


SCHEMAS = {"tulip": TulipConfig}
