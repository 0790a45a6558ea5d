"""PDPGD: primal-dual proximal gradient descent, a minimal-norm attack (thesis Ch.5, Algorithm 3; SPEC.md §3).

The attack minimises ``||r||`` subject to ``x + r`` misclassified and ``x + r`` in [0,1], played as a
two-player game on the proxy-Lagrangians of eq 5.3:

* the primal (r-)player minimises ``lam * ||r|| + g(x + r)``, ``g`` a smooth surrogate of the
  misclassification constraint on the margin ``m = f_y - max_{j != y} f_j`` (eq 5.2; misclassified iff
  ``m < 0``): ``softplus(m)`` by default. PDPGD takes an Adam step on ``g`` alone, then the proximal
  operator of ``lam * step * ||.||`` (eq 5.10) in Adam's diagonal metric, solved by a few proximal-gradient
  inner iterations (proximal Adam), then projects onto the box;
* the dual (lam-)player holds two weights ``(lam_1, lam_2)`` on the simplex in the log domain
  (multiplicative weights): ``log(lam_2 / lam_1) += dual_lr * sign(m)``, i.e. the weight of the
  constraint grows while the point is still correct and shrinks once it is misclassified; the ratio is
  clamped to ``[dual_ratio_min, 1 / dual_ratio_min]`` and the primal uses an exponential moving average of
  the weights, ``lam = ema(lam_1) / ema(lam_2)``.

Per sample the best (smallest-norm misclassified) iterate is kept (Alg. 3 lines 7-9); random restarts, a
primal learning-rate grid and a fine-tuning stage from the best point each keep the best per sample.
``pdgd`` (``robust_cli/attacks/pdgd.py``, Algorithm 2) shares this engine with a plain Adam step on
``lam_1 ||r||_2 + lam_2 g``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from robust_cli.attacks import proximal
from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.geometry import batch_norm, changed_pixels, view_as_images
from robust_cli.attacks.losses import margin

log = logging.getLogger(__name__)

# Primal learning rates per norm when `step_size` is not given: values of the thesis grid
# {0.01, 0.05, 0.1, 0.5, 1.0} that suit [0,1] images at MNIST scale (a few quick runs on a LeNet-5, not a
# sweep). They depend on the scale of the distances: pass `lr_grid` to pick per sample as the thesis did.
DEFAULT_STEP_SIZE = {"linf": 0.05, "l2": 0.1, "l1": 0.5, "l0": 1.0}

SURROGATES = ("softplus", "hinge", "squared_hinge", "linear", "exp")


@dataclass
class PDPGDConfig:
    """Options of ``attack=pdpgd`` (thesis Ch.5 §5.4 defaults; SPEC.md §3)."""

    _target_: str = "robust_cli.attacks.pdpgd.pdpgd"
    name: str = "pdpgd"
    steps: int = 500  # iterations per run; one forward and one backward pass each
    step_size: float | None = None  # primal lr; None = DEFAULT_STEP_SIZE[norm]
    lr_grid: list[float] = field(default_factory=list)  # run every lr (thesis: 0.01,0.05,0.1,0.5,1), keep best
    lr_final: float = 0.01  # primal lr decays to lr_final * its start over the run
    lr_decay: str = "linear"  # linear (thesis) | exponential (the authors' code)
    optimizer: str = "adam"  # adam (proximal Adam) | sgd (plain proximal gradient)
    proximal_steps: int = 5  # inner iterations of the proximal Adam step
    proximal_tol: float = 0.01  # stop the inner iterations at relative change below this
    proximal_exact: bool = True  # elementwise operators (l1, l0, l2/3): exact prox in Adam's metric
    dual_ratio_init: float = 0.01  # lam_1 / lam_2 at the start (thesis 0.01; authors' MNIST runs 0.1)
    dual_lr: float = 0.1  # log-domain dual step at the start ...
    dual_lr_final: float = 0.01  # ... decaying linearly to this
    dual_ema: float = 0.9  # EMA decay of the dual weights used by the primal
    dual_ratio_min: float = 1e-6  # ratio clamped to [dual_ratio_min, 1 / dual_ratio_min]
    loss: str = "softplus"  # surrogate g of the constraint: softplus | hinge | squared_hinge | linear | exp
    loss_margin: float = 0.0  # g is evaluated at m + loss_margin (a target margin for the surrogate)
    l0_mode: str = "pixel"  # l0 counts changed pixels (all channels of a pixel together) | element (values)
    l0_prox: str = "l0"  # l0 proximal operator: l0 (hard threshold) | l23 (the authors' choice) | l0_max
    restarts: int = 1  # runs per lr; run 0 starts at r = 0, the others at r0 ~ U[-init_range, init_range]
    init_range: float = 0.5  # 0.5 MNIST, 0.25 CIFAR (SPEC.md §3)
    finetune_steps: int = 0  # > 0: a last run started at the best point found, with a smaller lr
    finetune_lr_factor: float = 0.1  # its lr relative to the best run's lr
    targeted: bool = False  # y holds target classes; success = predicted as the target
    seed: int = 0  # random restarts draw from a generator seeded here


SCHEMAS = {"pdpgd": PDPGDConfig}


# ---------------------------------------------------------------- pieces


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


def perturbation_norm(r: torch.Tensor, norm: str, l0_mode: str = "pixel") -> torch.Tensor:
    """Per-sample norm ``[B]`` of ``r`` ``[B, C, H, W]``; l0 counts changed pixels or values (``l0_mode``)."""
    if norm == "l0" and l0_mode == "pixel" and r.dim() == 4:
        return changed_pixels(r)
    return batch_norm(r, norm)


def pick_prox(norm: str, l0_mode: str, l0_prox: str) -> tuple[proximal.ProxFn, bool]:
    """The proximal operator used for ``norm`` and whether it is elementwise (separable).

    l0 in pixel mode uses the pixel-group operators (on one-channel images they equal the elementwise ones;
    the caller passes ``l0_mode="element"`` there).
    """
    if norm != "l0":
        return proximal.PROX[norm], norm in proximal.SEPARABLE
    names = {"l0": "l0", "l23": "l23", "l0_max": "l0"}
    if l0_prox not in names:
        raise ValueError(f"unknown l0_prox {l0_prox!r}; expected l0, l23 or l0_max")
    if l0_mode == "element":
        return proximal.PROX[names[l0_prox]], True
    if l0_mode != "pixel":
        raise ValueError(f"unknown l0_mode {l0_mode!r}; expected pixel or element")
    return proximal.PROX[{"l0": "l0_group", "l23": "l23_group", "l0_max": "l0_group_max"}[l0_prox]], False


def _lr_at(k: int, steps: int, lr: float, final: float, decay: str) -> float:
    """Primal lr at iteration ``k`` of ``steps``: from ``lr`` to ``final * lr`` (linear or exponential)."""
    frac = k / max(steps - 1, 1)
    if decay == "linear":
        return lr * (1 + (final - 1) * frac)
    if decay == "exponential":
        return lr * final**frac
    raise ValueError(f"unknown lr_decay {decay!r}; expected linear or exponential")


@dataclass
class _Run:
    """Options of one primal-dual run (one lr, one start)."""

    norm: str
    primal: str  # "prox" (PDPGD) or "grad" (PDGD: Adam on the whole l2 Lagrangian)
    steps: int
    lr: float
    lr_final: float
    lr_decay: str
    optimizer: str
    proximal_steps: int
    proximal_tol: float
    proximal_exact: bool
    dual_ratio_init: float
    dual_lr: float
    dual_lr_final: float
    dual_ema: float
    dual_ratio_min: float
    loss: str
    loss_margin: float
    l0_mode: str
    l0_prox: str
    targeted: bool


def _signed_margin(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """``[B]``: positive while the attack has not succeeded, negative once it has (eq 5.2)."""
    m = margin(logits, y)
    return -m if targeted else m


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, r0: torch.Tensor, o: _Run):
    """One primal-dual run from ``r0``. Returns ``(best_adv [B,C,H,W], best_norm [B])`` (inf = not found).

    One forward and one backward pass per iteration; all state is per sample.
    """
    B = x.shape[0]
    dev, dt = x.device, x.dtype
    # one channel: a pixel is a value, and the elementwise operators are the exact pixel-group ones
    l0_mode = "element" if x.shape[1] == 1 else o.l0_mode
    prox, separable = pick_prox(o.norm, l0_mode, o.l0_prox) if o.primal == "prox" else (None, False)
    exact = separable and o.proximal_exact
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
    for k in range(o.steps):
        xa = (x + r).requires_grad_(True)
        logits = model(xa)
        m = _signed_margin(logits, y, o.targeted)
        g = surrogate(m + o.loss_margin, o.loss)
        weight = lam2 if o.primal == "grad" else torch.ones_like(lam2)
        (grad,) = torch.autograd.grad((weight * g).sum(), xa)
        m = m.detach()

        # best-so-far (Alg. 3 lines 7-9); the norm of r, which is exactly xa - x where it matters (zeros)
        with torch.no_grad():
            xa = xa.detach()
            dist = perturbation_norm(r, o.norm, o.l0_mode)
            better = (m < 0) & (dist < best_norm)
            best_norm = torch.where(better, dist, best_norm)
            best_adv = torch.where(view_as_images(better, x), xa, best_adv)

            lr = _lr_at(k, o.steps, o.lr, o.lr_final, o.lr_decay)
            if o.primal == "grad":
                # PDGD: gradient of lam_1 ||r||_2 added in closed form (0 at r = 0)
                rn = r.flatten(1).norm(dim=1)
                grad.addcmul_(view_as_images(lam1 / rn.clamp_min(1e-12) * (rn > 0), x), r)
            if o.optimizer == "adam":
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bc1 = 1 - beta1 ** (k + 1)
                bc2 = 1 - beta2 ** (k + 1)
                denom = exp_avg_sq.div(bc2).sqrt_().add_(adam_eps)
                r_half = exp_avg.div(denom).mul_(-lr / bc1).add_(r)
            elif o.optimizer == "sgd":
                denom = None
                r_half = grad.mul_(-lr).add_(r)
            else:
                raise ValueError(f"unknown optimizer {o.optimizer!r}; expected adam or sgd")
            r_half = r_half.add_(x).clamp_(0, 1).sub_(x)

            if prox is None:
                r = r_half
            else:
                ratio = lam1 / lam2  # lam = lam_1 / lam_2, the weight of the norm (eq 5.8)
                r = _proximal_step(prox, r_half, x, ratio * lr, denom, o.proximal_steps, o.proximal_tol, exact)

            # dual ascent in the log domain, lr decaying linearly (multiplicative weights on the simplex)
            theta = o.dual_lr + (o.dual_lr_final - o.dual_lr) * k / max(o.steps - 1, 1)
            ell = (ell + theta * torch.sign(m)).clamp_(-ell_max, ell_max)
            lam1 = o.dual_ema * lam1 + (1 - o.dual_ema) * torch.sigmoid(-ell)
            lam2 = o.dual_ema * lam2 + (1 - o.dual_ema) * torch.sigmoid(ell)
    return best_adv, best_norm


def _proximal_step(prox, v, x, mu, denom, inner, tol, exact=False):
    """``argmin_z mu ||z|| + 0.5 (z - v)^T H (z - v)`` over the box, ``H`` Adam's diagonal metric ``denom``.

    Shapes: ``v``, ``x``, ``denom`` ``[B, C, H, W]``; ``mu`` ``[B]`` (the norm weight times the step).
    ``exact`` (elementwise operators only): the problem separates, and value ``i`` is the prox with weight
    ``mu / denom_i``, clamped to the box (0 and ``v`` are both in the box, so this is exact for l1 and
    harmless for the shrinking non-convex l0/l2/3 operators). Otherwise ``H = denom / max(denom)`` and
    ``mu / max(denom)`` (proximal Adam, Melchior et al. 2019, as in the authors' code): up to ``inner``
    proximal-gradient steps of unit length, ``z <- box(prox_{mu ||.||}(z - H (z - v)))``, stopped per
    sample once ``||dz|| / ||z|| < tol``. Without a metric (SGD) the prox is taken once, exactly.
    """
    if denom is None:
        return (x + prox(v, mu)).clamp_(0, 1) - x
    if exact:
        return (x + prox(v, view_as_images(mu, v) / denom)).clamp_(0, 1) - x
    psi = denom.flatten(1).amax(dim=1)
    h = denom / view_as_images(psi, denom)
    mu = mu / psi
    z = v
    active = torch.ones(v.shape[0], dtype=torch.bool, device=v.device)
    for _ in range(inner):
        z_new = (x + prox(z - h * (z - v), mu)).clamp_(0, 1) - x
        change = (z_new - z).flatten(1).norm(dim=1)
        size = z_new.flatten(1).norm(dim=1)
        z = torch.where(view_as_images(active, z), z_new, z)
        active = active & (change > tol * size)
        if not bool(active.any()):
            break
    return z


def _attack(model, x, y, norm, primal, lrs, restarts, init_range, finetune_steps, finetune_lr_factor,
            seed, run_opts):
    """Runs every lr x restart (and the optional fine-tuning run); keeps the best per sample."""
    if x.dim() != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
    x = x.detach()
    y = y.to(x.device)
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    with frozen_eval(model), torch.enable_grad():
        with torch.no_grad():
            done = _signed_margin(model(x), y, run_opts["targeted"]) < 0
        best_adv = x.clone()
        best_norm = torch.full((x.shape[0],), float("inf"), device=x.device, dtype=x.dtype)
        best_lr = torch.full_like(best_norm, float(lrs[0]))
        todo = ~done
        if bool(todo.any()):
            xs, ys = x[todo], y[todo]
            sub_adv, sub_norm, sub_lr = xs.clone(), best_norm[todo], best_lr[todo]
            for lr in lrs:
                for k in range(restarts):
                    # draw every restart's start in order so that restart k is the same for any `restarts`
                    noise = torch.rand(xs.shape, generator=gen, device=x.device, dtype=x.dtype)
                    r0 = torch.zeros_like(xs) if k == 0 else (2 * noise - 1) * init_range
                    adv, nrm = _run(model, xs, ys, r0, _Run(norm=norm, primal=primal, lr=lr, **run_opts))
                    better = nrm < sub_norm
                    sub_norm = torch.where(better, nrm, sub_norm)
                    sub_adv = torch.where(view_as_images(better, xs), adv, sub_adv)
                    sub_lr = torch.where(better, torch.full_like(sub_lr, lr), sub_lr)
            if finetune_steps > 0:
                found = torch.isfinite(sub_norm)
                if bool(found.any()):
                    ft = dict(run_opts, steps=finetune_steps)
                    # one run per distinct best lr keeps the lr a per-sample choice without a Python loop
                    for lr in sorted(set(sub_lr[found].tolist())):
                        sel = found & (sub_lr == lr)
                        r0 = sub_adv[sel] - xs[sel]
                        adv, nrm = _run(model, xs[sel], ys[sel], r0,
                                        _Run(norm=norm, primal=primal, lr=lr * finetune_lr_factor, **ft))
                        cur = sub_norm[sel]
                        better = nrm < cur
                        sub_norm[sel] = torch.where(better, nrm, cur)
                        sub_adv[sel] = torch.where(view_as_images(better, adv), adv, sub_adv[sel])
            best_adv[todo] = sub_adv
            best_norm[todo] = sub_norm
        best_adv = best_adv.detach().clamp_(0, 1)
    log.debug("%s %s: found %d/%d", primal, norm, int(torch.isfinite(best_norm).sum()), x.shape[0])
    return best_adv


def _run_options(steps, lr_final, lr_decay, optimizer, proximal_steps, proximal_tol, proximal_exact, dual_ratio_init,
                 dual_lr, dual_lr_final, dual_ema, dual_ratio_min, loss, loss_margin, l0_mode, l0_prox,
                 targeted) -> dict:
    if loss not in SURROGATES:
        raise ValueError(f"unknown surrogate loss {loss!r}; expected one of {SURROGATES}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return dict(steps=int(steps), lr_final=float(lr_final), lr_decay=lr_decay, optimizer=optimizer,
                proximal_steps=int(proximal_steps), proximal_tol=float(proximal_tol),
                proximal_exact=bool(proximal_exact),
                dual_ratio_init=float(dual_ratio_init), dual_lr=float(dual_lr),
                dual_lr_final=float(dual_lr_final), dual_ema=float(dual_ema),
                dual_ratio_min=float(dual_ratio_min), loss=loss, loss_margin=float(loss_margin),
                l0_mode=l0_mode, l0_prox=l0_prox, targeted=bool(targeted))


@register_attack(norms=("linf", "l2", "l1", "l0"), budget=False)
def pdpgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, steps: int = 500,
          step_size: float | None = None, lr_grid=(), lr_final: float = 0.01, lr_decay: str = "linear",
          optimizer: str = "adam", proximal_steps: int = 5, proximal_tol: float = 0.01, proximal_exact: bool = True,
          dual_ratio_init: float = 0.01, dual_lr: float = 0.1, dual_lr_final: float = 0.01,
          dual_ema: float = 0.9, dual_ratio_min: float = 1e-6, loss: str = "softplus",
          loss_margin: float = 0.0, l0_mode: str = "pixel", l0_prox: str = "l0", restarts: int = 1,
          init_range: float = 0.5, finetune_steps: int = 0, finetune_lr_factor: float = 0.1,
          targeted: bool = False, seed: int = 0) -> torch.Tensor:
    """Primal-dual proximal gradient descent (thesis Algorithm 3) for ``norm`` in linf, l2, l1, l0.

    Args:
        model: maps ``[B, C, H, W]`` in [0,1] to logits ``[B, K]``; its mode and parameters are untouched.
        x: ``[B, C, H, W]`` in [0,1]; y: ``[B]`` int64 true labels (targets when ``targeted``).
        norm: the norm minimised; l0 counts pixels (``l0_mode="pixel"``) or values (``"element"``).
        The other options are those of ``PDPGDConfig``.
    Returns:
        ``[B, C, H, W]`` in [0,1]: per sample the smallest-norm misclassified iterate over all runs; ``x``
        itself where none was found and where ``x`` is already misclassified.
    """
    if norm not in pdpgd.norms:
        raise ValueError(f"pdpgd supports norms {pdpgd.norms}, got {norm!r}")
    lrs = [float(v) for v in lr_grid] or [float(step_size if step_size is not None else DEFAULT_STEP_SIZE[norm])]
    opts = _run_options(steps, lr_final, lr_decay, optimizer, proximal_steps, proximal_tol, proximal_exact,
                        dual_ratio_init,
                        dual_lr, dual_lr_final, dual_ema, dual_ratio_min, loss, loss_margin, l0_mode, l0_prox,
                        targeted)
    pick_prox(norm, l0_mode, l0_prox)  # validate before any work
    return _attack(model, x, y, norm, "prox", lrs, int(restarts), float(init_range), int(finetune_steps),
                   float(finetune_lr_factor), seed, opts)
