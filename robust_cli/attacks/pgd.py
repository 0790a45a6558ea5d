"""Projected gradient descent (Madry et al. 2017; Kurakin et al. 2016 without the random start) in linf, l2
and l1 (sparse l1 descent, SLIDE, Tramèr & Boneh 2019), as used in Finlay et al. §4.2 and thesis §5.4.

Each step ascends the attack loss ``L`` (cross-entropy by default) along the steepest-ascent direction of
the norm, then projects back onto the eps-ball intersected with the box::

    delta <- Proj_{||r|| <= eps, x + r in [0,1]} (delta + alpha_t * s(grad_x L)),   alpha_t = a_t * eps
    linf: s(g) = sign(g)          l2: s(g) = g / ||g||_2
    l1:   s(g) = sign(g) * 1[|g_i| >= top-q quantile of the movable |g|] / (number of such coordinates)

A value already on a box face is not movable outwards, so it is left out of the l1 quantile (SLIDE).

What makes it at least as strong as the single-step attack at every eps (an iterative attack that loses to
FGSM on some images is a weak evaluation, see ``evaluation/checks.py``):

- the first run starts from ``x`` (a random start can only begin farther from the corner FGSM jumps to;
  later restarts start at random, Madry et al.);
- the single-step attack's own point (``fgsm`` in linf, ``fgm`` in l2, one full SLIDE step in l1) is a
  candidate, and the returned point is the best candidate, so success of FGSM at eps implies success here;
- the step lengths ``a_t`` follow a ``schedule`` (``cosine`` annealing by default for ``pgd``) whose sum
  exceeds Madry's 2.5 eps, so the iterates can reach any corner of the ball and still settle;
- the gradient direction is computed without cancellation or underflow (``attack_loss(scale_free=True)``):
  on confident points the float32 CE gradient loses its true-class term or is exactly zero;
- random starts are drawn from a private generator seeded by ``seed`` (0 by default), so the start is
  ``eps * u`` with the same ``u`` at every eps: success stays (close to) monotone in eps, which the
  bisection over eps assumes.

By default all steps run; the function returns, per sample, the misclassified candidate with the most
negative margin ``f_y - max_{j!=y} f_j`` over all steps and restarts (any point inside the budget will do for
the evaluation, and the deepest one survives its re-verification), else the candidate with the smallest
margin. ``early_stop`` (what the eps search asks for, where only success at each eps matters) drops a sample
from the batch at its first candidate past the boundary by a safe margin and returns that one.

The gradient of the default scale-free CE is formed in closed form on the logits and handed to the model's
backward (:func:`scale_free_ce_gradient`, bit for bit autograd's), and the bookkeeping shares its masked
logits: on small inputs a step's cost is mostly the dispatch of its small ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Annotated, Literal, Optional

import torch
from torch import nn

from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.geometry import as_batch_eps, batch_norm, enforce_budget, project, view_as_images
from robust_cli.attacks.losses import loss_value_gradient, objective_gradient, scale_free_ce_logit_gradient
from robust_cli.schema import Range, schema_of


def ascent_direction(grad: torch.Tensor, x_adv: torch.Tensor, norm: str, l1_top: float = 0.01) -> torch.Tensor:
    """Steepest-ascent direction of unit norm for a gradient ``grad`` ``[B,C,H,W]`` at ``x_adv`` in [0,1].

    linf: ``sign(g)``; l2: ``g / ||g||_2`` (zero rows stay zero); l1: signs of the ``ceil(l1_top * d)``
    largest ``|g_i|`` among the values that can still move in their ascent direction, scaled to unit l1
    norm (SLIDE; ``l1_top = 1`` divides the full sign vector by ``d``).
    """
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        n = batch_norm(grad, "l2")
        return grad / view_as_images(n.clamp_min(1e-30), grad)
    if norm == "l1":
        g = grad.flatten(1)
        xf = x_adv.flatten(1)
        movable = ~(((xf <= 0) & (g < 0)) | ((xf >= 1) & (g > 0)))
        mag = torch.where(movable, g.abs(), torch.zeros_like(g))
        k = max(1, math.ceil(l1_top * g.shape[1] - 1e-9))  # ceil, robust to float noise in l1_top * d
        kth = mag.topk(k, dim=1).values[:, -1:]
        chosen = (mag >= kth) & (mag > 0)
        s = torch.where(chosen, g.sign(), torch.zeros_like(g))
        count = chosen.sum(1, keepdim=True).clamp_min(1).to(g.dtype)
        return (s / count).view_as(grad)
    raise ValueError(f"no ascent direction for norm {norm!r}")


def random_start_in_ball(x: torch.Tensor, eps: torch.Tensor, norm: str, generator=None) -> torch.Tensor:
    """A random perturbation ``[B,C,H,W]`` in the eps-ball (uniform for linf and l2, sign-uniform l1 shell)."""
    d = x[0].numel()
    e = view_as_images(eps, x)
    if norm == "linf":
        return (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * e
    radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
    if norm == "l2":
        u = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    elif norm == "l1":
        # Laplace coordinates normalised in l1 are uniform on the l1 sphere
        u = -torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype).clamp_min(1e-12).log()
        u = u * (torch.randint(0, 2, x.shape, generator=generator, device=x.device) * 2 - 1).to(x.dtype)
    else:
        raise ValueError(f"no random start for norm {norm!r}")
    u = u / view_as_images(batch_norm(u, norm).clamp_min(1e-30), u)
    return u * e * view_as_images(radius, x)


def step_schedule(step_size: float, steps: int, schedule: str) -> list[float]:
    """Step lengths ``[steps]`` as fractions of eps: ``constant`` (Madry et al.) or ``cosine`` annealing.

    ``cosine``: ``step_size * (1 + cos(pi t / steps)) / 2`` for ``t = 0 .. steps-1`` (the SGDR curve of
    Loshchilov & Hutter without restarts): long early steps cross the ball, short late ones settle on the
    decision boundary instead of oscillating across it with a fixed step.
    """
    if schedule == "constant":
        return [step_size] * steps
    if schedule == "cosine":
        return [step_size * (1 + math.cos(math.pi * t / steps)) / 2 for t in range(steps)]
    raise ValueError(f"unknown step schedule {schedule!r}; expected 'constant' or 'cosine'")


def pgd_iterations(
    model: nn.Module,
    x: torch.Tensor,
    delta: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    *,
    eps: float | torch.Tensor,
    norm: str,
    step_sizes: Sequence[float],
    l1_top: float = 0.01,
) -> torch.Tensor:
    """Projected gradient ascent of a per-sample objective from ``x + delta``; returns the last ``delta``.

    One iteration per entry of ``step_sizes`` (Madry et al. 2017; the projected gradient method of Finlay et
    al., "Improved robustness to adversarial examples using Lipschitz regularization of the loss", §4.2)::

        delta <- Proj_{||r|| <= eps, x + r in [0,1]} (delta + a_t * eps * s(grad_x objective(model(x + delta))))

    with ``s`` the unit steepest-ascent direction of the norm (:func:`ascent_direction`) and ``Proj`` the
    exact projection onto ball ∩ box (:func:`robust_cli.attacks.geometry.project`), one :func:`projected_step`
    each: the inner maximisation of the ``pgd_at`` and ``trades`` defenses (``pgd``, ``ifgsm`` and ``bim`` take
    the same steps in :func:`projected_gradient`, with their bookkeeping). Call inside ``frozen_eval`` (or a
    defense's ``attack_mode``).

    Args:
        model: ``[B,C,H,W]`` in [0,1] -> logits ``[B,K]``.
        x: ``[B,C,H,W]`` the clean images in [0,1]; delta: ``[B,C,H,W]`` the start, inside ball ∩ box.
        objective: logits ``[B,K]`` -> ``[B]`` per-sample value to ascend (summed for the gradient, so each
            sample's gradient is its own).
        eps: float or ``[B]`` budget in ``norm`` (linf, l2 or l1).
        step_sizes: ``a_t``, each step's length as a fraction of eps (see :func:`step_schedule`).
        l1_top: l1 only, the fraction of values moved per step (SLIDE sparsity).

    Returns:
        ``delta`` ``[B,C,H,W]`` after the last step (detached), inside ball ∩ box up to rounding.
    """
    eps_t = as_batch_eps(eps, x)
    x = x.detach()
    e = view_as_images(eps_t, x)
    box = linf_box(x, e) if norm == "linf" else None
    delta = delta.detach()
    xa = x + delta
    for size in step_sizes:
        grad, _ = objective_gradient(model, xa, objective)
        xa, delta = projected_step(xa, delta, x, eps_t, ascent_direction(grad, xa, norm, l1_top), size, norm, box)
    return xa - x if box is not None else delta


def projected_step(xa: torch.Tensor, delta: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, direction: torch.Tensor,
                   size: float, norm: str, box: tuple[torch.Tensor, torch.Tensor] | None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One step ``size * eps`` along the unit ``direction`` ``[B,C,H,W]`` from ``xa = x + delta``, projected onto
    ball ∩ box: returns the new ``(xa, delta)``.

    linf (``box`` = :func:`linf_box`): ball ∩ box is the box ``[max(x - eps, 0), min(x + eps, 1)]``, fixed for
    the whole run, so the point itself is stepped and clamped against precomputed bounds (two ops, no
    ``x + delta`` / ``- x`` round trips; ``delta`` is passed through untouched and not kept up to date).
    l2/l1 (``box`` None): ``delta`` through the exact projection (:func:`robust_cli.attacks.geometry.project`).
    """
    e = view_as_images(eps, x)
    if box is not None:
        return torch.addcmul(xa, e, direction, value=size).clamp_(*box), delta
    delta = project(delta + size * e * direction, x, eps, norm)
    return x + delta, delta


def linf_box(x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)`` ``[B,C,H,W]``: the linf ball of radius ``e`` ``[B,1,1,1]`` around ``x`` intersected with [0,1]."""
    return (x - e).clamp_(min=0), (x + e).clamp_(max=1)


#: early stop: a sample leaves the batch once its margin is past the boundary by this much relative to
#: ``1 + max |logit|``, twice the eps search's ``adaptive_search.SAFETY``, so the search's re-test on another
#: batch (last-bit differences) still sees it adversarial and never mistakes a stopped success for a failure
EARLY_STOP_DEPTH = 2e-5
#: ``probe``: the run from the warm start takes ``steps // PROBE_RUN`` steps, each ``PROBE_STEP`` of the
#: first step of the schedule (constant)
PROBE_RUN, PROBE_STEP = 10, 0.8


def scale_free_ce_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, targeted: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad [B,C,H,W], logits [B,K], others [B,K])``: the input gradient of the scale-free CE at ``x``.

    The gradient of ``attack_loss(logits, y, "ce", targeted, scale_free=True)`` (``s = logsumexp_{j!=y} f_j
    - f_y``, negated when targeted) without autograd through the loss: ``ds/df`` is ``softmax_{j!=y}(f)``
    with ``-1`` at ``y``, formed as autograd's own ``logsumexp`` backward forms it (``exp(f - lse)``, the
    ``-inf`` at ``y`` giving 0, the gather's ``-1`` added there), so it is bit for bit the same and is
    handed to the model's backward as ``grad_outputs``. Saves the loss's ~12 autograd nodes a step, which
    dominate a small model's step (thesis-size inputs, 8x8 digits). ``others`` is ``logits`` with ``-inf``
    at ``y`` (detached), shared with the margin of :func:`projected_gradient`'s bookkeeping
    (:func:`robust_cli.attacks.losses.scale_free_ce_logit_gradient`).
    """
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        logits = model(xr)
        g, others, _ = scale_free_ce_logit_gradient(logits, y, targeted)
        (grad,) = torch.autograd.grad(logits, xr, g)
    return grad, logits.detach(), others


def projected_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float | torch.Tensor,
    steps: int,
    step_size: float,
    random_start: bool,
    restarts: int = 1,
    targeted: bool = False,
    loss: Literal["ce", "margin"] = "ce",
    l1_top: float = 0.01,
    seed: int | None = 0,
    schedule: Literal["constant", "cosine"] = "constant",
    single_step: bool = True,
    x_init: torch.Tensor | None = None,
    early_stop: bool = False,
    probe: bool = False,
    stopped: torch.Tensor | None = None,
) -> torch.Tensor:
    """The iterative engine behind ``pgd``, ``ifgsm`` and ``bim`` (see the module docstring).

    Args:
        x: ``[B,C,H,W]`` in [0,1]. y: ``[B]`` labels, or target labels when ``targeted``.
        eps: budget, float or ``[B]``. step_size: step length as a fraction of eps (the first of the
            ``schedule``).
        random_start: restarts after the first start from a uniform point of the eps-ball; the first run
            always starts from ``x`` itself.
        restarts: runs; a sample keeps its deepest adversarial iterate over all of them.
        seed: seeds the random starts (a private generator; the global RNG is not touched). The same seed
            gives the same unit draws at every eps, so a start is ``eps * u``: continuous in eps, which keeps
            success close to monotone in eps for the bisection. ``None``: draw from the global RNG.
        schedule: ``constant`` or ``cosine`` step lengths (``step_schedule``).
        single_step: also try the single-step attack's point (``fgsm`` in linf, ``fgm`` in l2, with the same
            ``loss`` and ``targeted``; one full step of length eps in l1), so this attack succeeds wherever
            that one does, at the same eps. It is one full step along the first run's first direction
            (taken at ``x`` itself, so exactly theirs): one forward pass, no gradient of its own.
        x_init: ``[B,C,H,W]`` a warm start (e.g. the adversarial an eps search found at a larger eps): its
            projection onto ball ∩ box is a candidate (one forward pass) and the start of the second run in
            place of its random start. The first run still starts at ``x``: started from the projection (a
            corner of the ball in linf) PGD ended weaker than from ``x`` on 12% of MNIST images (BENCHMARKS.md).
        early_stop: a sample leaves the batch (no more passes, in this run or the later ones) as soon as a
            candidate is adversarial with margin below ``-EARLY_STOP_DEPTH * (1 + max |logit|)`` (checked on
            the logits every step computes anyway; the working tensors are compacted to the samples left).
            Success at this eps is then decided at least as strongly as without it (the same iterates up to
            the stop), but the point returned is the first deep enough one, not the deepest: for an eps
            search, where only success at each eps matters, a success costs the steps it took instead of all
            of them.
        probe: with ``x_init``, only one short run from its projection (``steps // PROBE_RUN`` constant steps
            of ``PROBE_STEP * step_size``; the projection is tested by the forward of the run's first gradient,
            not by one of its own), no run from ``x``: a probe of the eps search, whose success is an
            adversarial like any other and whose failure proves nothing (the search certifies a failure with
            the full attack). Without ``x_init`` it is ignored.
        stopped: ``[B]`` float, supplied by the caller with ``early_stop``: set in place, per sample, to the
            gradient steps it took before it left the batch (the attack's own success test, past the boundary
            by ``EARLY_STOP_DEPTH``), as a fraction of ``steps`` (0 where the warm start's own test stopped
            it; a probe tests its start by its first gradient's forward, 1 step), ``inf`` where it never
            stopped. An eps search then needs no forward pass to learn which samples failed (it re-verifies
            only the others), and a success that took most of a run tells it that eps is near the attack's
            threshold.

    Returns:
        ``[B,C,H,W]`` in [0,1] with ``||x_adv - x|| <= eps`` per sample.
    """
    eps_t = as_batch_eps(eps, x)
    x = x.detach()
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device).manual_seed(seed)
    sizes = step_schedule(step_size, steps, schedule)
    best = x.clone()
    # per sample the lowest score (margin to cross, < 0 once adversarial) of the candidates so far. Keeping the
    # lowest keeps the deepest adversarial (it survives the evaluation's re-run on another batch) and, where
    # none is adversarial, the nearest miss: a point is adversarial iff its score is < 0 (ties of the top two
    # logits aside, where ``argmax`` decides), so "adversarial first, then the lowest score" is this one test
    best_score = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)  # early_stop: left the batch
    # ``stopped``: the gradient steps each sample took before it left the batch (inf: never), and those of the
    # runs before the current one
    took = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
    before = [0]
    fused = loss == "ce"  # scale_free_ce_gradient, whose masked logits keep() reuses

    def keep(idx: torch.Tensor | None, point: torch.Tensor, logits: torch.Tensor, others: torch.Tensor | None,
             ys: torch.Tensor) -> torch.Tensor | None:
        """Keep ``point`` ``[b,C,H,W]`` where it beats the best of the samples ``idx`` (``None``: all);
        ``early_stop``: return ``[b]`` which of them are now deep enough to stop."""
        if others is None:
            others = logits.scatter(1, ys[:, None], float("-inf"))
        score = logits.gather(1, ys[:, None]).squeeze(1) - others.amax(dim=1)
        if targeted:
            score = score.neg_()
        if idx is None:
            better = score < best_score
            torch.where(view_as_images(better, point), point, best, out=best)  # in place: no allocation
            torch.where(better, score, best_score, out=best_score)
        else:
            held = best_score[idx]
            better = score < held
            best[idx] = torch.where(view_as_images(better, point), point, best[idx])
            best_score[idx] = torch.where(better, score, held)
        if not early_stop:
            return None
        return score < -EARLY_STOP_DEPTH * (1 + logits.abs().amax(dim=1))

    def gradient(xa: torch.Tensor, ys: torch.Tensor):
        if fused:
            return scale_free_ce_gradient(model, xa, ys, targeted)
        _, grad, logits = loss_value_gradient(model, xa, ys, loss, targeted)
        return grad, logits, None

    def rows(idx: torch.Tensor | None, xs: torch.Tensor) -> torch.Tensor:
        """The batch rows ``[b]`` of the samples being worked on (``idx``, or all ``b`` of ``xs``)."""
        return torch.arange(xs.shape[0], device=x.device) if idx is None else idx

    def run(delta: torch.Tensor, candidate: bool, sizes: Sequence[float]) -> None:
        """One run of ``len(sizes)`` steps from ``x + delta`` ``[B,C,H,W]`` on the samples not done."""
        idx = None if not early_stop else (~done).nonzero().squeeze(1)
        xs, ys, eps_s, d = x, y, eps_t, delta.detach()
        if idx is not None:
            if not idx.numel():
                return
            if idx.numel() < x.shape[0]:
                xs, ys, eps_s, d = x[idx], y[idx], eps_t[idx], d[idx]
            else:
                idx = None
        es = view_as_images(eps_s, xs)
        box = linf_box(xs, es) if norm == "linf" else None
        xa = xs + d
        for t, size in enumerate(sizes):
            grad, logits, others = gradient(xa, ys)
            direction = ascent_direction(grad, xa, norm, l1_top)
            stop = keep(idx, xa, logits, others, ys)
            if candidate:
                # The first iterate of the first run is x itself and its direction is exactly what fgsm
                # (linf) and fgm (l2) compute (the same scale-free loss at the same point, the same unit
                # step), so one full step along it is their point bit for bit, and no gradient is spent on it
                # twice.
                candidate = False
                one = enforce_budget(xs + es * direction, xs, eps_s, norm)
                with torch.no_grad():
                    more = keep(idx, one, model(one), None, ys)
                if stop is not None:
                    stop |= more
            if stop is not None and bool(stop.any()):
                ids = rows(idx, xs)
                done[ids[stop]] = True
                took[ids[stop]] = before[0] + t + 1
                live = ~stop
                if not bool(live.any()):
                    return
                idx = ids[live]
                xs, ys, eps_s, es, xa, direction = xs[live], ys[live], eps_s[live], es[live], xa[live], direction[live]
                if box is not None:
                    box = (box[0][live], box[1][live])
                else:
                    d = d[live]
            xa, d = projected_step(xa, d, xs, eps_s, direction, size, norm, box)
        with torch.no_grad():
            stop = keep(idx, xa, model(xa), None, ys)
        before[0] += len(sizes)
        if stop is not None:
            done[rows(idx, xs)[stop]] = True
            took[rows(idx, xs)[stop]] = before[0]

    def finish() -> torch.Tensor:
        if stopped is not None:
            stopped.copy_(took / steps)
        return enforce_budget(best, x, eps_t, norm)

    runs = max(1, restarts) if random_start else 1  # without random starts every run would be the same
    with frozen_eval(model):
        start = None
        if x_init is not None:
            start = project(x_init.detach().to(x).clamp(0, 1) - x, x, eps_t, norm)
            if probe:
                # only a short run from the warm start: an adversarial found at a slightly larger eps and
                # projected onto this ball is next to the boundary, and a few small steps usually cross it
                # again, for a fraction of a run. The start is the run's first iterate, so the forward of its
                # first gradient tests it as a candidate (no forward of its own: most probes' starts are not
                # adversarial, and one that is costs a backward instead)
                run(start, candidate=False, sizes=[step_size * PROBE_STEP] * max(1, steps // PROBE_RUN))
                return finish()
            with torch.no_grad():
                stop = keep(None, x + start, model(x + start), None, y)
            if stop is not None:
                done |= stop
                took[stop] = 0
        for r in range(runs):
            if r == 1 and start is not None:
                delta = start  # the warm start replaces the first random start (the first run stays at x)
            elif r > 0:
                delta = project(random_start_in_ball(x, eps_t, norm, generator), x, eps_t, norm)
            else:
                delta = torch.zeros_like(x)
            # the single step's point, from the first gradient of the first run
            run(delta, candidate=single_step and r == 0, sizes=sizes)
    return finish()


@register_attack(norms=("linf", "l2", "l1"), budget=True)
def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float | torch.Tensor,
    steps: Annotated[int, Range(ge=1)] = 50,
    step_size: Annotated[float, Range(gt=0)] = 0.25,
    random_start: bool = True,
    restarts: Annotated[int, Range(ge=1)] = 1,
    targeted: bool = False,
    loss: Literal["ce", "margin"] = "ce",
    l1_top: Annotated[float, Range(gt=0, le=1)] = 0.01,
    seed: int | None = 0,
    schedule: Literal["constant", "cosine"] = "cosine",
    single_step: bool = True,
    x_init: Optional[torch.Tensor] = None,
    early_stop: bool = False,
    probe: bool = False,
    stopped: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """PGD from ``x``, then ``restarts - 1`` random starts; l1 by sparse l1 descent (thesis §5.4: 1% sparsity).

    ``x`` ``[B,C,H,W]`` in [0,1], ``eps`` float or ``[B]``; returns ``[B,C,H,W]`` in [0,1] within eps.
    Steps ``alpha_t = a_t * eps`` with ``a_t`` cosine-annealed from ``step_size`` (0.25: the steps add up to
    ``steps * step_size / 2 = 6.25 eps``, above Madry's 2.5 eps, so the far corner of the ball is reachable)
    and the ``fgsm``/``fgm`` point as a candidate. ``schedule="constant", step_size=2.5/steps,
    single_step=False, restarts=1`` is Madry et al.'s PGD from the clean point. See ``projected_gradient``.

    Args:
        steps: iterations per run.
        step_size: the first step as a fraction of eps (the schedule shrinks the later ones).
        random_start: the runs after the first (which starts at ``x``) start at a random point of the ball.
        restarts: runs in all.
        targeted: ``y`` holds target labels.
        loss: ``ce`` (cross-entropy) or ``margin`` (Carlini-Wagner), see ``attack_loss``.
        l1_top: l1 only: the fraction of values moved per step (SLIDE sparsity).
        seed: seeds the random starts, the same draws at every eps (``None``: the global RNG).
        schedule: ``cosine`` or ``constant`` step lengths.
        single_step: the ``fgsm``/``fgm`` point is a candidate (never weaker than the single step).
        x_init: supplied by the caller (the eps search: the adversarial of its previous round), ``[B,C,H,W]``:
            a candidate, and the second run's start (see ``projected_gradient``).
        early_stop: set by the eps search: an image leaves the batch once adversarial (by a safe margin), so
            a success costs the steps it took; the point returned is then the first such iterate, not the
            deepest (see ``projected_gradient``).
        probe: set by the eps search: only a short run from ``x_init`` (see ``projected_gradient``).
        stopped: set by the eps search: ``[B]`` float, filled with the steps (a fraction of ``steps``) after
            which early stop took each sample out of the batch, ``inf`` where it did not (see
            ``projected_gradient``).
    """
    return projected_gradient(model, x, y, norm=norm, eps=eps, steps=steps, step_size=step_size,
                              random_start=random_start, restarts=restarts, targeted=targeted, loss=loss,
                              l1_top=l1_top, seed=seed, schedule=schedule, single_step=single_step,
                              x_init=x_init, early_stop=early_stop, probe=probe, stopped=stopped)


SCHEMAS = {"pgd": schema_of(pgd, "pgd")}
