"""The per-image eps search of a budget attack to a stated precision, at a few attacks' cost (``adaptive``).

A budget attack's distance for an image is the smallest eps at which it succeeds (Finlay et al., "Improved
robustness to adversarial examples using Lipschitz regularization of the loss", §4, Definition 4.1). The
plain bisection of ``eps_search.py`` attacks every image at ~11 eps over ``[0, box radius]``; this search
keeps, per image, a bracket ``(lo, hi]``: the attack failed at ``lo`` and a re-verified adversarial of size
``hi`` is held, and it stops per image once ``hi - lo <= tol`` (``tol = rtol * hi``, or the absolute
``eps_tol``). What keeps it cheap:

- **the batch shrinks**: every round attacks only the images still unresolved;
- **the upper bracket comes first and is tight**: the first eps is the distance a minimal-norm attack of the
  same evaluation found (``upper``, times ``1 + rtol``) where there is one, the box radius otherwise;
  after every success the adversarial is pulled towards ``x`` (its projection onto smaller balls, tested
  with forward passes only) to the smallest size at which it stays adversarial;
- **no attack where a forward pass decides**: at each new eps the held adversarial, projected onto that
  ball, is tested first; an image it already breaks is a success with no attack run (the early stop);
- **warm starts**: an attack that takes ``x_init`` starts from that projection;
- **the next eps is interpolated** from the margins ``m = f_y - max_{j!=y} f_j`` at the two ends of the
  bracket (regula falsi with the Illinois correction, kept ``tol / 2`` inside the bracket), which on a
  locally linear model lands on the boundary in one or two rounds where bisection needs ``log2(hi / tol)``.

An attack that stops early per image and takes probes (``pgd``) is searched by :func:`probe_search`
instead: with early stop a success costs only the steps it took, so hi is walked down by cheap short runs
from the held adversarial, and the full attack runs where its failure resolves the image.

Every success is re-verified on the bare model (misclassified, within the eps it was asked for).
"""

from __future__ import annotations

import functools

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from robust_cli.attacks.contract import frozen_eval
from robust_cli.attacks.geometry import batch_norm, project, view_as_images
from robust_cli.attacks.losses import margin

#: a success needs a margin below ``-SAFETY * (1 + max |logit|)`` (float32 noise between batch layouts)
SAFETY = 1e-5
#: forward-only bisection rounds pulling a held adversarial towards ``x`` (its size to 2^-8 of itself)
PULL_STEPS = 8
#: :func:`probe_search`: the probes' step down from hi before any of them failed (a fraction of hi); the
#: walk's step after a full attack's success (in ``rtol``); the first bracket above a minimal-norm attack's
#: distance (in ``rtol``); rounds per image per ``max_rounds``. Tuned on MNIST LeNet-5, pgd linf and l2
#: (``scripts/bench_search.py``; the variants tried are in BENCHMARKS.md)
DESCENT, AFTER_FULL, FIRST, ROUND_FACTOR = 0.2, 2.0, 5.0, 4
#: :func:`probe_search`: a full attack's success that took at least this fraction of its steps is followed by
#: the full attack at ``hi - 0.9 tol`` instead of probes. MNIST LeNet-5, pgd linf (``scripts/bench_search.py``):
#: after successes that took half the run or more, 3 of 152 probes succeeded, after those that took 0.3-0.5 of
#: it 39 of 103; 0.2-0.5 gave 2.80-2.84x one attack, 0 (never a probe after a full success) 2.98x with images
#: left unresolved (0.9 tol a call from far above)
DIRECT = 0.35


def within(x: torch.Tensor, p: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """``p`` ``[B,C,H,W]`` (in the box) moved into the eps-ball ``[B]`` around ``x``: clipped for linf, scaled
    towards ``x`` for l2/l1 (inside the box, which is convex and holds ``x``)."""
    r = p - x
    if norm == "linf":
        return x + project(r, x, eps, norm)
    n = batch_norm(r, norm)
    scale = torch.where(n > eps, eps / n.clamp_min(1e-30), torch.ones_like(n))
    return (x + r * view_as_images(scale, r)).clamp(0, 1)


def verify(model: nn.Module, sign: float, norm: str, xs: torch.Tensor, ys: torch.Tensor, p: torch.Tensor,
           eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(adversarial [b] bool, margin [b], size [b])`` of points ``p`` ``[b,C,H,W]`` asked to be within
    ``eps`` ``[b]`` of ``xs``, on the bare ``model``; ``margin`` is ``sign * losses.margin`` (< 0 once
    adversarial: ``sign = -1`` when ``ys`` holds targets)."""
    with torch.no_grad(), frozen_eval(model):
        logits = model(p)
    m = sign * margin(logits, ys)
    size = batch_norm(p - xs, norm)
    # past the boundary by more than the last bits that another batch composition can change: the
    # caller re-classifies in batches of its own, and a point it sees as clean would be a failure
    deep = m < -SAFETY * (1 + logits.abs().amax(1))
    return deep & (size <= eps * (1 + 1e-6)), m, size


def pull(model: nn.Module, sign: float, norm: str, x: torch.Tensor, y: torch.Tensor, best: torch.Tensor,
         lo: torch.Tensor, hi: torch.Tensor, idx: torch.Tensor,
         finer_than: Callable[[torch.Tensor], torch.Tensor] | None = None, m_hi: torch.Tensor | None = None) -> None:
    """Forward-only bisection of the held adversarials' sizes on ``(lo, hi]`` for the images ``idx``: each
    ``best[i]`` ``[C,H,W]`` is moved towards ``x[i]`` (:func:`within`) while it stays adversarial (``verify``),
    ``PULL_STEPS`` rounds at most; ``best``, ``hi`` (and ``m_hi``, the margin at hi, where given) are updated in
    place wherever a smaller one is found. ``finer_than``: ``hi [b] -> [b]``, an image stops once its bracket
    is that narrow (finer is wasted where only an attack's failure moves ``lo``); None: every round for all."""
    a, b = lo[idx].clone(), hi[idx].clone()
    p0, xs, ys = best[idx], x[idx], y[idx]
    on = torch.arange(len(idx), device=idx.device)
    for _ in range(PULL_STEPS):
        if finer_than is not None:
            on = (b - a > finer_than(b)).nonzero().squeeze(1)
            if not on.numel():
                break
        mid = (a[on] + b[on]) / 2
        p = within(xs[on], p0[on], mid, norm)
        ok, m, size = verify(model, sign, norm, xs[on], ys[on], p, mid)
        b[on] = torch.where(ok, size, b[on])
        a[on] = torch.where(ok, a[on], mid)
        keep = ok & (size < hi[idx[on]])
        k = idx[on][keep]
        best[k], hi[k] = p[keep], size[keep]
        if m_hi is not None:
            m_hi[k] = m[keep]


def tolerance(rtol: float, eps_tol: float | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``hi [b] -> tol [b]``: the resolution asked of each distance, ``rtol * hi`` or the absolute ``eps_tol``."""
    return lambda hi: torch.full_like(hi, float(eps_tol)) if eps_tol is not None else rtol * hi


def adaptive_search(
    attack: Callable[..., torch.Tensor],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    params: dict[str, Any],
    *,
    hi0: torch.Tensor,
    rtol: float = 0.01,
    eps_tol: float | None = None,
    max_rounds: int = 10,
    upper: torch.Tensor | None = None,
    attack_model: nn.Module | None = None,
    warm_start: bool = False,
    probe: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_adv [B,C,H,W], dist [B], resolution [B])`` of ``attack`` searched per image to ``tol``.

    Args:
        attack: a budget attack, ``attack(model, x, y, norm=, eps=[b], **params) -> x_adv``.
        model: the bare model (``[B,C,H,W]`` in [0,1] -> logits), for every success test and margin.
        x: ``[B,C,H,W]`` correctly classified images in [0,1]; y: ``[B]`` labels.
        params: the attack's options. hi0: ``[B]`` the box radius (the largest eps that means anything).
        rtol: relative tolerance (of the distance); eps_tol: absolute tolerance, replaces ``rtol``.
        max_rounds: attack rounds after the first bracket (images unresolved then keep their bracket).
        upper: ``[B]`` distances of a minimal-norm attack on the same images (``inf`` where none).
        attack_model: the model handed to the attack (a counting wrapper); default ``model``.
        warm_start: the attack takes ``x_init``.
        probe: the attack takes ``x_init``, ``early_stop``, ``probe`` and ``stopped`` (``pgd``): the search of
            :func:`probe_search` instead of regula falsi.

    Returns:
        ``x_adv`` (``x`` where never adversarial), ``dist`` the size of ``x_adv`` (``inf`` where the attack
        failed even at ``hi0``), ``resolution`` ``hi - lo`` (0 where ``inf``).
    """
    if probe:
        return probe_search(attack, model, x, y, norm, params, hi0, rtol, eps_tol, max_rounds, upper, attack_model)
    attack_model = model if attack_model is None else attack_model
    # the margin left to cross, < 0 once adversarial: ``y`` holds targets when targeted, and success is then
    # the target on top (the sign of ``losses.margin`` flipped)
    sign = -1.0 if params.get("targeted") else 1.0
    B = x.shape[0]
    inf = torch.full((B,), float("inf"), dtype=x.dtype, device=x.device)

    tol = tolerance(rtol, eps_tol)

    test = functools.partial(verify, model, sign, norm)  # (xs, ys, p, eps) -> (adversarial, margin, size)

    def run(idx: torch.Tensor, eps: torch.Tensor, start: torch.Tensor | None) -> torch.Tensor:
        extra = {"x_init": start} if warm_start and start is not None else {}
        out = attack(attack_model, x[idx], y[idx], norm=norm, eps=eps, **params, **extra)
        return out.detach().clamp(0, 1)

    best = x.clone()
    hi, lo = inf.clone(), torch.zeros_like(inf)
    with torch.no_grad(), frozen_eval(model):
        m_lo = sign * margin(model(x), y)  # at eps = 0: the clean point
    m_hi = torch.zeros_like(m_lo)
    side = torch.zeros(B, dtype=torch.long, device=x.device)  # the end moved last: -1 lo, +1 hi

    def success(idx: torch.Tensor, p: torch.Tensor, m: torch.Tensor, size: torch.Tensor) -> None:
        best[idx], hi[idx], m_hi[idx] = p, size, m
        pull(model, sign, norm, x, y, best, lo, hi, idx, m_hi=m_hi)

    # the first bracket: a little above the minimal-norm attack's distance where there is one (a failure
    # there is a lower end), the box radius otherwise (a failure there: no distance)
    first = hi0 if upper is None else torch.where(torch.isfinite(upper), torch.minimum(upper * (1 + rtol), hi0), hi0)
    for eps0 in (first, hi0):
        idx = (torch.isinf(hi) & (eps0 > lo)).nonzero().squeeze(1)
        if not idx.numel():
            break
        p = run(idx, eps0[idx], None)
        ok, m, size = test(x[idx], y[idx], p, eps0[idx])
        if ok.any():
            success(idx[ok], p[ok], m[ok], size[ok])
        fail = idx[~ok]
        lo[fail], m_lo[fail] = eps0[fail], m[~ok]
    lo = torch.where(torch.isinf(hi), torch.zeros_like(lo), lo)

    for _ in range(max_rounds):
        active = torch.isfinite(hi) & (hi - lo > tol(hi))
        idx = active.nonzero().squeeze(1)
        if not idx.numel():
            break
        a, b, t_i = lo[idx], hi[idx], tol(hi[idx])
        ma, mb = m_lo[idx].clamp_min(1e-12), m_hi[idx].clamp_max(-1e-12)
        frac = ma / (ma - mb)  # where the margin, linear between the ends, crosses 0
        guess = a + frac * (b - a)
        guess = torch.minimum(torch.maximum(guess, a + t_i / 2), b - t_i / 2)
        # the held adversarial, projected onto the new ball: a success without any attack where it still is
        start = within(x[idx], best[idx], guess, norm)
        ok, m, size = test(x[idx], y[idx], start, guess)
        todo = ~ok
        if todo.any():
            sub = idx[todo]
            p = run(sub, guess[todo], start[todo])
            ok2, m2, size2 = test(x[sub], y[sub], p, guess[todo])
            start[todo], m[todo], size[todo] = p, m2, size2
            ok[todo] = ok2
        if ok.any():
            success(idx[ok], start[ok], m[ok], size[ok])
        f = idx[~ok]
        lo[f], m_lo[f] = guess[~ok], m[~ok]
        # Illinois: an end that stayed put twice in a row has its margin halved, so the next guess moves
        # towards it (plain regula falsi creeps from one side when the margin is not linear in eps)
        moved = torch.where(ok, 1, -1)
        stale = moved == side[idx]
        m_lo[idx[stale & ok]] /= 2
        m_hi[idx[stale & ~ok]] /= 2
        side[idx] = moved

    found = torch.isfinite(hi)
    resolution = torch.where(found, hi - lo, torch.zeros_like(hi))
    return best, hi, resolution


def probe_search(attack: Callable[..., torch.Tensor], model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str,
                 params: dict[str, Any], hi0: torch.Tensor, rtol: float, eps_tol: float | None, max_rounds: int,
                 upper: torch.Tensor | None, attack_model: nn.Module | None) -> tuple[torch.Tensor, ...]:
    """:func:`adaptive_search` (its arguments, all given, and its returns) for an attack with early stop and
    probes (``pgd``).

    The attack is called three ways, all with ``early_stop``, so a success costs only the steps it took, and
    with ``stopped``, its report of which samples it stopped (past the boundary by its own margin) and after
    how many steps: only those are re-verified on the bare model; a sample it did not stop is a failure with
    no forward pass spent on it.

    - **the first bracket**, as in :func:`adaptive_search`, but a little higher above a minimal-norm
      attack's distance (``FIRST * rtol``: a success well above the boundary is cheap, one at it is not);
      the success is pulled towards ``x`` by forward passes;
    - **probes** (``probe=True``: a short run from the held adversarial projected onto the new ball, a tenth
      of a run at most): they walk hi down, a step ``DESCENT`` of hi at a time until one fails, then bisect
      between that failure and hi. A probe's failure is only a hint (a short warm run is weaker than the
      attack), so it never moves ``lo``;
    - **the full attack** only where its failure would resolve the image: once the probes have narrowed
      ``(hint, hi]`` to the tolerance, at ``hi - 0.9 tol``. A failure there is the lower end (the image is
      done: one full failure per image is the least any search can do); a success moves hi, and the walk
      resumes from that adversarial (the full attack from ``x`` often gets past where a warm walk stalls),
      unless the success took ``DIRECT`` of the run or more: PGD then crossed late, near its threshold at this
      eps, where the probes from its first adversarial rarely get lower, and the next call is the full attack
      again at ``hi - 0.9 tol``.

    Rounds: up to ``ROUND_FACTOR * max_rounds`` per image, most of them probes. A round is either the probes
    of every image due for one or, once none is left to probe, the full attack on every image due for it in
    one call: an image's own sequence of calls is the same either way, but a call runs up to a whole run's
    steps however few images are left in it, and on a small batch a step's cost is mostly per call.
    MNIST LeNet-5 (BENCHMARKS.md): 2.7-2.8x one attack's passes per image where the regula falsi search took
    5.5-6.3x; one image in 96 weaker than the bisection beyond the tolerance, where PGD itself fails at an
    eps between two at which it succeeds.
    """
    attack_model = model if attack_model is None else attack_model
    sign = -1.0 if params.get("targeted") else 1.0  # as in adaptive_search
    tol = tolerance(rtol, eps_tol)

    def run(idx: torch.Tensor, eps: torch.Tensor, start: torch.Tensor | None, probe: bool = False):
        """``(ok [b], x_adv [b,C,H,W], size [b], took [b])``: the attack on ``idx`` at ``eps``; the samples it
        reports stopped (its own success test) re-verified, the others failures with no forward pass spent on
        them; ``took``: the steps a success took, a fraction of the attack's run."""
        extra = {"x_init": start} if start is not None else {}
        took = torch.zeros_like(eps)
        out = attack(attack_model, x[idx], y[idx], norm=norm, eps=eps, early_stop=True, probe=probe,
                     stopped=took, **params, **extra).detach().clamp(0, 1)
        ok, size = torch.zeros(idx.shape, dtype=torch.bool, device=x.device), torch.zeros_like(eps)
        s = torch.isfinite(took).nonzero().squeeze(1)
        if s.numel():
            ok[s], _, size[s] = verify(model, sign, norm, x[idx[s]], y[idx[s]], out[s], eps[s])
        return ok, out, size, took

    best = x.clone()
    hi, lo = torch.full_like(hi0, float("inf")), torch.zeros_like(hi0)
    hint = torch.zeros_like(hi0)  # the largest eps below hi where a probe failed (not a bound)
    step = torch.full_like(hi0, DESCENT)  # the probes' next step down from hi, a fraction of hi
    # the full attack's last success took DIRECT of its run or more: the next round is the full attack again
    direct = torch.zeros(hi0.shape, dtype=torch.bool, device=hi0.device)

    first = hi0 if upper is None else torch.where(torch.isfinite(upper), torch.minimum(upper * (1 + FIRST * rtol), hi0),
                                                  hi0)
    for eps0 in (first, hi0):
        idx = (torch.isinf(hi) & (eps0 > lo)).nonzero().squeeze(1)
        if not idx.numel():
            break
        ok, p, size, _ = run(idx, eps0[idx], None)
        if ok.any():
            best[idx[ok]], hi[idx[ok]] = p[ok], size[ok]
            # the held adversarial as small as it stays, to half the tolerance
            pull(model, sign, norm, x, y, best, lo, hi, idx[ok], finer_than=lambda b: tol(b) / 2)
        lo[idx[~ok]] = eps0[idx[~ok]]
    lo = torch.where(torch.isinf(hi), torch.zeros_like(lo), lo)

    calls = torch.zeros(hi0.shape, dtype=torch.long, device=hi0.device)  # per image, rounds it took part in
    # every round calls the attack on some image, so the cap per image ends the loop; this one only bounds the
    # rounds where images wait (linf on MNIST: 59 rounds, 7 of them full attacks, against 40 per image)
    for _ in range(4 * ROUND_FACTOR * max_rounds):
        idx = (torch.isfinite(hi) & (hi - lo > tol(hi)) & (calls < ROUND_FACTOR * max_rounds)).nonzero().squeeze(1)
        if not idx.numel():
            break
        full = (hi[idx] - torch.maximum(hint[idx], lo[idx]) <= tol(hi[idx])) | direct[idx]
        if not full.all():
            # the images due for the full attack wait until no image is left to probe, then go in one call
            idx, full = idx[~full], full[~full]
        calls[idx] += 1
        a, b, t_i = lo[idx], hi[idx], tol(hi[idx])
        h = torch.maximum(hint[idx], a)
        probe_at = torch.where(h > a, (h + b) / 2, b * (1 - step[idx]))
        guess = torch.where(full, b - 0.9 * t_i, torch.maximum(probe_at, a + t_i / 2))
        # the held adversarial projected onto the new ball: the attack's warm start and first candidate (it
        # is tested there, and a sample it still breaks stops at once)
        start = within(x[idx], best[idx], guess, norm)
        is_full = bool(full[0])  # a round is all probes or all full attacks (above)
        ok, start, size, took = run(idx, guess, start, probe=not is_full)
        # a full failure is the lower end; a probe's only a hint
        (lo if is_full else hint)[idx[~ok]] = guess[~ok]
        if ok.any():
            k = idx[ok]
            best[k], hi[k] = start[ok], size[ok]
            # a probe's failure at or above the new hi is contradicted (the full attack got past it): forget it
            hint[k] = torch.where(hint[k] < hi[k], hint[k], lo[k])
            # after a full attack's success the walk resumes with small steps (it is near the boundary), and
            # every probe's success doubles the step (up to DESCENT)
            step[k] = torch.where(full[ok], torch.full_like(step[k], AFTER_FULL * rtol),
                                  (step[k] * 2).clamp_max(DESCENT))
            # a full attack's success that took at least DIRECT of its run came from near its threshold, where
            # the probes from its first adversarial hardly ever get lower: the full attack again, no probes
            direct[k] = full[ok] & (took[ok] >= DIRECT)

    found = torch.isfinite(hi)
    resolution = torch.where(found, hi - lo, torch.zeros_like(hi))
    return best, hi, resolution
