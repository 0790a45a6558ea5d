"""FAB, the fast adaptive boundary attack (Croce & Hein 2020, "Minimally distorted adversarial examples with a
fast adaptive boundary attack", §3, Algorithm 1), minimal-norm in linf, l2 and l1; ``fab_t`` its targeted
version over the top-k classes (§3.3, the FAB-T of AutoAttack).

At the iterate ``x_i`` the classifier is linearised (§3.1): for each other class ``l`` the hyperplane
``pi_l = {z : g_l(x_i) + w_l . (z - x_i) = 0}``, ``g_l = f_l - f_c``, ``w_l = grad g_l``. The chosen class ``s``
has the nearest hyperplane (eq. 7) and ``delta = proj_p(x_i, pi_s, C) - x_i``,
``delta_orig = proj_p(x_orig, pi_s, C) - x_orig`` are the projections onto ``pi_s`` inside the box
``C = [0,1]^d`` (eq. 5, solved exactly here, see :func:`hyperplane_step`). The step (eq. 8-9) is::

    alpha   = min(||delta|| / (||delta|| + ||delta_orig||), alpha_max)
    x_{i+1} = proj_C((1 - alpha) (x_i + eta delta) + alpha (x_orig + eta delta_orig))

and when ``x_{i+1}`` is adversarial it is recorded (if smaller than the best) and pulled back,
``x_{i+1} <- (1 - beta) x_orig + beta x_{i+1}`` (eq. 10). Restarts (§3.2) start from
``x_orig + r``, ``||r|| = min(restart_radius, best norm) / 2``, a random direction.

Eq. 7 measures the distance to ``pi_l`` without the box, ``|g_l| / ||w_l||_q``; here it is the length of the
box-constrained projection ``||delta_l||`` (eq. 7's value wherever the box does not bind), so the class whose
boundary is nearest *inside* the box is chosen, projecting exactly only onto the hyperplanes whose lower bound
can beat the best so far (:func:`nearest_hyperplane`; ``nearest="box"``). ``nearest="eq7"`` keeps eq. 7's
ratio, as the authors' code and adv-lib 0.2.8 do, and so follows adv-lib's runs: within 0.1% of its FAB on
MNIST LeNet-5 l1 39 of 39 images and l2 78 of 79, digits LeNet-5 94 of 94 in l1, l2 and linf (MNIST linf: 34 of
38), where ``box`` parts from it on 4-46% of them; neither choice has the smaller mean on both models
(BENCHMARKS.md, issue 10, session 10). Each step costs one forward and ``m`` input-only backward passes
(``m`` = K-1 untargeted, 1 targeted) and one forward pass (the success check).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from torch import nn

from robust_cli.attacks.class_gradients import logit_difference_gradients
from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.geometry import batch_norm, view_as_images
from robust_cli.schema import Range, schema_of

#: the authors' restart radii (their code, ``eps`` per norm)
RESTART_RADIUS = {"linf": 0.3, "l2": 1.0, "l1": 5.0}


def hyperplane_step(t: torch.Tensor, w: torch.Tensor, gap: torch.Tensor, norm: str) -> torch.Tensor:
    """The minimal-norm ``d`` with ``w . d = gap`` and ``t + d`` in [0,1]: the eq. 5 projection, exact.

    ``t`` ``[N, d]`` in [0,1], ``w`` ``[N, d]``, ``gap`` ``[N]``. Writing ``a = sign(gap) w``, only moving value
    ``i`` along ``sign(a_i)`` helps, by ``s_i`` in ``[0, room_i]`` (``room_i`` the distance to that box face), and
    ``sum_i |a_i| s_i = |gap|`` must hold. KKT per norm: l2 ``s_i = min(lambda |a_i|, room_i)``, linf
    ``s_i = min(lambda, room_i)``, both a piecewise linear ``h(lambda)`` solved by sorting the breakpoints
    ``room_i / c_i``; l1 a fractional knapsack (largest ``|a_i|`` first). Where the box cannot supply
    ``|gap|``, ``d`` moves every value to its face (the nearest point to the hyperplane, as in the authors' code).
    Returns ``d`` ``[N, d]``, computed in float64.
    """
    dtype = t.dtype
    t, w, gap = t.double(), w.double(), gap.double()
    a = torch.where(gap[:, None] >= 0, w, -w)
    mag, need = a.abs(), gap.abs()[:, None]
    room = torch.where(a > 0, 1 - t, t).clamp_min(0) * (mag > 0)
    if norm == "l1":
        order = mag.argsort(dim=1, descending=True)
        m, r = mag.gather(1, order), room.gather(1, order)
        cap = (m * r).cumsum(1)
        before = cap - m * r
        s_sorted = torch.where(cap <= need, r, ((need - before) / m.clamp_min(1e-300)).clamp(min=0) * (before < need))
        s = torch.empty_like(s_sorted).scatter_(1, order, torch.minimum(s_sorted, r))
    else:
        c = mag if norm == "l2" else (mag > 0).double()
        brk = torch.where(c > 0, room / c.clamp_min(1e-300), torch.full_like(room, float("inf")))
        brk, order = brk.sort(dim=1)
        m, cs, r = mag.gather(1, order), c.gather(1, order), room.gather(1, order)
        done = (m * r).cumsum(1) - m * r  # sum over the values capped before breakpoint k
        slope = (m * cs).flip(1).cumsum(1).flip(1)  # sum of |a| c over the values still free at breakpoint k
        finite = torch.where(torch.isfinite(brk), brk, torch.zeros_like(brk))
        h_at = done + finite * slope  # h at each breakpoint (inf breakpoints hold no mass)
        k = (h_at < need).sum(1, keepdim=True).clamp_max(brk.shape[1] - 1)
        lam = ((need - done.gather(1, k)) / slope.gather(1, k).clamp_min(1e-300)).clamp_min(0)
        reachable = (mag * room).sum(1, keepdim=True) >= need
        s = torch.where(reachable, torch.minimum(lam * c, room), room)
    return (a.sign() * s).to(dtype)


def linearise(model: nn.Module, z: torch.Tensor, y: torch.Tensor, mode: str, target: torch.Tensor | None):
    """``(g [B,m], w [B,m,d], logits [B,K])`` at ``z``: ``g_l = f_l - f_y`` and its input gradient ``w_l``.

    ``mode`` ``untargeted``: ``l`` runs over all classes but ``y`` (``m = K-1``; one forward and ``m`` backward
    passes, :func:`robust_cli.attacks.class_gradients.logit_difference_gradients`);
    ``fixed``: ``l = target`` (FAB-T); ``targeted``: ``y`` is the target and the hyperplane is
    ``f_y - f_j`` for the strongest other class ``j`` at ``z`` (``m = 1``), signed so that ``g >= 0`` means success.
    """
    with torch.enable_grad():
        if mode == "untargeted":
            g, w, logits = logit_difference_gradients(model, z, y)  # every class but y, in order
            return g, w.flatten(2), logits
        else:
            zr = z.detach().requires_grad_(True)
            logits = model(zr)
            if mode == "fixed":
                up, down = target, y
            else:
                up, down = y, logits.detach().scatter(1, y[:, None], float("-inf")).argmax(1)
            m = 1
        g = logits.gather(1, up[:, None]).squeeze(1) - logits.gather(1, down[:, None]).squeeze(1)
        (w,) = torch.autograd.grad(g.sum(), zr)
    return g.detach().view(len(z), m), w.flatten(1).view(len(z), m, -1), logits.detach()


def nearest_hyperplane(z: torch.Tensor, w: torch.Tensor, g: torch.Tensor,
                       norm: str, nearest: str = "box") -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7 inside the box: ``(pick [B], d [B,d])``, the class whose box-constrained projection
    (:func:`hyperplane_step` of ``z`` onto ``g_l + w_l . (t - z) = 0``) is shortest, and that projection.

    ``z`` ``[B,d]`` in [0,1], ``w`` ``[B,m,d]``, ``g`` ``[B,m]``. The same choice as projecting onto all ``m``
    hyperplanes and taking the argmin of the norms (lowest class index on ties), but the exact projection (a
    sort per row) is computed only where it can win: for a hyperplane the box can reach, Hölder's inequality
    bounds its projection from below by ``|g_l| / ||w_l||_q`` (``q`` the dual norm), and a class whose bound
    exceeds the best exact norm found so far is skipped (branch and bound, classes taken in order of their
    bound; on LeNet-5 typically one or two of the nine). A hyperplane the box cannot reach gets its projection
    (every value moved to its face) in closed form, exactly as :func:`hyperplane_step` returns it.

    ``nearest="eq7"``: eq. 7 as printed (and as the authors' code and adv-lib choose), the class of least
    ``|g_l| / ||w_l||_q``, the box ignored (lowest class index on ties); one projection per image.
    """
    b, m, _ = w.shape
    rows = torch.arange(b, device=z.device)
    w64, need = w.double(), g.double().abs()
    dual = {"l2": 2, "linf": 1, "l1": float("inf")}[norm]
    holder = need / torch.linalg.vector_norm(w64, ord=dual, dim=2).clamp_min(1e-300)
    if nearest == "eq7":  # the ratio alone: none of the box's [b, m, d] bookkeeping below
        pick = holder.argmin(dim=1)
        return pick, hyperplane_step(z, w[rows, pick], -g[rows, pick], norm)
    a_pos = torch.where(g.double()[:, :, None] <= 0, w64, -w64)  # a = sign(gap) w with gap = -g
    room = torch.where(a_pos > 0, 1 - z.double()[:, None], z.double()[:, None]).clamp_min(0) * (a_pos != 0)
    reachable = (a_pos.abs() * room).sum(2) >= need
    face = batch_norm(room.reshape(b * m, -1).to(w.dtype), norm).view(b, m)  # unreachable: d = sign(a) room
    bound = torch.where(reachable, holder, face.double())
    order = bound.argsort(dim=1, stable=True)
    best_norm = torch.full((b,), float("inf"), dtype=w.dtype, device=z.device)
    pick = torch.zeros(b, dtype=torch.long, device=z.device)
    d = torch.zeros_like(z)
    for r in range(m):
        cand = order[:, r]
        # the margin keeps a class whose float32 norm could round below its float64 bound
        open_ = bound[rows, cand] * (1 - 1e-6) <= best_norm.double()
        if not bool(open_.any()):
            break
        idx = open_.nonzero().squeeze(1)
        c = cand[idx]
        dc = hyperplane_step(z[idx], w[idx, c], -g[idx, c], norm)
        nc = batch_norm(dc, norm)
        better = (nc < best_norm[idx]) | ((nc == best_norm[idx]) & (c < pick[idx]))
        win = idx[better]
        best_norm[win], pick[win], d[win] = nc[better], c[better], dc[better]
    return pick, d


def _fab_run(model, x, y, start, best_norm, *, norm, mode, target, steps, alpha_max, eta, beta, nearest):
    """One FAB run from ``start`` ``[B,C,H,W]``: ``(best [B,C,H,W], best_norm [B])`` (updated in place)."""
    b = len(x)
    x0 = x.flatten(1)
    z = start.flatten(1).clone()
    best = x0.clone()
    for _ in range(steps):
        g, w, _ = linearise(model, z.view_as(x), y, mode, target)
        pick, d = nearest_hyperplane(z, w, g, norm, nearest)  # eq. 7
        ws, gs = w[torch.arange(b), pick], g[torch.arange(b), pick]
        # the same hyperplane seen from x_orig: g(x0) ~ g(z) + w . (x0 - z)
        d0 = hyperplane_step(x0, ws, -(gs + (ws * (x0 - z)).sum(1)), norm)
        n1, n0 = batch_norm(d, norm), batch_norm(d0, norm)
        alpha = (n1 / (n1 + n0).clamp_min(1e-12)).clamp(0, alpha_max)[:, None]
        z = ((1 - alpha) * (z + eta * d) + alpha * (x0 + eta * d0)).clamp(0, 1)
        with torch.no_grad():
            logits = model(z.view_as(x))
        hit = logits.argmax(1) == y if mode == "targeted" else logits.argmax(1) != y
        dist = batch_norm(z - x0, norm)
        better = hit & (dist < best_norm)
        best = torch.where(better[:, None], z, best)
        best_norm = torch.where(better, dist, best_norm)
        z = torch.where(hit[:, None], (1 - beta) * x0 + beta * z, z)  # eq. 10
    return best.view_as(x), best_norm


def _random_start(x, best_norm, radius, norm, gen):
    """``x + r`` in [0,1] with ``||r|| = min(radius, best_norm) / 2`` in a random direction (§3.2)."""
    if norm == "linf":
        r = torch.rand(x.shape, generator=gen, dtype=x.dtype).mul(2).sub(1).to(x.device)
    else:
        r = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    size = best_norm.clamp(max=radius) / 2
    r = r * view_as_images(size / batch_norm(r, norm).clamp_min(1e-12), r)
    return (x + r).clamp(0, 1)


def _fab_runs(model, x, y, *, norm, mode, targets, steps, restarts, alpha_max, eta, beta, restart_radius, seed,
              nearest="box"):
    """Best over ``restarts`` runs per target (``targets``: a list of ``[B]`` tensors or ``[None]``)."""
    if norm not in fab.norms:
        raise ValueError(f"fab supports {fab.norms}, got norm={norm!r}")
    x = x.detach()
    radius = RESTART_RADIUS[norm] if restart_radius is None else restart_radius
    gen = torch.Generator().manual_seed(seed)
    with frozen_eval(model):
        with torch.no_grad():
            logits0 = model(x)
        done = logits0.argmax(1) == y if mode == "targeted" else logits0.argmax(1) != y
        best = x.clone()
        best_norm = torch.where(done, 0.0, float("inf")).to(x.dtype)
        for target in targets:
            for run in range(restarts):
                start = x if run == 0 else _random_start(x, best_norm, radius, norm, gen)
                out, norms = _fab_run(model, x, y, start, best_norm.clone(), norm=norm, mode=mode, target=target,
                                      steps=steps, alpha_max=alpha_max, eta=eta, beta=beta, nearest=nearest)
                better = norms < best_norm
                best = torch.where(view_as_images(better, x), out, best)
                best_norm = torch.where(better, norms, best_norm)
    return torch.where(view_as_images(done, x), x, best)


_Fraction = Annotated[float, Range(ge=0, le=1)]


@register_attack(norms=("linf", "l2", "l1"), budget=False)
def fab(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    steps: Annotated[int, Range(ge=1)] = 100,
    restarts: Annotated[int, Range(ge=1)] = 1,
    alpha_max: _Fraction = 0.1,
    eta: Annotated[float, Range(ge=1)] = 1.05,
    beta: _Fraction = 0.9,
    restart_radius: Annotated[float, Range(gt=0)] | None = None,
    targeted: bool = False,
    seed: int = 0,
    nearest: Literal["box", "eq7"] = "box",
) -> torch.Tensor:
    """Minimal-norm FAB on ``x`` ``[B,C,H,W]`` in [0,1], labels ``y`` ``[B]`` (targets when ``targeted``).

    Args:
        norm: ``linf``, ``l2`` or ``l1``.
        steps: iterations per run (paper: 100).
        restarts: total runs; run 0 starts at ``x``, the others at random points (§3.2).
        alpha_max, eta, beta: the step rules of eq. 8-10 (paper: 0.1, 1.05, 0.9).
        restart_radius: the radius the random starts are drawn within (halved, and capped by the best norm
            found); None: the authors' 0.3 (linf), 1.0 (l2), 5.0 (l1).
        targeted: ``y`` holds target classes; the hyperplane is that of the target against the strongest
            other class at the iterate, success is being classified as the target.
        seed: the private generator of the random starts.
        nearest: the class whose hyperplane each step projects onto: ``box``, the shortest projection inside
            the box; ``eq7``, the least ``|g_l| / ||w_l||_q`` (eq. 7 as printed, the authors' code and
            adv-lib's). They part where the box binds, and end in different local minima
            (:func:`nearest_hyperplane`; BENCHMARKS.md, issue 10, session 10).

    Returns:
        ``[B,C,H,W]`` in [0,1]: per image the smallest adversarial found (re-checked by the model); ``x``
        where ``x`` already is adversarial or none was found.
    """
    return _fab_runs(model, x, y, norm=norm, mode="targeted" if targeted else "untargeted", targets=[None],
                     steps=steps, restarts=restarts, alpha_max=alpha_max, eta=eta, beta=beta,
                     restart_radius=restart_radius, seed=seed, nearest=nearest)


@register_attack(norms=("linf", "l2", "l1"), budget=False)
def fab_t(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    steps: Annotated[int, Range(ge=1)] = 100,
    target_classes: Annotated[int, Range(ge=1)] = 9,
    restarts: Annotated[int, Range(ge=1)] = 1,
    alpha_max: _Fraction = 0.1,
    eta: Annotated[float, Range(ge=1)] = 1.05,
    beta: _Fraction = 0.9,
    restart_radius: Annotated[float, Range(gt=0)] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """FAB-T (§3.3; AutoAttack's ``fab-t``): FAB against each of the ``target_classes`` most likely other
    classes in turn (hyperplane ``f_t - f_y`` only: one backward pass per step), best result kept.

    Untargeted in outcome: an image counts when it leaves ``y``. ``x`` ``[B,C,H,W]`` in [0,1], ``y`` ``[B]``
    true labels; the other options as in :func:`fab` (``restarts``: runs per target class). Returns the
    smallest adversarial per image, ``x`` where none was found.
    """
    with torch.no_grad(), frozen_eval(model):
        logits0 = model(x)
    m = max(1, min(target_classes, logits0.shape[1] - 1))
    order = logits0.scatter(1, y[:, None], float("-inf")).topk(m, dim=1).indices
    return _fab_runs(model, x, y, norm=norm, mode="fixed", targets=list(order.T), steps=steps, restarts=restarts,
                     alpha_max=alpha_max, eta=eta, beta=beta, restart_radius=restart_radius, seed=seed)


SCHEMAS = {"fab": schema_of(fab, "fab"), "fab_t": schema_of(fab_t, "fab_t")}
