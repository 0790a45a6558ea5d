"""The primal (r-)player of the primal-dual attacks: one step of PDGD and one of PDPGD.

Both players see the proxy-Lagrangian of Matyasko thesis Ch.5 §5.2, eq 5.3, ``lam_1 ||r|| + lam_2 g(x + r)``
with ``g`` a surrogate of the misclassification constraint. The engine (:mod:`robust_cli.attacks.primal_dual`)
runs the dual player, the Adam (or SGD) moments and the bookkeeping; a primal step says

- ``size(r)``: the norm it minimises, per sample ``[B]``;
- ``gradient(g, xa, r, lam1, lam2)``: the gradient ``[B,C,H,W]`` the optimizer descends;
- ``step(r_half, x, lam1, lam2, lr, denom)``: the new ``r`` from the optimizer's step ``r_half`` (already
  projected onto the box), given Adam's diagonal metric ``denom`` (``None`` for SGD).

:class:`GradientStep` (PDGD, thesis Algorithm 2): descend the whole Lagrangian. :class:`ProximalStep` (PDPGD,
thesis Algorithm 3): descend ``g`` alone, then take the proximal operator of ``(lam_1 / lam_2) * lr * ||.||``
(eqs 5.8-5.10) in Adam's metric.
"""

from __future__ import annotations

import torch

from robust_cli.attacks import proximal
from robust_cli.attacks.geometry import batch_norm, changed_pixels, view_as_images

OPTIMIZERS = ("adam", "sgd")
L0_MODES = ("pixel", "element")
L0_PROXES = ("l0", "l23", "l0_max")


def perturbation_norm(r: torch.Tensor, norm: str, l0_mode: str = "pixel") -> torch.Tensor:
    """Per-sample norm ``[B]`` of ``r`` ``[B, C, H, W]``; l0 counts changed pixels or values (``l0_mode``)."""
    if norm == "l0" and l0_mode == "pixel" and r.dim() == 4:
        return changed_pixels(r)
    return batch_norm(r, norm)


def pick_prox(norm: str, l0_mode: str, l0_prox: str) -> str:
    """The name (a key of :data:`robust_cli.attacks.proximal.PROX`) of the operator used for ``norm``.

    l0 in pixel mode uses the pixel-group operators (thesis eq 5.16; on one-channel images they equal the
    elementwise ones, and the caller passes ``l0_mode="element"`` there).
    """
    if norm != "l0":
        return norm
    names = {"l0": "l0", "l23": "l23", "l0_max": "l0"}
    if l0_prox not in names:
        raise ValueError(f"unknown l0_prox {l0_prox!r}; expected one of {L0_PROXES}")
    if l0_mode == "element":
        return names[l0_prox]
    if l0_mode != "pixel":
        raise ValueError(f"unknown l0_mode {l0_mode!r}; expected one of {L0_MODES}")
    return {"l0": "l0_group", "l23": "l23_group", "l0_max": "l0_group_max"}[l0_prox]


def proximal_step(prox: proximal.ProxFn, v: torch.Tensor, x: torch.Tensor, mu: torch.Tensor,
                  denom: torch.Tensor | None, inner: int, tol: float,
                  exact: proximal.MetricProxFn | None = None) -> torch.Tensor:
    """``argmin_z mu ||z|| + 0.5 (z - v)^T H (z - v)`` over the box, ``H`` Adam's diagonal metric ``denom``.

    Shapes: ``v``, ``x``, ``denom`` ``[B, C, H, W]``; ``mu`` ``[B]`` (the norm weight times the step); ``v``
    is in the box (``x + v`` in [0,1]).
    ``exact``: the operator in the metric (``proximal.in_diagonal_metric``), taken once and clamped to the box.
    Every such operator moves each value of ``v`` towards 0, and 0 and ``v`` are both in the box, so the clamp
    only removes rounding: this is the exact minimiser for l1, l2 and linf (and harmless for the shrinking
    non-convex l0/l2/3 operators). Otherwise ``H = denom / max(denom)`` and ``mu / max(denom)`` (proximal Adam,
    Melchior et al. 2019, as in the authors' code): up to ``inner`` proximal-gradient steps of unit length,
    ``z <- box(prox_{mu ||.||}(z - H (z - v)))``, stopped per sample once ``||dz|| / ||z|| < tol``. Without a
    metric (SGD) the prox is taken once, exactly.
    """
    if denom is None:
        return (x + prox(v, mu)).clamp_(0, 1) - x
    if exact is not None:
        return (x + exact(v, mu, denom)).clamp_(0, 1) - x
    psi = denom.flatten(1).amax(dim=1)
    h = denom / view_as_images(psi, denom)
    mu = mu / psi
    z = v
    active = torch.ones(v.shape[0], dtype=torch.bool, device=v.device)
    all_active = True
    work = torch.empty_like(v)
    for _ in range(inner):
        # z_new = box(prox(z - h (z - v))), the same operations in place (products and sums commute exactly)
        torch.sub(z, v, out=work).mul_(h)
        z_new = prox(torch.sub(z, work, out=work), mu)
        if z_new.data_ptr() == work.data_ptr():  # an operator that returned its input: keep work free
            z_new = z_new.clone()
        z_new = z_new.add_(x).clamp_(0, 1).sub_(x)
        change = torch.sub(z_new, z, out=work).flatten(1).norm(dim=1)
        size = z_new.flatten(1).norm(dim=1)
        # rows already settled keep their z (a where only once some have: a slow CPU path)
        z = z_new if all_active else torch.where(view_as_images(active, z), z_new, z, out=z_new)
        active = active & (change > tol * size)
        all_active = bool(active.all())
        if not all_active and not bool(active.any()):
            break
    return z


class GradientStep:
    """PDGD's primal step (thesis Algorithm 2): Adam on ``lam_1 ||r||_2 + lam_2 g`` (l2 only)."""

    name = "pdgd"
    optimizer = "adam"

    def size(self, r: torch.Tensor) -> torch.Tensor:
        return batch_norm(r, "l2")

    def gradient(self, g: torch.Tensor, xa: torch.Tensor, r: torch.Tensor, lam1: torch.Tensor,
                 lam2: torch.Tensor) -> torch.Tensor:
        (grad,) = torch.autograd.grad((lam2 * g).sum(), xa)
        with torch.no_grad():  # the gradient of lam_1 ||r||_2 in closed form (0 at r = 0)
            rn = r.flatten(1).norm(dim=1)
            return grad.addcmul_(view_as_images(lam1 / rn.clamp_min(1e-12) * (rn > 0), r), r)

    def step(self, r_half: torch.Tensor, x: torch.Tensor, lam1: torch.Tensor, lam2: torch.Tensor, lr: float,
             denom: torch.Tensor | None) -> torch.Tensor:
        return r_half


class ProximalStep:
    """PDPGD's primal step (thesis Algorithm 3): a step on ``g`` alone, then the prox of the norm (eq 5.10).

    Args:
        norm: linf, l2, l1 or l0 (its operator: :data:`robust_cli.attacks.proximal.PROX`).
        channels: the images' channel count (one channel: a pixel is a value, and the elementwise l0
            operators are the exact pixel-group ones).
        optimizer, proximal_steps, proximal_tol, proximal_exact, l0_mode, l0_prox: see ``PDPGDOptions``.
    """

    name = "pdpgd"

    def __init__(self, norm: str, *, channels: int, optimizer: str = "adam", proximal_steps: int = 5,
                 proximal_tol: float = 0.01, proximal_exact: bool = True, l0_mode: str = "pixel",
                 l0_prox: str = "l0"):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
        pick_prox(norm, l0_mode, l0_prox)  # validate the options as given, before any work
        self.norm, self.l0_mode, self.optimizer = norm, l0_mode, optimizer
        name = pick_prox(norm, "element" if channels == 1 else l0_mode, l0_prox)
        self.prox = proximal.PROX[name]
        # the exact operator in Adam's metric where one exists (None: proximal Adam's inner iterations)
        self.exact = proximal.in_diagonal_metric(name) if proximal_exact else None
        self.inner, self.tol = int(proximal_steps), float(proximal_tol)

    def size(self, r: torch.Tensor) -> torch.Tensor:
        return perturbation_norm(r, self.norm, self.l0_mode)

    def gradient(self, g: torch.Tensor, xa: torch.Tensor, r: torch.Tensor, lam1: torch.Tensor,
                 lam2: torch.Tensor) -> torch.Tensor:
        (grad,) = torch.autograd.grad(g.sum(), xa)  # g alone: the norm is the prox's (1 * g is g, bit for bit)
        return grad

    def step(self, r_half: torch.Tensor, x: torch.Tensor, lam1: torch.Tensor, lam2: torch.Tensor, lr: float,
             denom: torch.Tensor | None) -> torch.Tensor:
        ratio = lam1 / lam2  # lam = lam_1 / lam_2, the weight of the norm (eq 5.8)
        return proximal_step(self.prox, r_half, x, ratio * lr, denom, self.inner, self.tol, self.exact)
