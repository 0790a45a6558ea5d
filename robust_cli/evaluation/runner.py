"""Runs one attack in one norm over the evaluation subset: batching, re-verification, pass counting.

The attack proposes, the evaluation decides (each attack reports an adversarial distance: Finlay et al.,
"Improved robustness to adversarial examples using Lipschitz regularization of the loss", §4.2): every
returned image is clipped to [0,1] and classified again by the model in fp32; only a misclassification the
model confirms is a success, and the distance is recomputed from that image. Budget attacks get their
per-sample distance from the batched eps search of ``eps_search.py``.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from robust_cli.norms import NORMS
from robust_cli.evaluation.distances import adversarial_distance, perturbation_norms
from robust_cli.errors import UserError
from robust_cli.evaluation.eps_search import search_distance

log = logging.getLogger(__name__)


class CountingModel(nn.Module):
    """Wraps a model and counts the samples that go through it forwards and backwards.

    ``forward_samples`` grows by the batch size at every call; ``backward_samples`` by the batch size every
    time a gradient flows back through the call's output (a hook on the output tensor, so ``backward()``
    and ``torch.autograd.grad`` both count, and an output never differentiated does not). Divided by the
    number of images these are the paper-style "passes per sample".
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.forward_samples = 0
        self.backward_samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        n = int(x.shape[0])
        self.forward_samples += n
        if out.requires_grad:
            def count(grad: torch.Tensor) -> None:
                self.backward_samples += n

            out.register_hook(count)
        return out


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Labels ``[N]`` the model predicts on ``x`` ``[N,C,H,W]``, in fp32, without autocast."""
    out = []
    with torch.autocast(device_type=x.device.type, enabled=False):
        for i in range(0, x.shape[0], batch_size):
            out.append(model(x[i:i + batch_size].float()).argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def sanitize(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Clip ``x_adv`` to [0,1] in fp32; rows holding NaN/inf fall back to the clean image (a failure)."""
    if x_adv.shape != x.shape:
        raise RuntimeError(f"attack returned shape {tuple(x_adv.shape)} for input {tuple(x.shape)}")
    x_adv = x_adv.detach().float()
    bad = ~torch.isfinite(x_adv).flatten(1).all(1)
    x_adv = torch.where(bad.view(-1, *([1] * (x.dim() - 1))), x, x_adv)
    return x_adv.clamp(0, 1)


@dataclass
class AttackResult:
    """The outcome of one attack in one norm over ``N`` images.

    Attributes:
        frame: ``per_sample.csv``: index, label, clean_pred, adv_pred, distance and the sizes in the other
            three norms.
        seconds: wall time of the attack (search included, verification included).
        forward_per_sample, backward_per_sample: passes through the model divided by ``N``.
        non_monotone: number of samples whose success was observed to be non-monotone in eps (budget only).
        x_norm: ``[N]`` ``||x||`` in the attack's norm (for rho_adv).
        resolution: the largest eps step of the budget search (0 for minimal-norm attacks).
        x_adv: ``[N,C,H,W]`` on the CPU, the re-verified images (clipped; the input where the attack failed),
            from which the evaluation's running best per image (the next attacks' ``x_init``) is kept.
    """

    frame: pd.DataFrame
    seconds: float
    forward_per_sample: float
    backward_per_sample: float
    non_monotone: int = 0
    x_norm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    resolution: float = 0.0
    x_adv: torch.Tensor | None = None


def takes_argument(fn: Callable, name: str) -> bool:
    """``fn``'s signature names the supplied argument ``name`` (``x_init``, ``reference``)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class RunningBest:
    """The per-image best adversarial of the attacks evaluated so far in one norm (smallest distance).

    ``start()`` is the ``x_init`` ``[N,C,H,W]`` handed to the next attack that takes one (``None`` before the
    first result); ``update(result)`` keeps, per image, the re-verified image of smaller distance (a
    failure has distance ``inf`` and never replaces anything). Distances are the evaluation's own.
    """

    def __init__(self) -> None:
        self.x: torch.Tensor | None = None
        self.distance: torch.Tensor | None = None

    def start(self) -> torch.Tensor | None:
        return self.x

    def update(self, result: AttackResult) -> None:
        if result.x_adv is None:
            return
        dist = torch.tensor(result.frame["distance"].to_numpy(dtype="float64"))
        if self.x is None:
            self.x, self.distance = result.x_adv.clone(), dist
            return
        better = dist < self.distance
        self.x[better] = result.x_adv[better]
        self.distance = torch.minimum(dist, self.distance)


def run_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Callable[..., torch.Tensor],
    norm: str,
    params: dict[str, Any] | None = None,
    *,
    batch_size: int = 250,
    eps_search: str = "bisection",
    search_steps: int = 10,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
    x_init: torch.Tensor | None = None,
    craft_model: nn.Module | None = None,
) -> AttackResult:
    """Attack ``x`` and measure every sample's adversarial distance.

    Args:
        model: ``[B,C,H,W]`` in [0,1] -> logits ``[B,K]``, eval mode.
        x: ``[N,C,H,W]`` images in [0,1] (CPU or device); y: ``[N]`` int64 labels.
        attack: a registered attack (``.budget``, ``.norms``), called as ``attack(model, x, y, norm=, **params)``
            (plus ``eps=[b]`` for budget attacks).
        norm: one of ``attack.norms``.
        params: the attack's options (``eps`` is ignored for budget attacks: the search sets it).
        batch_size: images per attack call.
        eps_search, search_steps: the budget-attack search (``bisection`` | ``grid``).
        device: where the model and the batches live.
        on_batch: called with the batch size after each batch (progress bars).
        x_init: ``[N,C,H,W]`` starting adversarials (e.g. ``RunningBest.start()``), passed batch by batch to a
            minimal-norm attack whose signature takes ``x_init``; ignored otherwise.
        craft_model: a transfer attack's *source* model (same input and label space): the attack sees only
            it, while ``model`` (the target) decides every success, the budget search's included, and the
            distances are measured on what ``model`` misclassifies. None: white-box (``model`` itself).

    Returns:
        An ``AttackResult``.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}")
    params = dict(params or {})
    if params.get("targeted"):
        # the evaluation scores "adversarial = not the true label"; a targeted attack's y holds targets
        raise UserError(f"{getattr(attack, '__name__', attack)}: targeted=true cannot be evaluated (robust eval "
                        "measures untargeted distances); call the attack function directly for targeted use")
    budget = bool(getattr(attack, "budget", False))
    if budget:
        params.pop("eps", None)
    was_training = model.training
    if craft_model is not None:
        model.eval()  # the target decides; the wrapper below puts only the source in eval mode
    counted = CountingModel(model if craft_model is None else craft_model).eval()
    had_grad = [p.grad is not None for p in model.parameters()]
    others = [n for n in NORMS if n != norm]
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("label", "clean_pred", "adv_pred", "distance", *others)}
    x_norms, kept = [], []
    pass_init = x_init is not None and not budget and takes_argument(attack, "x_init")
    non_monotone = 0
    resolution = 0.0
    start = time.perf_counter()
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(device).float()
        yb = y[i:i + batch_size].to(device)
        clean_pred = predict(model, xb)
        correct = clean_pred == yb
        x_adv = xb.clone()
        idx = correct.nonzero().squeeze(1)
        if idx.numel():
            xc, yc = xb[idx], yb[idx]
            if budget:
                found = search_distance(attack, model, xc, yc, norm, params, method=eps_search,
                                        steps=search_steps, attack_model=counted)
                x_adv[idx] = sanitize(found.x_adv, xc)
                non_monotone += int(found.non_monotone.sum())
                resolution = max(resolution, float(found.resolution.max()))
            else:
                init = {"x_init": x_init[i:i + batch_size].to(device).float()[idx]} if pass_init else {}
                x_adv[idx] = sanitize(attack(counted, xc, yc, norm=norm, **params, **init), xc)
        adv_pred = predict(model, x_adv)
        success = adv_pred != yb
        sizes = perturbation_norms(x_adv, xb)
        dist = adversarial_distance(sizes[norm], correct, success)
        rows["label"].append(yb.cpu().numpy())
        rows["clean_pred"].append(clean_pred.cpu().numpy())
        rows["adv_pred"].append(adv_pred.cpu().numpy())
        rows["distance"].append(dist.cpu().double().numpy())
        for other in others:
            rows[other].append(sizes[other].cpu().double().numpy())
        x_norms.append(perturbation_norms(xb, torch.zeros_like(xb))[norm].cpu().double().numpy())
        kept.append(x_adv.cpu())
        if on_batch is not None:
            on_batch(int(xb.shape[0]))
    seconds = time.perf_counter() - start
    # the attack contract (CONTRIBUTING.md): an attack that breaks it would corrupt later evaluations
    if model.training:
        raise RuntimeError(f"attack {getattr(attack, '__name__', attack)} changed model.training")
    model.train(was_training)
    if any(p.grad is not None and not h for p, h in zip(model.parameters(), had_grad)):
        raise RuntimeError(f"attack {getattr(attack, '__name__', attack)} left gradients on the parameters")
    n = max(int(x.shape[0]), 1)
    columns = {k: np.concatenate(v) if v else [] for k, v in rows.items()}
    frame = pd.DataFrame({"index": np.arange(x.shape[0]), **columns})
    return AttackResult(
        frame=frame,
        seconds=seconds,
        forward_per_sample=counted.forward_samples / n,
        backward_per_sample=counted.backward_samples / n,
        non_monotone=non_monotone,
        x_norm=np.concatenate(x_norms) if x_norms else np.zeros(0),
        resolution=resolution,
        x_adv=torch.cat(kept) if kept else None,
    )
