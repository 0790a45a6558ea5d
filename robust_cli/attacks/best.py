"""The best adversarial kept per image by every minimal-norm attack, and their starting points (``x_init``).

A minimal-norm attack returns, per image, the smallest misclassified point it has seen (re-checked with the
model), the input itself where it found none (CONTRIBUTING.md, the attack contract). The iterative ones walk a
path and keep its smallest adversarial point (Carlini & Wagner 2017, §V; Rony et al. 2019, "Decoupling
Direction and Norm", Algorithm 1, line 9; Pintor et al. 2021, "Fast Minimum-norm Adversarial Attacks",
Algorithm 1; Rony et al. 2021, "Augmented Lagrangian Adversarial Attacks", Algorithm 1); the decision-based
and sparse ones offer candidates they classified themselves. :class:`Best` keeps that point for both. Sizes
are measured as the evaluation measures them (l0: changed pixels, any channel; Matyasko thesis Ch.5 §5.3.4,
eq 5.15), so "smaller here" is "smaller in ``per_sample.csv``".
"""

from __future__ import annotations

import torch
from torch import nn

from robust_cli.attacks.geometry import batch_norm, changed_pixels, view_as_images
from robust_cli.attacks.losses import is_adversarial


def perturbation_size(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """``[B]`` size of ``x_adv - x`` in ``norm``; l0 counts changed pixels of ``[B,C,H,W]`` images."""
    return _size(x_adv - x, norm)


def _size(r: torch.Tensor, norm: str) -> torch.Tensor:
    return changed_pixels(r) if norm == "l0" and r.dim() == 4 else batch_norm(r, norm)


def worst_norm(x: torch.Tensor, norm: str) -> torch.Tensor:
    """``[B]``: the largest ``||r||`` with ``x + r`` in [0,1] (a cap on the radius the attacks walk)."""
    return _size(torch.maximum(x, 1 - x), norm)


def already_adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """``[B]`` bool: ``x`` is adversarial as it is (its own best point, size 0). Call inside ``frozen_eval``."""
    with torch.no_grad():
        return is_adversarial(model(x), y, targeted)


class Best:
    """Per image of ``x`` ``[B,C,H,W]``: the smallest misclassified point offered so far (``x`` where none).

    Args:
        x: the clean images; norm: the norm sizes are measured in.
        y: ``[B]`` true labels (targets when ``targeted``), needed by :meth:`update` only.
        dtype: of ``size``. float64 (the default) where points of several attacks are compared (the
            ensemble, the sparse and decision-based attacks); ``x.dtype`` inside an iterative attack, whose
            step rules compute with ``size`` (FMN's radius, C&W's tau) in the images' precision.

    Attributes:
        x_adv: ``[B,C,H,W]`` the kept points; size: ``[B]`` their sizes (``inf`` where none);
        last_size: ``[b]`` the sizes of the points of the last :meth:`offer` / :meth:`update` (their caller
            reuses it instead of a second reduction).
    """

    def __init__(self, x: torch.Tensor, norm: str, *, y: torch.Tensor | None = None, targeted: bool = False,
                 dtype: torch.dtype = torch.float64):
        self.x0, self.norm, self.y, self.targeted = x.detach(), norm, y, targeted
        self.x_adv = self.x0.clone()
        self.size = torch.full((x.shape[0],), float("inf"), dtype=dtype, device=x.device)
        self.last_size: torch.Tensor | None = None

    @property
    def found(self) -> torch.Tensor:
        return torch.isfinite(self.size)

    def offer(self, cand: torch.Tensor, adversarial: torch.Tensor, rows: torch.Tensor | None = None,
              r: torch.Tensor | None = None) -> torch.Tensor:
        """Keep ``cand`` ``[b,C,H,W]`` where ``adversarial`` ``[b]`` and smaller; ``rows`` ``[b]`` = which images
        (all when None); ``r``: ``cand - x`` when the caller has it (not recomputed). Returns ``[b]`` bool,
        where it was kept."""
        cand = cand.detach().to(self.x_adv.dtype)
        idx = slice(None) if rows is None else rows
        size = _size(cand - self.x0[idx] if r is None else r, self.norm).to(self.size.dtype)
        better = adversarial & (size < self.size[idx])
        self.last_size = size
        if rows is None:
            self.size = torch.where(better, size, self.size)
            torch.where(view_as_images(better, cand), cand, self.x_adv, out=self.x_adv)  # in place
        else:
            self.size[rows] = torch.where(better, size, self.size[rows])
            self.x_adv[rows] = torch.where(view_as_images(better, cand), cand, self.x_adv[rows])
        return better

    def update(self, xa: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor | None = None,
               r: torch.Tensor | None = None) -> torch.Tensor:
        """Offer ``xa`` ``[b,C,H,W]``, the very point whose ``logits`` ``[b,K]`` the model gave, where they are
        adversarial for ``y`` (so what is kept was re-checked on the tensor the model saw). Returns the
        ``[b]`` adversarial mask (not only where kept)."""
        idx = slice(None) if rows is None else rows
        adversarial = is_adversarial(logits.detach(), self.y[idx], self.targeted)
        self.offer(xa, adversarial, rows, r)
        return adversarial

    def check(self, model: nn.Module, cand: torch.Tensor, y: torch.Tensor,
              rows: torch.Tensor | None = None) -> torch.Tensor:
        """Classify ``cand`` (clipped to [0,1]) with ``model`` and offer it; returns the ``[b]`` adversarial mask."""
        cand = cand.detach().clamp(0, 1)
        with torch.no_grad():
            adversarial = is_adversarial(model(cand), y)
        self.offer(cand, adversarial, rows)
        return adversarial

    def start(self, model: nn.Module, y: torch.Tensor, x_init: torch.Tensor | None) -> None:
        """Offer the supplied starting points ``x_init`` ``[B,C,H,W]`` (rows the model classifies as ``y``,
        e.g. the clean image where an earlier attack failed, are ignored)."""
        if x_init is not None:
            if x_init.shape != self.x0.shape:
                raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {tuple(self.x0.shape)}")
            self.check(model, x_init.to(self.x0), y)


def blend(x: torch.Tensor, x_to: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x + t (x_to - x)`` with a per-sample ``t`` ``[B]``."""
    return x + view_as_images(t, x) * (x_to - x)
