"""Random-noise baseline, minimal-norm, every norm: how far a *random* direction must go to fool the model.

For each restart every sample draws one random direction ``u`` and walks ``x_t = path(t)``; a grid scan
``t = t_max 2^-k`` (``k = 16..0``) finds the first misclassified scale and a bisection refines it::

    linf: x_t = clip(x + t * s),        s uniform in {-1, +1}^d             t in (0, 1]
    l2:   x_t = clip(x + t * g/||g||_2), g ~ N(0, I)                        t in (0, sqrt(d)]
    l1:   x_t = clip(x + t * g/||g||_1), g ~ N(0, I)                        t in (0, d]
    l0:   x_t = x with its first ceil(t) values, in a random order, set to
            random salt-and-pepper values in {0, 1}                         t in (0, d]

The smallest misclassified point over the restarts (its norm measured after clipping) is returned per
sample. Any real attack should beat this; a defense that only resists gradient attacks but not noise, or
a noise curve close to the attack curves, hints at gradient masking.
"""

from __future__ import annotations

import math

from typing import Annotated

import torch
from torch import nn

from robust_cli.attacks.contract import frozen_eval, register_attack
from robust_cli.attacks.geometry import batch_norm, view_as_images
from robust_cli.attacks.line_search import first_crossing
from robust_cli.attacks.losses import is_adversarial
from robust_cli.schema import Range, schema_of

_GRID = 17  # scales t_max * 2^-16 .. t_max


def _random_path(x: torch.Tensor, norm: str, generator: torch.Generator | None):
    """``(path, t_max)``: one random direction per sample, as a function of the scale ``t`` ``[B]``."""
    d = x[0].numel()
    kw = {"generator": generator, "device": x.device}
    if norm == "l0":
        order = torch.rand(x.shape[0], d, **kw).argsort(dim=1).argsort(dim=1).view_as(x)  # rank of each value
        salt = torch.randint(0, 2, x.shape, **kw).to(x.dtype)

        def path(t: torch.Tensor) -> torch.Tensor:
            return torch.where(order < view_as_images(t.ceil(), x), salt, x)

        return path, float(d)
    if norm == "linf":
        u, t_max = torch.randint(0, 2, x.shape, **kw).to(x.dtype) * 2 - 1, 1.0
    elif norm in ("l2", "l1"):
        u = torch.randn(x.shape, **kw, dtype=x.dtype)
        u = u / view_as_images(batch_norm(u, norm).clamp_min(1e-30), u)
        t_max = math.sqrt(d) if norm == "l2" else float(d)
    else:
        raise ValueError(f"noise: unknown norm {norm!r}")

    def path(t: torch.Tensor) -> torch.Tensor:
        return (x + view_as_images(t, x) * u).clamp(0, 1)

    return path, t_max


@register_attack(norms=("l0", "l1", "l2", "linf"), budget=False)
def noise(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    restarts: Annotated[int, Range(ge=1)] = 10,
    search_steps: Annotated[int, Range(ge=1)] = 10,
    seed: int | None = None,
) -> torch.Tensor:
    """Smallest misclassified random perturbation of ``x`` ``[B,C,H,W]`` in [0,1] found over ``restarts``.

    Args:
        norm: l0 (number of changed values), l1, l2 or linf; picks the noise (module docstring).
        restarts: random directions per sample (runs in all). search_steps: bisection rounds per direction.
        seed: seeds a private generator (the global RNG is untouched); None uses the global RNG.

    Returns:
        ``[B,C,H,W]`` in [0,1]; ``x`` itself where it is already misclassified or no direction fooled the
        model up to ``t_max``.
    """
    x = x.detach()
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device).manual_seed(seed)
    best = x.clone()
    best_norm = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
    with frozen_eval(model), torch.no_grad():
        clean_bad = is_adversarial(model(x), y)
        for _ in range(max(1, restarts)):
            path, t_max = _random_path(x, norm, generator)
            grid = t_max * 2.0 ** torch.arange(-(_GRID - 1), 1, dtype=x.dtype, device=x.device)
            t, found = first_crossing(model, y, path, grid, search_steps)
            cand = path(t)
            n = batch_norm(cand - x, norm)
            better = found & (n < best_norm)
            best = torch.where(view_as_images(better, x), cand, best)
            best_norm = torch.where(better, n, best_norm)
    return torch.where(view_as_images(clean_bad, x), x, best)


SCHEMAS = {"noise": schema_of(noise, "noise")}
