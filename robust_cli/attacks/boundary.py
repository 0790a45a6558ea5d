"""The Boundary attack (Brendel et al. 2018, "Decision-based adversarial attacks: reliable attacks against
black-box machine learning models", §3, Algorithm 1), l2, decision-based: it reads predicted labels only.

Start: a misclassified point, ``x_init`` where it is one, else uniform noise (up to ``init_tries`` draws)
pulled towards ``x`` by a bisection of the blend ``x + t (noise - x)`` (``search_steps`` rounds; §3.1). Then
per step, at distance ``D = ||x - x_adv||``:

1. an orthogonal step (§3.2, eq. 4-6): ``eta ~ N(0, I)``, orthogonal to ``x - x_adv``, of length
   ``spherical_step * D``, projected back onto the sphere of radius ``D`` around ``x``;
2. a step of ``source_step * D`` towards ``x``, clipped to the box;

the candidate replaces ``x_adv`` when it is misclassified (and closer). Both step sizes adapt (§3.3): every
10 steps the orthogonal step grows by ``step_adaptation`` where more than half of the sphere points were
adversarial and shrinks where fewer than a fifth were; the step towards ``x`` likewise by its own success
rate. Each step classifies the sphere point and the candidate: 2 queries. Queries are counted per image and
never exceed ``max_queries`` (the start included). Defaults: foolbox 3's (steps 0.01, adaptation 1.5).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from robust_cli.attacks.best import Best, blend
from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.geometry import view_as_images
from robust_cli.attacks.losses import is_adversarial
from robust_cli.schema import Range, schema_of


class Oracle:
    """Labels only, with a per-image query count: ``ask(images, rows) -> [b] misclassified``."""

    def __init__(self, model: nn.Module, y: torch.Tensor, max_queries: int):
        self.model, self.y, self.max_queries = model, y, max_queries
        self.queries = torch.zeros_like(y)

    def left(self) -> torch.Tensor:
        return self.max_queries - self.queries

    def ask(self, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        self.queries[rows] += 1
        if bool((self.queries[rows] > self.max_queries).any()):
            raise RuntimeError("query budget exceeded")  # a bug in the caller: budgets are checked first
        with torch.no_grad():
            return is_adversarial(self.model(images.clamp(0, 1)), self.y[rows])


def decision_start(oracle: Oracle, x: torch.Tensor, x_init: torch.Tensor | None, best: Best, init_tries: int,
                   search_steps: int, gen: torch.Generator) -> None:
    """A misclassified start per image into ``best``: ``x_init``, else blended uniform noise (labels only)."""
    everyone = torch.arange(x.shape[0], device=x.device)
    if x_init is not None:
        best.offer(x_init, oracle.ask(x_init, everyone), everyone)
    noise = torch.zeros_like(x)
    have = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(init_tries):
        rows = (~best.found & ~have & (oracle.left() > search_steps)).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        draw = torch.rand(x[rows].shape, generator=gen, device=x.device, dtype=x.dtype)
        ok = oracle.ask(draw, rows)
        noise[rows[ok]], have[rows[ok]] = draw[ok], True
    rows = have.nonzero().squeeze(1)
    if rows.numel():
        lo = torch.zeros(len(rows), dtype=x.dtype, device=x.device)
        hi = torch.ones_like(lo)
        for _ in range(search_steps):
            mid = (lo + hi) / 2
            ok = oracle.ask(blend(x[rows], noise[rows], mid), rows)
            hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid)
        best.offer(blend(x[rows], noise[rows], hi), torch.ones_like(have[rows]), rows)  # hi is misclassified


@register_attack(norms=("l2",), budget=False)
def boundary(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l2",
    x_init: torch.Tensor | None = None,
    max_queries: Annotated[int, Range(ge=1)] = 25_000,
    spherical_step: Annotated[float, Range(gt=0)] = 0.01,
    source_step: Annotated[float, Range(gt=0)] = 0.01,
    step_adaptation: Annotated[float, Range(gt=1)] = 1.5,
    init_tries: Annotated[int, Range(ge=1)] = 100,
    search_steps: Annotated[int, Range(ge=1)] = 10,
    seed: int = 0,
) -> torch.Tensor:
    """Boundary attack on ``x`` ``[B,C,H,W]`` in [0,1], true labels ``y`` ``[B]``, from labels only.

    Args:
        x_init: ``[B,C,H,W]`` or None: starting adversarials (rows the model does not misclassify are ignored).
        max_queries: model evaluations per image, the start included.
        spherical_step, source_step: the initial relative step sizes (§3.2). step_adaptation: their factor.
        init_tries: noise draws for a start. search_steps: bisection rounds of the start's blend.
        seed: the private generator of the noise and the steps.

    Returns:
        ``[B,C,H,W]``: the closest misclassified point per image, ``x`` where no start was found.
    """
    if norm != "l2":
        raise ValueError(f"boundary supports l2 only, got norm={norm!r}")
    x = x.detach()
    b = x.shape[0]
    gen = torch.Generator(device=x.device).manual_seed(seed)
    with frozen_eval(model):
        oracle = Oracle(model, y, max_queries)
        best = Best(x, "l2")
        decision_start(oracle, x, x_init, best, init_tries, search_steps, gen)
        sph = torch.full((b,), spherical_step, dtype=x.dtype, device=x.device)
        src = torch.full_like(sph, source_step)
        stats = torch.zeros(b, 2, dtype=x.dtype, device=x.device)  # successes of sphere points, candidates
        count = 0
        while True:
            rows = (best.found & (oracle.left() >= 2) & (src > 1e-7)).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            x0, xa = x[rows], best.x_adv[rows]
            to_x = x0 - xa
            dist = to_x.flatten(1).norm(dim=1).clamp_min(1e-12)
            unit = to_x / view_as_images(dist, to_x)
            eta = torch.randn(xa.shape, generator=gen, device=x.device, dtype=x.dtype)
            eta = eta - unit * view_as_images((eta * unit).flatten(1).sum(1), eta)
            eta = eta * view_as_images(sph[rows] * dist / eta.flatten(1).norm(dim=1).clamp_min(1e-12), eta)
            # back onto the sphere of radius dist around x (eq. 5), then towards x by src * dist (eq. 6)
            sphere = x0 + (eta - to_x) / view_as_images((sph[rows] ** 2 + 1).sqrt(), eta)
            sphere = sphere.clamp(0, 1)
            back = x0 - sphere
            back_norm = back.flatten(1).norm(dim=1).clamp_min(1e-12)
            length = (src[rows] * dist + back_norm - dist).clamp_min(0) / back_norm
            cand = (sphere + view_as_images(length, back) * back).clamp(0, 1)
            on_sphere = oracle.ask(sphere, rows)
            fooled = oracle.ask(cand, rows)
            best.offer(cand, fooled, rows)
            stats[rows, 0] += on_sphere.to(x.dtype)
            stats[rows, 1] += fooled.to(x.dtype)
            count += 1
            if count % 10 == 0:  # §3.3: keep the sphere success near 1/2, adapt the step towards x
                rate = stats / 10
                up, down = rate[:, 0] > 0.5, rate[:, 0] < 0.2
                sph = torch.where(up, sph * step_adaptation, torch.where(down, sph / step_adaptation, sph))
                src = torch.where(up, src * step_adaptation, torch.where(down, src / step_adaptation, src))
                up, down = rate[:, 1] > 0.5, rate[:, 1] < 0.2
                src = torch.where(up, src * step_adaptation, torch.where(down, src / step_adaptation, src))
                stats.zero_()
    return best.x_adv


SCHEMAS = {"boundary": schema_of(boundary, "boundary")}
