"""What every defense shares: its output type, the norm helpers and the adversarial-step context.

A defense is an object called as ``defense(model, x, y) -> DefenseOutput``; see CONTRIBUTING.md.
Images ``x`` are ``[B, C, H, W]`` in [0, 1], labels ``y`` int64 ``[B]``. The model arrives in train mode and
leaves in train mode. Inner attacks (the adversarial steps) run through :func:`attack_mode`: eval mode, the
parameters' ``requires_grad`` off, so they neither update BatchNorm statistics nor write ``param.grad``;
only the loop's ``loss.backward()`` writes gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from robust_cli.attacks.contract import frozen_eval
from robust_cli.attacks.geometry import view_as_images
from robust_cli.models.wrappers import unwrap  # the bare model under DDP: inner attacks call it


@dataclass
class DefenseOutput:
    """The result of one defense step on a batch.

    Attributes:
        loss: scalar tensor the optimizer steps on (attached to the graph).
        logits: ``[B, K]`` logits of the clean inputs as the model saw them (for the train error).
        stats: per-batch statistics (plain floats) averaged over the epoch into ``history.csv``.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else a ``ValueError`` naming the option."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; expected one of {allowed}")
    return value


def l2_normalize(g: torch.Tensor) -> torch.Tensor:
    """``g / ||g||_2`` per sample ``[B, ...]``; rows with zero norm stay zero (no division by 0)."""
    n = torch.linalg.vector_norm(g.flatten(1), ord=2, dim=1)
    return g / view_as_images(torch.where(n > 0, n, torch.ones_like(n)), g)


def dual_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit direction ``d`` (in the dual norm of ``norm``) with ``<g, d> = ||g||_norm``, per sample.

    ``norm`` is the norm taken of the gradient: l2 -> ``g / ||g||_2``; l1 -> ``sign(g)`` (an l_inf-unit
    step); linf -> ``sign(g_k) e_k`` at ``k = argmax |g|`` (an l1-unit step). Zero rows give zero.
    Shapes ``[B, ...]`` -> ``[B, ...]``.
    """
    if norm == "l2":
        return l2_normalize(g)
    if norm == "l1":
        return torch.sign(g)
    if norm == "linf":
        flat = g.flatten(1)
        idx = flat.abs().argmax(dim=1, keepdim=True)
        d = torch.zeros_like(flat).scatter_(1, idx, flat.gather(1, idx).sign())
        return d.view_as(g)
    raise ValueError(f"unknown norm {norm!r}")


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Yield the bare model in eval mode with frozen parameters; restore mode and flags on exit.

    The adversarial step of every defense runs inside this: eval mode, so BatchNorm statistics are neither
    used per batch nor updated by the attack, and no gradient on the parameters (as in the authors' code of
    Finlay et al. and of Madry et al.).
    """
    with frozen_eval(unwrap(model)) as m:
        yield m


def to_floats(stats: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Tensors -> plain floats with a single device synchronisation (one ``tolist`` for all)."""
    keys = [k for k, v in stats.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in stats.items() if not isinstance(v, torch.Tensor)}
    if keys:
        values = torch.stack([stats[k].detach().double().reshape(()) for k in keys]).cpu().tolist()
        out.update(zip(keys, values))
    return {k: out[k] for k in stats}


def error_rate(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of ``[B, K]`` logits whose argmax is not ``y`` (a 0-d tensor, no sync)."""
    return (logits.detach().argmax(dim=1) != y).float().mean()
