"""The primal-dual engine of PDGD and PDPGD (Matyasko thesis Ch.5, Algorithms 2 and 3).

The attack minimises ``||r||`` subject to ``x + r`` misclassified and ``x + r`` in [0,1], played as a
two-player game on the proxy-Lagrangians of eq 5.3:

* the primal (r-)player minimises ``lam * ||r|| + g(x + r)``, ``g`` a smooth surrogate of the
  misclassification constraint on the margin ``m = f_y - max_{j != y} f_j`` (eq 5.2; misclassified iff
  ``m < 0``): ``softplus(m)`` by default. How it steps is a *primal step* object
  (:mod:`robust_cli.attacks.primal_steps`): Adam on the whole Lagrangian (PDGD) or a step on ``g`` then the
  proximal operator of the norm (PDPGD, eq 5.10);
* the dual (lam-)player holds two weights ``(lam_1, lam_2)`` on the simplex in the log domain
  (multiplicative weights): ``log(lam_2 / lam_1) += dual_lr * sign(m)``, i.e. the weight of the
  constraint grows while the point is still correct and shrinks once it is misclassified; the ratio is
  clamped to ``[dual_ratio_min, 1 / dual_ratio_min]`` and the primal uses an exponential moving average of
  the weights, ``lam = ema(lam_1) / ema(lam_2)``.

Per sample the best (smallest-norm misclassified) iterate is kept (Algorithm 3, lines 7-9); random restarts,
a primal learning-rate grid and a fine-tuning stage from the best point each keep the best per sample.
``x_init`` (e.g. the evaluation's running best of earlier attacks): where it is misclassified it is the first
best point (the result is never larger), and each lr gets one more run on those rows, from ``r = x_init - x``
with the dual weights and the lr schedule of a cold start, besides the cold runs: on the digits LeNet-5 the
warm run alone beat the cold one in l1 (1.277 vs 1.301) but, replacing it inside ``attack=minimal``, lost to
the best of both in linf (mean 0.0847 vs 0.0842): the cold run finds other points.
Defaults (:class:`PrimalDualOptions`): thesis §5.4 (500 iterations, lr decayed to 1e-2 of its start, dual lr
0.1 decaying to 0.01, EMA 0.9, ratio clamp 1e-6, restarts from ``U[-0.5, 0.5]`` on MNIST).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from robust_cli.attacks.contract import frozen_eval
from robust_cli.attacks.geometry import view_as_images
from robust_cli.attacks.losses import margin
from robust_cli.schema import Range

log = logging.getLogger(__name__)

# Primal learning rates per norm when `lr` is not given: values of the thesis grid {0.01, 0.05, 0.1, 0.5, 1.0}
# that suit [0,1] images at MNIST scale (a few quick runs on a LeNet-5, not a sweep; see BENCHMARKS.md; l1:
# the authors' 0.1 with the thesis's inexact proximal steps, pdpgd.PROXIMAL_EXACT_DEFAULT, measured in session 5;
# linf: the authors' 0.1 since PDPGD's exact linf step, session 13: at 0.05 one of 488 MNIST test images, with a
# margin of 19, was never reached in 500 steps; at 0.1 all were, mean 0.0406 -> 0.0405, digits 0.0910 -> 0.0907).
# They depend on the scale of the distances: pass `lr_grid` to pick per sample as the thesis did.
DEFAULT_LR = {"linf": 0.1, "l2": 0.1, "l1": 0.1, "l0": 1.0}

SURROGATES = ("softplus", "hinge", "squared_hinge", "linear", "exp")
LR_DECAYS = ("linear", "exponential")


@dataclass
class PrimalDualOptions:
    """The options PDGD and PDPGD share, each default written once (thesis Ch.5 §5.4 unless noted).

    Attributes:
        steps: iterations per run; one forward and one backward pass each.
        lr: the primal (Adam) learning rate; ``None`` = ``DEFAULT_LR[norm]``.
        lr_grid: run every lr of this list (thesis: 0.01, 0.05, 0.1, 0.5, 1), keep the best per sample;
            overrides ``lr``.
        lr_final: the lr decays to ``lr_final`` times its start over the run.
        lr_decay: ``linear`` (thesis) or ``exponential`` (the authors' code).
        dual_ratio_init: ``lam_1 / lam_2`` at the start (thesis 0.01; the authors' MNIST runs 0.1).
        dual_lr: the log-domain dual step at the start, decaying linearly to ``dual_lr_final``.
        dual_ema: EMA decay of the dual weights the primal uses.
        dual_ratio_min: the ratio is clamped to ``[dual_ratio_min, 1 / dual_ratio_min]``.
        loss: the surrogate ``g`` of the constraint (``SURROGATES``).
        loss_margin: ``g`` is evaluated at ``m + loss_margin`` (a target margin for the surrogate).
        restarts: runs per lr; run 0 starts at ``r = 0``, the others at ``r0 ~ U[-init_range, init_range]``.
        init_range: 0.5 on MNIST, 0.25 on CIFAR-10 (thesis §5.4.1, §5.4.2).
        finetune_steps: ``> 0``: a last run from the best point found, with a smaller lr ...
        finetune_lr_factor: ... this factor times the best run's lr.
        targeted: ``y`` holds target classes; success = predicted as the target.
        seed: the random restarts draw from a generator seeded here.
    """

    steps: Annotated[int, Range(ge=1)] = 500
    lr: Optional[float] = None
    lr_grid: Sequence[float] = ()
    lr_final: float = 0.01
    lr_decay: Literal["linear", "exponential"] = "linear"
    dual_ratio_init: float = 0.01
    dual_lr: float = 0.1
    dual_lr_final: float = 0.01
    dual_ema: float = 0.9
    dual_ratio_min: float = 1e-6
    loss: Literal["softplus", "hinge", "squared_hinge", "linear", "exp"] = "softplus"
    loss_margin: float = 0.0
    restarts: Annotated[int, Range(ge=1)] = 1
    init_range: float = 0.5
    finetune_steps: Annotated[int, Range(ge=0)] = 0
    finetune_lr_factor: float = 0.1
    targeted: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in SURROGATES:
            raise ValueError(f"unknown surrogate loss {self.loss!r}; expected one of {SURROGATES}")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"unknown lr_decay {self.lr_decay!r}; expected one of {LR_DECAYS}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    def learning_rates(self, norm: str) -> list[float]:
        """The primal lrs to run: ``lr_grid``, else ``[lr]``, else ``[DEFAULT_LR[norm]]``."""
        return [float(v) for v in self.lr_grid] or [float(self.lr if self.lr is not None else DEFAULT_LR[norm])]


class PrimalStep(Protocol):
    """What the engine asks of the primal player (see :mod:`robust_cli.attacks.primal_steps`)."""

    name: str
    optimizer: str

    def size(self, r: torch.Tensor) -> torch.Tensor: ...

    def gradient(self, g: torch.Tensor, xa: torch.Tensor, r: torch.Tensor, lam1: torch.Tensor,
                 lam2: torch.Tensor) -> torch.Tensor: ...

    def step(self, r_half: torch.Tensor, x: torch.Tensor, lam1: torch.Tensor, lam2: torch.Tensor, lr: float,
             denom: torch.Tensor | None) -> torch.Tensor: ...


def surrogate(m: torch.Tensor, kind: str) -> torch.Tensor:
    """Smooth (or piecewise-linear) surrogate ``g(m)`` ``[B]`` of the constraint ``m < 0``; all increase in m."""
    if kind == "softplus":
        return F.softplus(m)
    if kind == "hinge":
        return m.clamp_min(0)  # shifted hinge max(0, delta - (-m)) with delta = 0 (thesis eq 5.3)
    if kind == "squared_hinge":
        return m.clamp_min(0).square()
    if kind == "linear":
        return m
    if kind == "exp":
        return torch.exp(m.clamp_max(30))
    raise ValueError(f"unknown surrogate loss {kind!r}; expected one of {SURROGATES}")


def lr_at(k: int, steps: int, lr: float, final: float, decay: str) -> float:
    """Primal lr at iteration ``k`` of ``steps``: from ``lr`` to ``final * lr`` (linear or exponential)."""
    frac = k / max(steps - 1, 1)
    if decay == "linear":
        return lr * (1 + (final - 1) * frac)
    if decay == "exponential":
        return lr * final**frac
    raise ValueError(f"unknown lr_decay {decay!r}; expected one of {LR_DECAYS}")


def signed_margin(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """``[B]``: positive while the attack has not succeeded, negative once it has (eq 5.2)."""
    m = margin(logits, y)
    return -m if targeted else m


def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, r0: torch.Tensor, primal: PrimalStep,
        o: PrimalDualOptions, *, lr: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One primal-dual run of ``steps`` iterations from ``r0`` with primal lr ``lr`` (decayed over the run).

    ``x``, ``r0`` ``[B,C,H,W]``; ``y`` ``[B]``. Returns ``(best_adv [B,C,H,W], best_norm [B])`` (``inf``: not
    found). One forward and one backward pass per iteration; all state is per sample. Call inside
    ``frozen_eval`` with grad enabled.
    """
    B = x.shape[0]
    dev, dt = x.device, x.dtype
    r = (x + r0).clamp(0, 1) - x
    exp_avg = torch.zeros_like(x)
    exp_avg_sq = torch.zeros_like(x)
    beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
    # dual: log(lam_2 / lam_1); the weights are softmax([0, ell]) = (lam_1, lam_2) on the simplex
    ell_max = -math.log(o.dual_ratio_min)
    ell = torch.full((B,), -math.log(o.dual_ratio_init), device=dev, dtype=dt).clamp(-ell_max, ell_max)
    lam1 = torch.sigmoid(-ell)
    lam2 = torch.sigmoid(ell)
    best_norm = torch.full((B,), float("inf"), device=dev, dtype=dt)
    best_adv = x.clone()
    for k in range(steps):
        xa = (x + r).requires_grad_(True)
        m = signed_margin(model(xa), y, o.targeted)
        grad = primal.gradient(surrogate(m + o.loss_margin, o.loss), xa, r, lam1, lam2)
        m = m.detach()

        with torch.no_grad():
            # best-so-far (Algorithm 3 lines 7-9); the norm of r, which is exactly xa - x where it matters
            xa = xa.detach()
            dist = primal.size(r)
            better = (m < 0) & (dist < best_norm)
            torch.where(better, dist, best_norm, out=best_norm)  # in place: no allocation per step
            torch.where(view_as_images(better, x), xa, best_adv, out=best_adv)
            if k == steps - 1:  # the next iterate would never be evaluated
                break

            step_lr = lr_at(k, steps, lr, o.lr_final, o.lr_decay)
            if primal.optimizer == "adam":
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bc1 = 1 - beta1 ** (k + 1)
                bc2 = 1 - beta2 ** (k + 1)
                denom = exp_avg_sq.div(bc2).sqrt_().add_(adam_eps)
                r_half = exp_avg.div(denom).mul_(-step_lr / bc1).add_(r)
            else:  # sgd
                denom = None
                r_half = grad.mul_(-step_lr).add_(r)
            r_half = r_half.add_(x).clamp_(0, 1).sub_(x)
            r = primal.step(r_half, x, lam1, lam2, step_lr, denom)

            # dual ascent in the log domain, lr decaying linearly (multiplicative weights on the simplex)
            theta = o.dual_lr + (o.dual_lr_final - o.dual_lr) * k / max(steps - 1, 1)
            ell = (ell + theta * torch.sign(m)).clamp_(-ell_max, ell_max)
            lam1 = o.dual_ema * lam1 + (1 - o.dual_ema) * torch.sigmoid(-ell)
            lam2 = o.dual_ema * lam2 + (1 - o.dual_ema) * torch.sigmoid(ell)
    return best_adv, best_norm


def primal_dual(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, options: PrimalDualOptions,
                primal: PrimalStep, x_init: torch.Tensor | None = None) -> torch.Tensor:
    """Runs every lr x restart (and the optional fine-tuning run) of ``primal``; keeps the best per sample.

    Args:
        model: ``[B,C,H,W]`` in [0,1] -> logits ``[B,K]``; its mode and parameters are left untouched.
        x: ``[B,C,H,W]`` in [0,1]; y: ``[B]`` int64 true labels (targets when ``options.targeted``).
        norm: the norm minimised (picks the default lr).
        options: the shared options; primal: the primal step (its norm, gradient and step).
        x_init: ``[B,C,H,W]`` or None: starting adversarials; rows the model does not misclassify (targeted:
            does not put in the target class) are ignored.

    Returns:
        ``[B,C,H,W]`` in [0,1]: per sample the smallest-norm misclassified point over ``x_init`` and all runs;
        ``x`` itself where none was found and where ``x`` is already misclassified.
    """
    if x.dim() != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
    if x_init is not None and x_init.shape != x.shape:
        raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {tuple(x.shape)}")
    o = options
    lrs = o.learning_rates(norm)
    x = x.detach()
    y = y.to(x.device)
    gen = torch.Generator(device=x.device).manual_seed(int(o.seed))
    with frozen_eval(model), torch.enable_grad():
        with torch.no_grad():
            done = signed_margin(model(x), y, o.targeted) < 0
        best_adv = x.clone()
        best_norm = torch.full((x.shape[0],), float("inf"), device=x.device, dtype=x.dtype)
        best_lr = torch.full_like(best_norm, float(lrs[0]))
        todo = ~done
        if bool(todo.any()):
            xs, ys = x[todo], y[todo]
            sub_adv, sub_norm, sub_lr = xs.clone(), best_norm[todo], best_lr[todo]

            def keep(rows, adv: torch.Tensor, nrm: torch.Tensor, lr: float | None) -> None:
                """Where a run on ``rows`` (a slice or index) found a smaller norm, its point (and ``lr``)."""
                cur = sub_norm[rows]
                better = nrm < cur
                sub_norm[rows] = torch.where(better, nrm, cur)
                sub_adv[rows] = torch.where(view_as_images(better, adv), adv, sub_adv[rows])
                if lr is not None:
                    sub_lr[rows] = torch.where(better, torch.full_like(cur, lr), sub_lr[rows])

            warm = None  # the rows whose x_init is adversarial
            if x_init is not None:
                xi = x_init.detach().to(x)[todo].clamp(0, 1)
                with torch.no_grad():
                    is_adv = signed_margin(model(xi), ys, o.targeted) < 0
                warm = is_adv.nonzero().squeeze(1) if bool(is_adv.any()) else None
                if warm is not None:  # x_init is the first best
                    keep(warm, xi[warm], primal.size(xi[warm] - xs[warm]).to(sub_norm), None)
            for lr in lrs:
                for k in range(int(o.restarts)):
                    # draw every restart's start in order so that restart k is the same for any `restarts`
                    noise = torch.rand(xs.shape, generator=gen, device=x.device, dtype=x.dtype)
                    r0 = torch.zeros_like(xs) if k == 0 else (2 * noise - 1) * o.init_range
                    keep(slice(None), *run(model, xs, ys, r0, primal, o, lr=lr, steps=int(o.steps)), lr)
                if warm is not None:
                    # one more run from x_init on the rows that have one, besides the cold runs (not instead
                    # of run 0: in an ensemble the cold run finds other points, and the best of both is kept)
                    keep(warm, *run(model, xs[warm], ys[warm], xi[warm] - xs[warm], primal, o, lr=lr,
                                    steps=int(o.steps)), lr)
            found = torch.isfinite(sub_norm)
            if o.finetune_steps > 0 and bool(found.any()):
                # one run per distinct best lr keeps the lr a per-sample choice without a Python loop
                for lr in sorted(set(sub_lr[found].tolist())):
                    sel = (found & (sub_lr == lr)).nonzero().squeeze(1)
                    keep(sel, *run(model, xs[sel], ys[sel], sub_adv[sel] - xs[sel], primal, o,
                                   lr=lr * o.finetune_lr_factor, steps=int(o.finetune_steps)), None)
            best_adv[todo] = sub_adv
            best_norm[todo] = sub_norm
        best_adv = best_adv.detach().clamp_(0, 1)
    log.debug("%s %s: found %d/%d", primal.name, norm, int(torch.isfinite(best_norm).sum()), x.shape[0])
    return best_adv
