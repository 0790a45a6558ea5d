"""The attack contract: how an attack is registered and how it runs the model without side effects.

An attack is a function ``attack(model, x, y, *, norm, **params) -> x_adv`` on images ``[B,C,H,W]`` in
[0,1] (CONTRIBUTING.md). It must leave ``model.training`` as it found it and leave no gradient on the
parameters (``frozen_eval``); the evaluation, not the attack, decides success and distance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from robust_cli.norms import NORMS


def register_attack(
    *, norms: tuple[str, ...], budget: bool, option_norms: dict[str, dict[Any, tuple[str, ...]]] | None = None
) -> Callable[[Callable], Callable]:
    """Mark a function as an attack.

    Args:
        norms: the norms the attack supports, a subset of ``NORMS``.
        budget: True for eps-bounded attacks (the evaluation searches eps per sample to get a distance);
            False for minimal-norm attacks (they return their best adversarial; the distance is its norm).
        option_norms: option -> value -> the norms the attack supports with that value (a subset of
            ``norms``), e.g. ``{"projection": {"advlib": ("l2", "linf")}}``; read by :func:`norms_with`.
    """
    bad = set(norms) - set(NORMS)
    for by_value in (option_norms or {}).values():
        for subset in by_value.values():
            bad |= set(subset) - set(norms)
    if bad:
        raise ValueError(f"unknown norms {sorted(bad)}; expected a subset of {norms}")

    def mark(fn: Callable) -> Callable:
        fn.norms = tuple(norms)
        fn.budget = budget
        fn.option_norms = dict(option_norms or {})
        return fn

    return mark


def norms_with(fn: Callable, options: dict) -> tuple[tuple[str, ...], str]:
    """``(norms, why)``: the norms the attack ``fn`` supports with these ``options`` (its ``norms`` narrowed by
    its ``option_norms``) and, where an option narrowed them, ``" with option=value"`` (else ``""``)."""
    norms, why = tuple(fn.norms), ""
    for option, by_value in getattr(fn, "option_norms", {}).items():
        value = options.get(option)
        if value in by_value:
            norms = tuple(n for n in norms if n in by_value[value])
            why += f" with {option}={value}"
    return norms, why


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode with its parameters' ``requires_grad`` off; restore both on exit.

    Attacks only need gradients with respect to the input; switching the parameters off saves the
    weight-gradient work and guarantees that nothing leaks into ``param.grad``.
    """
    was_training = model.training
    model.eval()
    try:
        with frozen_params(model):
            yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def frozen_params(module: nn.Module) -> Iterator[nn.Module]:
    """``module``'s parameters with ``requires_grad`` off inside, restored on exit: a graph built inside does
    not reach them (an attack's model; the critic while the classifier learns, robust_cli.defenses.critic)."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
