"""Learning rate as a pure function of the epoch, so a resumed run needs no scheduler state."""

from __future__ import annotations

import math

from robust_cli.errors import UserError


def lr_at(epoch: float, base_lr: float, schedule, epochs: int) -> float:
    """The learning rate at training progress ``epoch`` (0-based; fractional within an epoch).

    The loop asks for it before every step with ``epoch + step / steps_per_epoch``. Step schedules follow the
    papers and change only at epoch boundaries; cosine and the warm-up are continuous.

    Schedules (``schedule.name``):
        multistep: ``base_lr * gamma^(number of milestones <= epoch)`` (Finlay: lr/5 at 60,120,180 -> gamma 0.2)
        exponential: ``base_lr * gamma^floor(epoch)`` (thesis MNIST: gamma 0.95 per epoch)
        cosine: from ``base_lr`` to ``eta_min`` over ``epochs``, per step
        constant: ``base_lr``
    A linear warm-up from ``base_lr / 10`` over ``warmup_epochs`` precedes any of them.
    """
    name = schedule.name
    if name == "multistep":
        lr = base_lr * schedule.gamma ** sum(1 for m in schedule.milestones if math.floor(epoch) >= m)
    elif name == "exponential":
        lr = base_lr * schedule.gamma ** math.floor(epoch)
    elif name == "cosine":
        lr = schedule.eta_min + 0.5 * (base_lr - schedule.eta_min) * (1 + math.cos(math.pi * epoch / max(1, epochs)))
    elif name == "constant":
        lr = base_lr
    else:
        raise UserError(f"unknown schedule {name!r}; expected multistep, exponential, cosine or constant")
    warmup = int(schedule.warmup_epochs)
    if epoch < warmup:
        lr *= 0.1 + 0.9 * epoch / warmup
    return lr
