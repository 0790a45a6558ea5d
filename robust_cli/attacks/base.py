"""What every attack shares: the registration decorator, norm names and no-side-effect helpers.

An attack is a function ``attack(model, x, y, *, norm, **params) -> x_adv`` on images ``[B,C,H,W]`` in
[0,1]. It must leave ``model.training`` as it found it and leave no gradient on the parameters; the
evaluation, not the attack, decides success and distance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

NORMS = ("l0", "l1", "l2", "linf")


def register_attack(*, norms: tuple[str, ...], budget: bool) -> Callable[[Callable], Callable]:
    """Mark a function as an attack.

    Args:
        norms: the norms the attack supports, a subset of ``NORMS``.
        budget: True for eps-bounded attacks (the evaluation searches eps per sample to get a distance);
            False for minimal-norm attacks (they return their best adversarial; the distance is its norm).
    """
    bad = set(norms) - set(NORMS)
    if bad:
        raise ValueError(f"unknown norms {sorted(bad)}; expected a subset of {NORMS}")

    def mark(fn: Callable) -> Callable:
        fn.norms = tuple(norms)
        fn.budget = budget
        return fn

    return mark


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode with its parameters' ``requires_grad`` off; restore both on exit.

    Attacks only need gradients with respect to the input; switching the parameters off saves the
    weight-gradient work and guarantees that nothing leaks into ``param.grad``.
    """
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


def batch_norm(r: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of a perturbation ``r`` ``[B, ...]`` -> ``[B]``; l0 counts non-zero values."""
    flat = r.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "l1":
        return flat.abs().sum(dim=1)
    if norm == "l0":
        return (flat != 0).sum(dim=1).to(r.dtype)
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``f_y - max_{j != y} f_j`` per sample ``[B]``: positive iff the prediction is ``y`` (ties aside)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return true - other.amax(dim=1)


def view_as_images(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample vector ``[B]`` to ``[B, 1, 1, 1]`` (as many dims as ``like``)."""
    return v.view(-1, *([1] * (like.dim() - 1)))
