"""Divergence checks of the training loop: a run whose loss or weights blow up ends ``failed``, never
``done``, and its blown-up weights are never checkpointed.

A run has diverged when
- a step's loss is not finite (checked at every step, from the one device sync the step makes anyway,
  before ``backward``, so the optimizer never steps on it);
- after an epoch's last step, a parameter is not finite or larger in magnitude than ``MAX_WEIGHT``
  (one sync per epoch, before the checkpoint is written). The weights of the networks the recipes here
  train stay below 10 in magnitude: 1e4 leaves three orders of magnitude of margin;
- every step of an epoch had a loss above ``LOSS_FACTOR`` times the chance-level cross-entropy ``ln K``
  (``K`` classes; a uniform prediction scores ``ln K``): no objective of ``robust_cli.defenses`` stays a
  thousand times above it while it learns, and one bad batch in an epoch does not count.

The message names the learning rate of the failing step and where it came from: the schedule, where it
set the lr above ``optimizer.lr`` (e.g. a multistep ``gamma`` above 1), else ``optimizer.lr`` itself.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robust_cli.errors import UserError

MAX_WEIGHT = 1e4
LOSS_FACTOR = 1000.0


class Diverged(UserError):
    """Training diverged (one line: where, what, the lr's origin, the checkpoint kept)."""


def loss_bound(num_classes: int) -> float:
    """``LOSS_FACTOR * ln K``: an epoch whose every step lies above it has diverged."""
    return LOSS_FACTOR * math.log(max(int(num_classes), 2))


@torch.no_grad()
def max_abs_weight(model: nn.Module) -> float:
    """``max |w|`` over the parameters (nan where one is nan), in one device sync."""
    params = [p.detach() for p in model.parameters()]
    if not params:
        return 0.0
    return torch.stack([p.abs().max().float() for p in params if p.numel()]).max().item()


def lr_origin(epoch: float, lr: float, cfg) -> str:
    """Where ``lr`` (the lr at progress ``epoch``, 0-based) came from, and what to change."""
    base = float(cfg.optimizer.lr)
    if lr > base * (1 + 1e-9):
        s = cfg.schedule
        detail = {"multistep": f"schedule.gamma={s.gamma:g} at milestones {list(s.milestones)}",
                  "exponential": f"schedule.gamma={s.gamma:g} per epoch",
                  "cosine": f"schedule.eta_min={s.eta_min:g}"}.get(s.name, f"schedule={s.name}")
        return (f"the lr {lr:.3g} of epoch {math.floor(epoch) + 1} came from the schedule ({detail} raised "
                f"optimizer.lr={base:g} {lr / base:.3g}-fold); fix the schedule")
    return f"at lr {lr:.3g} (optimizer.lr={base:g}); lower optimizer.lr"


def _fail(epoch: int, what: str, lr_epoch: float, lr: float, cfg) -> Diverged:
    kept = f"checkpoint of epoch {epoch - 1} kept" if epoch > 1 else "no checkpoint written"
    return Diverged(f"training diverged in epoch {epoch}: {what}; {lr_origin(lr_epoch, lr, cfg)} ({kept})")


def check_step(loss: float, epoch: int, step: int, lr_epoch: float, lr: float, cfg) -> None:
    """Raise ``Diverged`` where the loss of step ``step`` (0-based) of epoch ``epoch`` (1-based) is not finite."""
    if not math.isfinite(loss):
        raise _fail(epoch, f"the loss became {loss} at step {step + 1}", lr_epoch, lr, cfg)


def check_epoch(model: nn.Module, steps_above: float, steps: float, epoch: int, lr_epoch: float, lr: float,
                cfg) -> None:
    """After epoch ``epoch``'s last step, before its checkpoint: raise ``Diverged`` where the weights are
    not finite or beyond ``MAX_WEIGHT``, or every one of its ``steps`` had a loss above ``loss_bound``."""
    w = max_abs_weight(model)
    if not math.isfinite(w) or w > MAX_WEIGHT:
        raise _fail(epoch, f"max |weight| {w:.3g} after its last step (bound {MAX_WEIGHT:g})", lr_epoch, lr, cfg)
    if steps and steps_above >= steps:
        bound = loss_bound(cfg.dataset.num_classes)
        raise _fail(epoch, f"the loss stayed above {bound:.4g} ({LOSS_FACTOR:g} x chance-level cross-entropy "
                    f"ln {cfg.dataset.num_classes}) in every step", lr_epoch, lr, cfg)
