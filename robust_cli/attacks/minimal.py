"""``minimal``: the per-image worst case over a strong set of attacks, each started from the running best.

For the chosen norm the members (``<norm>_attacks``, names of registered attacks) run in order on the same
images. Each member that takes ``x_init`` starts from the best adversarial found so far (Brendel & Bethge
2019, "Accurate, reliable and fast robustness evaluation", §3, start from any adversarial and refine it);
each result is re-checked with the model and the smallest misclassified point per image is kept. A
refiner (``refiners``: B&B, which follows the boundary from its start and so ends in that start's basin)
instead runs from ``refine_starts`` points per image, batched: the running best, then the best member
points of other classes, then other distinct ones (``_ranked_starts``), and further from randomly perturbed
copies of the best (``random_starts``) and, in l2, from points of FMN targeted at each image's likeliest other
classes (``target_starts``: classes no member ends in). The
returned image is thus never larger than any member's, per image: the ensemble evaluation of Croce & Hein
(2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks",
§4), read as a minimal-norm attack.

Members are resolved by name when the attack runs (``robust_cli.attacks.list_attacks()``), so attacks added
later (``fmn``, ``fab``, ``cw``, ``ddn``, ``alma``, ``ead``) take part as soon as they are registered; a name
that is not registered, or whose attack does not support the norm, is skipped with a log line. A budget
(eps-bounded) member gets a per-image bisection of eps on ``[0, running best]`` (``search_steps`` rounds; the
box radius where nothing was found yet), its successes re-checked within their eps, as the evaluation's eps
search does.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Sequence
from typing import Annotated

import torch
from torch import nn

from robust_cli.attacks.best import Best, perturbation_size
from robust_cli.attacks.contract import frozen_eval, norms_with, register_attack
from robust_cli.attacks.geometry import view_as_images
from robust_cli.schema import Check, Range, schema_of

log = logging.getLogger(__name__)


def parse_member(entry: str) -> tuple[str, dict]:
    """``"alma"`` -> ``("alma", {})``; ``"alma(lr=0.2, steps=500)"`` -> ``("alma", {"lr": 0.2, "steps": 500})``
    (values read as YAML scalars). Raises ``ValueError`` with what is wrong."""
    import yaml

    m = re.fullmatch(r"\s*(\w+)\s*(?:\((.*)\))?\s*", str(entry))
    if m is None:
        raise ValueError("expected a name or name(option=value, ...)")
    options = {}
    for part in filter(str.strip, (m.group(2) or "").split(",")):
        key, eq, value = part.partition("=")
        if not eq or not key.strip().isidentifier():
            raise ValueError(f"{part.strip()!r}: expected option=value")
        options[key.strip()] = yaml.safe_load(value)
    return m.group(1), options


def _member_problem(entry: str) -> str | None:
    """What is wrong with a member entry (``Check`` at compose time): its syntax, and where it names options,
    an unregistered attack, an option the attack does not take, or a value outside the option's range."""
    from robust_cli.attacks import list_attacks
    from robust_cli.schema import _problem, options_of

    try:
        name, options = parse_member(entry)
    except ValueError as err:
        return f"member {entry!r}: {err}"
    if not options:
        return None  # a bare name that is not registered is skipped when the attack runs
    fn = list_attacks().get(name)
    if fn is None:
        return f"member {entry!r}: no attack {name!r}"
    known = options_of(fn)
    for key, value in options.items():
        if key == "x_init":  # the ensemble's own: null runs a member that takes a start from the clean image only
            if value is not None or "x_init" not in inspect.signature(fn).parameters:
                return f"member {entry!r}: x_init can only be null, for an attack that takes a start"
            continue
        if key == "refine":  # the ensemble's own: true makes the member's points refiner starts
            if not isinstance(value, bool) or fn.budget:
                return f"member {entry!r}: refine can only be true or false, for a minimal-norm attack"
            continue
        if key not in known:
            return f"member {entry!r}: {name} has no option {key!r} (options: {', '.join(known)})"
        problem = _problem(known[key][0], value)
        if problem:
            return f"member {entry!r}: {key}={value!r}: {problem}"
    return None


Member = Annotated[str, Check(_member_problem)]


RANDOM_STARTS_DEFAULT = {"l0": 4, "l1": 4, "l2": 4, "linf": 8}
"""``random_starts`` where none is given, per norm (digits LeNet-5, 94 images, BENCHMARKS.md issue 10, session
3): with 4, l2 and l1 ended within 0.1% of the per-image minimum over every peer on every image, linf on all
but image 16, which a random start reaches about half the time (B&B from 8 perturbed copies of the same best:
5 of 8 reach 0.1198 against the peers' 0.1203); linf's B&B is the cheapest (a third of l2's passes), so it
takes 8 (all 94 images; 12603 passes/img against 8539 with 4)."""


TARGET_STARTS_DEFAULT = {"l0": 0, "l1": 0, "l2": 1, "linf": 0}
"""``target_starts`` where none is given, per norm (MNIST LeNet-5, 38 images, BENCHMARKS.md issue 10, session 4):
in l2 image 18 every member ended in class 9 or 7 (0.7485 at best), while the peers' B&B, from adv-lib DDN's
class-8 point, reached 0.7263; FMN targeted at the image's third most likely class (1), then B&B, ends in
class 8 at 0.7133. Cost: 3 targeted FMN runs (``target_classes``, 100 passes each) and one more B&B start (~1000)
per image, against ~19000 for the l2 ensemble. The other norms keep 0: not measured there (l1's remaining gap,
MNIST image 12, is a same-class basin)."""


def _target_points(fn, model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str,
                   k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``k`` runs of a targeted attack ``fn`` from the clean image, run ``j`` against each image's ``j+1``-th
    most likely other class (the clean logits, as FAB-T's targets); each ``([B,C,H,W]`` point, ``[B]`` size,
    ``inf`` where the model keeps ``y``), for the refiner's extra starts. Not offered to ``best``: a targeted
    point that became the running best would change the members' ranked starts (MNIST l2 image 25 lost the
    same-class start that refined to its best point); the refiner, which never returns more than its start,
    brings a good one into ``best`` anyway."""
    with torch.no_grad():
        logits = model(x)
    order = logits.scatter(1, y[:, None], float("-inf")).topk(min(k, logits.shape[1] - 1), dim=1).indices
    points = []
    for target in order.T:
        out = fn(model, x, target, norm=norm, targeted=True).detach().clamp(0, 1)
        with torch.no_grad():
            fooled = model(out).argmax(1) != y
        points.append((out, torch.where(fooled, perturbation_size(out, x, norm).double(), torch.inf)))
    return points


def _targeted_member(registry: dict, entry: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str,
                     k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``_target_points`` of the member ``entry``, or none (with a log line) where it is not registered, does
    not support ``norm`` or takes no ``targeted``."""
    name, options = parse_member(entry)
    fn = registry.get(name)
    if fn is None or norm not in fn.norms or "targeted" not in inspect.signature(fn).parameters:
        log.info("minimal: no target starts (%s: not registered, no %s, or not targeted)", name, norm)
        return []
    return _target_points(functools.partial(fn, **options), model, x, y, norm, k)


def _budget_member(fn, model, x, y, norm: str, best: Best, search_steps: int) -> None:
    """Bisection of a budget attack's eps per image, offering every verified success to ``best``."""
    radius = torch.maximum(x, 1 - x)
    box = float(x[0].numel()) if norm == "l0" else None
    hi = torch.where(best.found, best.size, torch.as_tensor(box) if box is not None else
                     perturbation_size(radius, torch.zeros_like(x), norm).double())
    lo = torch.zeros_like(hi)
    for _ in range(search_steps):
        mid = (lo + hi) / 2
        cand = fn(model, x, y, norm=norm, eps=mid.to(x.dtype)).detach().clamp(0, 1)
        adversarial = best.check(model, cand, y)
        ok = adversarial & (perturbation_size(cand, x, norm).double() <= mid * (1 + 1e-6))
        hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid)


def _ranked_starts(model: nn.Module, best: Best, results: list[tuple[torch.Tensor, torch.Tensor]],
                   k: int, later: Sequence[tuple[torch.Tensor, torch.Tensor]] = (), k_later: int = 0) -> torch.Tensor:
    """``[(k+k_later)*B,C,H,W]``: per image ``k`` starts for a refiner, then ``k_later`` more drawn from the
    points ``later`` by the same rule (the targeted points of ``target_starts``: they add starts, and take none
    of the ``k`` from the members' points); start ``i`` of image ``b`` at row ``i*B + b``.

    Start 0 is the running best. Each further start is the smallest member point (``results``: ``[B,C,H,W]``
    points with ``[B]`` sizes, ``inf`` where not adversarial) that the model puts in a class none of the
    starts so far is in, else the smallest one not yet taken whose size differs from every taken one (a tie
    is the same point, or one as good); the clean image where none is left (the refiner then finds its own
    start). Why classes first: a boundary-following refiner stays on the boundary of the class it starts in,
    and where the per-image minimum over every peer beat ours by most it was another class (digits l1 image
    84: FAB's class-2 point 0.90 against our class-8 0.98; BENCHMARKS.md, issue 10).
    """
    points = torch.stack([best.x_adv] + [p for p, _ in results] + [p for p, _ in later])  # [N, B, C, H, W]
    sizes = torch.stack([best.size] + [d for _, d in results] + [d for _, d in later])  # [N, B]
    from_later = torch.arange(sizes.shape[0], device=sizes.device) > len(results)  # [N]
    with torch.no_grad():
        classes = model(points.flatten(0, 1)).argmax(1).view(sizes.shape)
    n, bsz = sizes.shape
    rank = torch.argsort(torch.argsort(sizes, dim=0, stable=True), dim=0, stable=True).double()  # [N, B] 0 = smallest
    left = torch.isfinite(sizes)
    left[0] = False  # start 0
    taken_class = classes[:1].clone()  # [t, B]
    taken_size = sizes[:1].clone()
    picks = [best.x_adv]
    cols = torch.arange(bsz, device=sizes.device)
    for pick in range(1, k + k_later):
        pool = left & (from_later if pick >= k else ~from_later)[:, None]
        new_class = (classes[:, None, :] != taken_class[None]).all(1)  # [N, B]
        new_size = (((sizes[:, None, :] - taken_size[None]).abs() > taken_size[None] * 1e-9)
                    | ~torch.isfinite(taken_size[None])).all(1)
        score = torch.where(pool & new_class & new_size, rank,
                            torch.where(pool & new_size, rank + n, torch.full_like(rank, torch.inf)))
        i = score.argmin(0)  # [B]
        ok = torch.isfinite(score.gather(0, i[None]).squeeze(0))
        picks.append(torch.where(view_as_images(ok, best.x0), points[i, cols], best.x0))
        left[i, cols] = False
        taken_class = torch.cat([taken_class, torch.where(ok, classes[i, cols], -1)[None]])
        taken_size = torch.cat([taken_size, torch.where(ok, sizes[i, cols], torch.inf)[None]])
    return torch.cat(picks)


def _random_starts(model: nn.Module, best: Best, y: torch.Tensor, k: int, scale: float,
                   generator: torch.Generator) -> torch.Tensor:
    """``[k*B,C,H,W]``: ``k`` randomly perturbed copies of the running best per image (row ``i*B + b``).

    Each is ``x + 1.5 d + u`` in [0,1], ``d`` the best perturbation and ``u`` a Gaussian direction of l2 length
    ``scale * ||d||_2``: pushed outward so that it is still adversarial, and moved off the best point's basin.
    A refiner's start search brings it back to the boundary (B&B: a bisection towards ``x``), where it follows
    the boundary into whichever basin is nearest: random restarts of the refinement, as the restarts of FAB
    (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive boundary attack", §3.3:
    random starting points in a ball around ``x``) and of Brendel et al. (2019, §3: B&B refines any adversarial
    start). A copy the model does not misclassify is replaced by the best itself; where nothing was found yet
    the clean image (the refiner finds its own start).
    """
    x = best.x0
    d = best.x_adv - x
    picks = []
    for _ in range(k):
        u = torch.randn(d.shape, generator=generator, dtype=d.dtype).to(d.device)
        length = scale * d.flatten(1).norm(dim=1) / u.flatten(1).norm(dim=1).clamp_min(1e-12)
        cand = (x + 1.5 * d + view_as_images(length, d) * u).clamp(0, 1)
        with torch.no_grad():
            ok = model(cand).argmax(1) != y
        picks.append(torch.where(view_as_images(ok & best.found, x), cand, best.x_adv))
    return torch.cat(picks)


@register_attack(norms=("l0", "l1", "l2", "linf"), budget=False)
def minimal(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    x_init: torch.Tensor | None = None,
    l0_attacks: Sequence[Member] = ("one_pixel(steps=0)", "sigma_zero(steps=1000)", "pdpgd", "jsma",
                                    "vfga(saturation=advlib, max_iter=100)", "fmn", "bb", "prune"),
    l1_attacks: Sequence[Member] = ("sparsefool", "fmn(steps=1000)", "fmn(gamma=0.1)",
                                    "fmn(projection=ball, steps=1000)",
                                    "fmn(projection=advlib, steps=1000, x_init=null)", "ead", "alma", "fab", "fab_t",
                                    "pdpgd",
                                    "pdpgd(lr=0.5, proximal_exact=true)", "pdpgd(lr=0.1, proximal_exact=true)",
                                    "pdpgd(lr_decay=exponential, x_init=null)", "bb"),
    l2_attacks: Sequence[Member] = ("deepfool", "ddn", "fmn", "fmn(projection=advlib, steps=1000, x_init=null)",
                                    "alma(restarts=3)", "alma(lr=0.2)", "fab(nearest=eq7, refine=true)", "cw",
                                    "pdpgd(proximal_exact=false)",
                                    "pdpgd(lr_decay=exponential, proximal_exact=false, refine=true, x_init=null)",
                                    "bb"),
    linf_attacks: Sequence[Member] = ("deepfool", "fab", "fmn", "fmn(projection=advlib, steps=1000, x_init=null)",
                                      "pdpgd", "bb"),
    search_steps: Annotated[int, Range(ge=1)] = 10,
    refiners: Sequence[str] = ("bb",),
    refine_starts: Annotated[int, Range(ge=1)] = 3,
    random_starts: Annotated[int, Range(ge=0)] | None = None,
    random_scale: Annotated[float, Range(gt=0)] = 1.0,
    cold_members: Sequence[str] = ("fmn",),
    target_starts: Annotated[int, Range(ge=0)] | None = None,
    target_classes: Annotated[int, Range(ge=1)] = 3,
    target_member: Member = "fmn",
    seed: int = 0,
) -> torch.Tensor:
    """The per-image smallest adversarial over the members of ``norm`` on ``x`` ``[B,C,H,W]`` in [0,1].

    Args:
        x_init: ``[B,C,H,W]`` or None, a starting adversarial per image (kept when misclassified, and handed
            to the first member that takes one).
        l0_attacks, l1_attacks, l2_attacks, linf_attacks: the members per norm, run in this order with their
            own defaults (cheap ones first, so that the refining ones start from a good point). l1 runs
            ``fab_t`` besides ``fab``: its runs against each likely class reach classes the untargeted run
            misses (digits LeNet-5 image 84: class 2 at 0.90 where FAB and the rest found class 8 at 0.98).
            An entry may carry options, ``name(option=value, ...)`` (checked at compose time; besides the
            attack's own, ``x_init=null`` runs a member that takes a start from the clean image only, neither
            from the running best nor twice as a ``cold_members`` entry, and ``refine=true`` makes a member's
            point one more refiner start per image, whatever its rank), so that one attack runs with several
            settings: first-order minimal-norm attacks end in different local
            minima for different step sizes, and the per-image best over settings is the usual way to
            report them (Pintor et al. 2021, "Fast minimum-norm adversarial attacks through adaptive norm
            constraints", §4, the best over step sizes). l2 runs ALMA also at ``lr=0.2`` and l1 FMN also at
            ``gamma=0.1``: on the digits LeNet-5 each reached a same-class basin the default setting and
            every other member missed (l2 image 15: ALMA lr 0.2 0.8193 against 0.8276 at lr 0.1; l1 image
            12: FMN gamma 0.1 2.2987 against 2.41 at 0.05; BENCHMARKS.md, issue 10). l2's ALMA at lr 0.1
            runs three times (``restarts=3``: from ``x``, then from 1e-3 noise): its float32 runs are chaotic
            draws, each ending in other local minima (a mean that moves by up to 3% with a start 1e-3 away), and
            the best of three lowered the ensemble's mean on three MNIST windows by 0.3-0.5% (digits equal) for
            ~2000 more passes per image, ~10% (BENCHMARKS.md, issue 10, session 7). Its run 0 computes in the
            authors' order of operations and so retraces adv-lib's ALMA bit for bit (on one machine and batch),
            as ``fmn(projection=advlib, steps=1000, x_init=null)`` retraces adv-lib's FMN-l2 (whose steps
            rescale onto the sphere rather than project onto the ball): where one of the authors' runs found a
            basin none of ours did, the ensemble now holds that run itself, and B&B refines it. Together they
            took the four MNIST l2 windows 0-39 ... 120-159 from 0.974 / 0.974 / 0.923 / 0.923 within 0.1% of
            the peers to 1.000 / 1.000 / 0.974 / 1.000, for ~1000 more passes per image (BENCHMARKS.md, issue
            10, session 8). The authors' DDN (``ddn(loss=cross_entropy, steps=1000)``) as a further member
            moved the one miss to another window for 1000 more passes, so it is not in the list. On a retrained
            MNIST LeNet-5 three l2 misses were foolbox's B&B from the points of adv-lib's FAB (two) and PDPGD
            (one), points larger than the running best and of its class, which ``_ranked_starts`` never picks:
            l2 therefore runs FAB as the authors choose its hyperplane (``nearest=eq7``, which follows adv-lib's
            run) and PDPGD once more from scratch as the authors run it (their exponential lr decay, the
            thesis's inexact proximal steps: ``proximal_exact=false``), both with ``refine=true``, so that B&B
            also starts from their points: the four windows 0.974 / 1.000 / 0.975 / 0.974 -> 0.974 / 1.000 /
            1.000 / 1.000 within 0.1% of the peers, for ~2500 more passes per image (~11%). l2's first PDPGD
            also keeps the thesis's inexact step (``pdpgd(proximal_exact=false)``): with PDPGD's default exact
            step, which alone ends 5-7% lower on MNIST, the ensemble's means moved by under 0.1% but B&B's
            starts moved off the peers' basins on one image of 40-79 and one of 80-119 (1.000 -> 0.975 on
            each; in place of the inexact run or after it, BENCHMARKS.md, issue 16, session 13).
            linf runs adv-lib's FMN-linf (``fmn(projection=advlib, steps=1000, x_init=null)``), whose point
            held the peers' minimum on images our FMN-linf run missed: three windows 0.974 / 0.950 / 0.950 ->
            1.000 / 0.950 / 1.000, for 1000 more passes per image (8%), and 1.000 on all three since
            linf's B&B takes the paper's momentum 0.8 (``bb.MOMENTUM_DEFAULT``, session 11), still with PDPGD's
            exact step at lr 0.1 (its defaults since session 13); l1 runs the same PDPGD from
            scratch (not ``refine``: its point of MNIST image 2 of 80-119, which held the peers' minimum there,
            is itself the best), three windows 0.949 / 1.000 / 0.975 -> 0.949 / 1.000 / 1.000 for ~500 more
            passes per image (1.4%) (BENCHMARKS.md, issue 10, session 10), and adv-lib's FMN-l1
            (``fmn(projection=advlib, steps=1000, x_init=null)``, retraced bit for bit), whose point held the
            peers' minimum on image 0 of 0-39: 0.949 -> 0.974 there, the other two windows unchanged at 1.000,
            for ~1000 more passes per image (2.8%), and with B&B at momentum 0.8 (``bb.MOMENTUM_DEFAULT``)
            four windows at 157 of 158 (BENCHMARKS.md, issue 10, session 11). l1 runs PDPGD three
            ways: at its default (the authors' lr 0.1 with the thesis's inexact proximal steps, since session 5),
            and with the exact prox at lr 0.5 and 0.1 (its defaults before): on the MNIST LeNet-5 the exact prox
            at 0.1 alone ended image 12 at 3.7015, where every other member ended at 3.7265 or above and the
            peers' minimum (adv-lib PDPGD) is 3.7069 (BENCHMARKS.md, issue 10, session 4). l1 runs FMN for the
            paper's 1000 steps, and also with the authors' projection (``projection=ball``: onto the l1 ball,
            then clipped), which succeeds less often but lands elsewhere: on MNIST test images 40-79, where
            the members chosen on the first 40 ended within 0.1% of the peers' per-image minimum on 0.897 of
            the images (adv-lib's FMN, which projects that way, won 3 of the 4 misses), the two took it to
            0.974, and on images 80-119, not looked at before, from 0.974 to 1.000 (BENCHMARKS.md, issue 10,
            session 6). l0 starts with ``one_pixel(steps=0)``: its sweep of every pixel at 0 and at 1 (per
            channel) finds a one-pixel adversarial wherever one lies at extreme values, an exact answer the
            gradient members can miss (MNIST test image 65: every member ended at two pixels, adv-lib's
            sigma-zero at one), for ``H W 2^C + popsize`` forward passes per image. l0 runs sigma-zero for the
            paper's 1000 steps (its default is the fast 100): since it anneals its rate in the authors' order it
            reproduces their runs per image, and on MNIST test images 0-49 and 100-149, where their sigma-zero
            or B&B from its point had been a pixel lower than every member of ours on 2 and 6 images, the
            ensemble went 0.958 -> 0.979 and 0.880 -> 0.980 within 0.1% of the peers (BENCHMARKS.md, issue 10,
            session 7). l0 runs VFGA as adv-lib runs it (``saturation=advlib``: on the
            MNIST LeNet-5 its float32 softmax saturates, so its votes are blind draws, and one of them reached a
            5-pixel basin, image 13 of test images 100-149, where the ensemble had ended at 7, and the B&B
            starts it adds also took image 22 from 4 pixels to foolbox's 3), capped at 100 changed values (its
            failures otherwise run to every value of the image, ~16k passes each; a point of 100 pixels is no
            use here): test images 100-149 0.940 -> 0.980 within 0.1% of the peers, mean 4.74 -> 4.68
            (BENCHMARKS.md, issue 10, session 9). l0 ends with
            ``prune`` (after B&B): it removes pixels from the running best while it stays misclassified
            (``robust_cli.attacks.prune``); on the MNIST LeNet-5 (48 images) one pixel on 3 images that B&B
            left locally non-minimal (mean 4.4167 -> 4.3542) for ~150 more passes per image (~1.7%); digits
            unchanged (BENCHMARKS.md, issue 10, session 5). SparseFool is an l1 member only: since it
            succeeds on every MNIST image (session 5) its l0 points (a mean of 14 pixels against sigma-zero's
            5.3) became the running best that later l0 members start from, and the ensemble ended a pixel
            higher on one image (MNIST mean 4.3958 with it, 4.3542 without; digits equal).
        search_steps: bisection rounds of a budget member's eps.
        refiners: members that refine a start (B&B) and run, batched, from ``refine_starts`` starts per image.
        refine_starts: the running best plus the best member results of other classes, then the next-best
            distinct ones (``_ranked_starts``; the clean image where fewer exist, i.e. the refiner's own
            start). A boundary-following refiner ends in the basin of its start (BENCHMARKS.md, issue 10).
        random_starts: further refiner starts per image, each the running best pushed outward and moved by a
            random direction (``_random_starts``): random restarts of the refinement, which reach same-class
            basins next to the best one that no member's point lies in (digits LeNet-5, BENCHMARKS.md); None:
            the norm's ``RANDOM_STARTS_DEFAULT`` (linf 8, else 4).
        random_scale: the random direction's l2 length as a fraction of the best perturbation's.
        cold_members: members that take a start (``x_init``) and run twice: from the running best, and from
            their own start (the clean image). A run from the best stays near the best's basin; the cold run
            finds others (digits linf images 7 and 65: FMN from scratch 0.0542 and 0.1337, from the best
            0.0544 and 0.1344).
        target_starts: further refiner starts per image from targeted runs: where it is not 0,
            ``target_member`` (an entry as in ``l2_attacks``; it must take ``targeted``) runs ``target_classes``
            times from the clean image before the refiner, targeted at each image's most likely other classes
            in turn (``_target_points``), and the refiner also starts from the best ``target_starts`` of those
            points, new classes first (``_ranked_starts``' ``later``: they add starts rather than take any of
            the ``refine_starts``, which on MNIST l2 image 25 lost a same-class start worth 0.7%). Why: a class
            no untargeted member ends in can then still be refined; a point reached by aiming at one class
            often lies next to the boundary of another, and B&B's start search (a bisection towards ``x``)
            lands on whichever boundary comes first (MNIST l2 image 18: targeted at class 1, B&B ends in class
            8, 1.8% below the peers' minimum, which no member reached). None: the norm's
            ``TARGET_STARTS_DEFAULT`` (l2 1, else 0).
        target_classes: the targeted runs of ``target_starts``, one per likely class (FAB-T's 9 is every
            class of a 10-class problem; 3 reach image 18's).
        target_member: the targeted attack of ``target_starts`` (default FMN, 100 steps a run).
        seed: of the random starts' generator.

    Returns:
        ``[B,C,H,W]`` in [0,1]: per image the smallest misclassified point of any member (or ``x_init``),
        ``x`` itself where none was found.
    """
    from robust_cli.attacks import list_attacks

    names = {"l0": l0_attacks, "l1": l1_attacks, "l2": l2_attacks, "linf": linf_attacks}[norm]
    random_starts = RANDOM_STARTS_DEFAULT[norm] if random_starts is None else random_starts
    target_starts = TARGET_STARTS_DEFAULT[norm] if target_starts is None else target_starts
    registry = list_attacks()
    x = x.detach()
    generator = torch.Generator().manual_seed(seed)
    with frozen_eval(model):
        best = Best(x, norm)
        best.start(model, y, x_init)
        results: list[tuple[torch.Tensor, torch.Tensor]] = []  # each non-budget member's point and size
        pinned: list[torch.Tensor] = []  # the points of members with refine=true (clean where not adversarial)
        targets: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # target_starts' points and sizes
        for entry in names:
            name, options = parse_member(entry)
            fn = registry.get(name)
            if fn is None or name == "minimal" or norm not in norms_with(fn, options)[0]:
                log.info("minimal: skipping %s (%s)", entry, "not registered" if fn is None else
                         "the ensemble itself" if name == "minimal" else f"no {norm}")
                continue
            cold_only = "x_init" in options and options.pop("x_init") is None  # "name(..., x_init=null)"
            pin = bool(options.pop("refine", False))  # "name(..., refine=true)"
            budget, takes_start = fn.budget, "x_init" in inspect.signature(fn).parameters and not cold_only
            if options:
                fn = functools.partial(fn, **options)
            if budget:
                _budget_member(fn, model, x, y, norm, best, search_steps)
                continue
            refining = takes_start and name in refiners
            if refining and target_starts and targets is None:  # once, before the first refiner
                targets = _targeted_member(registry, target_member, model, x, y, norm, target_classes)
            later = targets if refining and target_starts else []
            if refining and refine_starts + random_starts + len(later) + len(pinned) > 1:
                starts = _ranked_starts(model, best, results, refine_starts, later,
                                        min(target_starts, len(later)))  # [k*B, C, H, W]
                if random_starts:
                    starts = torch.cat([starts, _random_starts(model, best, y, random_starts, random_scale,
                                                               generator)])
                starts = torch.cat([starts, *pinned])
                k = starts.shape[0] // x.shape[0]
                out = fn(model, x.repeat(k, 1, 1, 1), y.repeat(k), norm=norm, x_init=starts)
                for chunk in out.split(x.shape[0]):
                    best.check(model, chunk, y)
                continue
            runs = [{"x_init": best.x_adv.clone()}] if takes_start else [{}]
            if takes_start and name in cold_members:
                runs.append({})
            for start in runs:
                out = fn(model, x, y, norm=norm, **start).detach().clamp(0, 1)
                fooled = best.check(model, out, y)
                results.append((out, torch.where(fooled, perturbation_size(out, x, norm).double(), torch.inf)))
                if pin:
                    pinned.append(torch.where(view_as_images(fooled, x), out, x))
    return best.x_adv


SCHEMAS = {"minimal": schema_of(minimal, "minimal")}
