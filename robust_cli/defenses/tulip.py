"""``tulip`` = J2-Lip (Finlay et al. 2018): the J2 step, then mean CE plus the Lipschitz penalty at ``x'``.

``loss = CE_mean(x') + lam * max_i ||grad_{x'_i} CE_mean(x')||_2`` with ``x' = x + eps g / ||g||_2`` (see
:mod:`robust_cli.defenses.at_l2` and :mod:`robust_cli.defenses.penalty`). With
``method=finite_difference`` the difference is taken along the J2 step's own gradient direction (no extra
backward pass), both points in one forward. The "& tanh" variant is ``model.tanh_head=true``.
"""

from __future__ import annotations

from robust_cli.defenses.at_l2 import AtL2
from robust_cli.schema import schema_of


class Tulip(AtL2):
    """J2 + Lipschitz penalty at the perturbed inputs: ``at_l2`` whose penalty weight defaults to 0.1
    (Finlay et al. §4.3); every other option (``eps``, ``clip``, ``penalty_norm``, ...) is ``AtL2``'s."""

    def __init__(self, lam: float = 0.1, **options):
        super().__init__(lam=lam, **options)


SCHEMAS = {"tulip": schema_of(Tulip, "tulip")}
