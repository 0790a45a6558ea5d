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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from robust_cli.host_memory import release_freed_host_memory
from robust_cli.norms import NORMS
from robust_cli.evaluation.distances import adversarial_distance, perturbation_norms
from robust_cli.errors import UserError
from robust_cli.acceleration import LowPrecision
from robust_cli.evaluation.eps_search import search_distance
from robust_cli.evaluation.precision import cross_in_fp32
from robust_cli.evaluation.fixed_eps import attack_at_budgets

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
    """Labels ``[N]`` the model predicts on ``x`` ``[N,C,H,W]``, in fp32, without autocast.

    Logits that are not finite are refused (``UserError``), never scored: the argmax of a NaN row is an
    arbitrary class, and an attack would "succeed" or fail on it by accident.
    """
    out = []
    with torch.autocast(device_type=x.device.type, enabled=False):
        for i in range(0, x.shape[0], batch_size):
            logits = model(x[i:i + batch_size].float())
            bad = ~torch.isfinite(logits).all(1)
            if bad.any():
                raise UserError(f"the model's logits are NaN or inf on {int(bad.sum())} of {len(logits)} images "
                                "(finite images in [0,1]); its predictions cannot be scored: refused (check the "
                                "run's model.pt and its training history)")
            out.append(logits.argmax(1))
            if x.shape[0] > batch_size:  # a whole split: its freed activations back to the OS (peak flat in N)
                release_freed_host_memory()
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
        resolutions, tolerances: budget attacks: per searched (correctly classified) image the achieved
            resolution (``hi - lo``; 0 where the attack failed) and the tolerance it was asked for.
        x_adv: ``[N,C,H,W]`` on the CPU, the re-verified images (clipped; the input where the attack failed),
            from which the evaluation's running best per image (the next attacks' ``x_init``) is kept.
        forward_samples, backward_samples: the passes' totals (shards add them up exactly).
    """

    frame: pd.DataFrame
    seconds: float
    forward_per_sample: float
    backward_per_sample: float
    non_monotone: int = 0
    x_norm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    resolution: float = 0.0
    x_adv: torch.Tensor | None = None
    resolutions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tolerances: np.ndarray = field(default_factory=lambda: np.zeros(0))
    forward_samples: int = 0
    backward_samples: int = 0


def batch_seed(seed: int, first_index: int) -> int:
    """The global generator's seed for the batch whose first image has index ``first_index``."""
    return int(seed) * 1_000_003 + int(first_index)


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
    ``sources``: the ``attack`` names of the results merged so far (what a later attack's start came from,
    recorded in its summary as ``started_from``).
    The images are kept only where the results carry them (``run_attack(keep_adv=True)``: the evaluation
    asks for them in a norm where some attack takes ``x_init``, for all of that norm's attacks alike);
    ``distance`` ``[N]`` always (the budget attacks' first upper brackets), from the results computed in this
    call and, through ``add_distances``, those reused from an earlier one: a search then starts from the same
    bracket whether an earlier attack ran now or before (an interrupted evaluation resumes to the same numbers).
    """

    def __init__(self) -> None:
        self.x: torch.Tensor | None = None
        self.x_distance: torch.Tensor | None = None  # [N] the distances of the images in x
        self.distance: torch.Tensor | None = None  # [N] over every result, stored ones included
        self.sources: list[str] = []
        self.bracket_sources: list[str] = []  # the results behind ``distance`` (summary: ``bracketed_by``)

    def start(self) -> torch.Tensor | None:
        return self.x

    def update(self, result: AttackResult, name: str = "") -> None:
        dist = torch.tensor(result.frame["distance"].to_numpy(dtype="float64"))
        self.add_distances(dist, name)
        if result.x_adv is None:
            return
        self.sources.append(name)
        if self.x is None:
            self.x, self.x_distance = result.x_adv, dist  # owned from here on (not used again): no copy
            return
        better = dist < self.x_distance
        self.x[better] = result.x_adv[better]
        self.x_distance = torch.minimum(dist, self.x_distance)

    def add_distances(self, dist: torch.Tensor, name: str = "") -> None:
        """Only the distances ``[N]`` of a result (one stored by an earlier call, whose images are gone): they
        bound the budget attacks' searches as they did when that result was computed."""
        self.bracket_sources.append(name)
        self.distance = dist.clone() if self.distance is None else torch.minimum(dist, self.distance)


TARGET_CHOICES = ("random", "next")


def choose_targets(y: torch.Tensor, num_classes: int, how: str, seed: int) -> torch.Tensor:
    """``[N]`` target classes, each ``!= y``: ``random`` uniform over the other ``K - 1`` classes (drawn from
    ``seed``, the same for every attack of a call), ``next`` ``(y + 1) mod K``."""
    if how not in TARGET_CHOICES:
        raise UserError(f"targets={how}: expected one of {', '.join(TARGET_CHOICES)}")
    if num_classes < 2:
        raise UserError("targeted=true needs at least 2 classes")
    if how == "next":
        return (y + 1) % num_classes
    gen = torch.Generator().manual_seed(int(seed))
    shift = torch.randint(1, num_classes, (y.shape[0],), generator=gen)
    return (y.cpu() + shift) % num_classes


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
    targets: torch.Tensor | None = None,
    rtol: float = 0.01,
    eps_tol: float | None = None,
    upper: torch.Tensor | None = None,
    keep_adv: bool = True,
    seed: int | None = None,
    index_offset: int = 0,
    attack_model: nn.Module | None = None,
    budgets: Sequence[float] | None = None,
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
        eps_search, search_steps: the budget-attack search (``adaptive`` | ``bisection`` | ``grid``).
        rtol, eps_tol: ``adaptive``: the relative / absolute (where given) tolerance of each distance.
        upper: ``[N]`` distances of earlier attacks (``RunningBest.distance``): ``adaptive``'s first eps.
        keep_adv: return the re-verified images (``x_adv``); ``False`` where nothing will use them, so that
            the memory of an evaluation does not grow with the number of images.
        device: where the model and the batches live.
        on_batch: called with the batch size after each batch (progress bars).
        x_init: ``[N,C,H,W]`` starting adversarials (e.g. ``RunningBest.start()``), passed batch by batch to a
            minimal-norm attack whose signature takes ``x_init``; ignored otherwise (and when targeted).
        targets: ``[N]`` int64 target classes (``!= y``), required with ``params["targeted"]``: the attack gets
            them as its ``y`` and succeeds only where the model predicts the target; the distance is then the
            distance to the target class, and the frame gains a ``target`` column.
        seed: where given, the global generator is reseeded before every batch from ``(seed, index of the
            batch's first image)``, so an image's result depends on its batch only, not on the batches run
            before it: a shard (``robust eval shard=i/n``, robust_cli.evaluation.shards) reproduces its
            images' rows of the unsharded run exactly.
        index_offset: the index of ``x[0]`` in the evaluated set (the ``index`` column; shards).
        attack_model: what the attack queries instead of ``model`` (sharing its parameters: compiled, or
            under low-precision autocast, robust_cli.acceleration.attack_model); the clean predictions, the
            eps search's success tests and the verification always use ``model`` in fp32.
        budgets: ``mode=fixed``: a budget attack runs at exactly these eps (``fixed_eps.attack_at_budgets``)
            instead of the eps search; its distance is then the size of the adversarial found at the smallest
            breaking budget, at most that budget (a size within the check's rounding tolerance above it is
            recorded as the budget). Minimal-norm attacks ignore it.
        craft_model: a transfer attack's *source* model (same input and label space): the attack sees only
            it, while ``model`` (the target) decides every success, the budget search's included, and the
            distances are measured on what ``model`` misclassifies. None: white-box (``model`` itself).

    Returns:
        An ``AttackResult``.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}")
    params = dict(params or {})
    targeted = bool(params.get("targeted"))
    if targeted and targets is None:
        raise UserError(f"{getattr(attack, '__name__', attack)}: targeted=true needs target classes (robust eval "
                        "targeted=true chooses them: targets=random | next)")
    if targeted and bool((targets.cpu() == y.cpu()).any()):
        raise ValueError("a target equals the true label")
    budget = bool(getattr(attack, "budget", False))
    if budget:
        params.pop("eps", None)
    was_training = model.training
    if craft_model is not None:
        model.eval()  # the target decides; the wrapper below puts only the source in eval mode
    queried = craft_model if craft_model is not None else model if attack_model is None else attack_model
    counted = CountingModel(queried).eval()
    low_precision = isinstance(attack_model, LowPrecision) and craft_model is None
    had_grad = [p.grad is not None for p in model.parameters()]
    others = [n for n in NORMS if n != norm]
    keys = ("label", *(("target",) if targeted else ()), "clean_pred", "adv_pred", "distance", *others)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    x_norms = []
    # the re-verified images, written in place (no list of batches concatenated at the end: one copy of N
    # images at most, and none where no later attack takes them)
    kept = torch.empty(x.shape, dtype=torch.float32) if keep_adv else None
    pass_init = x_init is not None and not budget and not targeted and takes_argument(attack, "x_init")
    non_monotone = 0
    resolution = 0.0
    resolutions: list[np.ndarray] = []  # budget attacks: per searched image, the achieved resolution ...
    tolerances: list[np.ndarray] = []  # ... and the one asked for
    start = time.perf_counter()
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(device).float()
        yb = y[i:i + batch_size].to(device)
        tb = targets[i:i + batch_size].to(device) if targeted else yb  # what the attack is given as y
        if seed is not None:
            torch.manual_seed(batch_seed(seed, index_offset + i))
        clean_pred = predict(model, xb)
        correct = clean_pred == yb
        x_adv = xb.clone()
        idx = correct.nonzero().squeeze(1)
        broken_at = None  # mode=fixed: per image the budget that broke it (float64, inf where none)
        if idx.numel():
            xc, yc = xb[idx], tb[idx]
            if budget and budgets is not None:
                found = attack_at_budgets(attack, model, xc, yc, norm, budgets, params, attack_model=counted)
                x_adv[idx] = sanitize(found.x_adv, xc)
                broken_at = torch.full((xb.shape[0],), float("inf"), dtype=torch.float64, device=xb.device)
                broken_at[idx] = found.eps
            elif budget:
                up = None if upper is None else upper[i:i + batch_size].to(device).to(xc.dtype)[idx]
                found = search_distance(attack, model, xc, yc, norm, params, method=eps_search,
                                        steps=search_steps, attack_model=counted, rtol=rtol, eps_tol=eps_tol,
                                        upper=up)
                asked = found.resolution  # bisection, grid: the step is the tolerance
                if eps_search == "adaptive":
                    asked = rtol * found.eps if eps_tol is None else torch.full_like(found.eps, float(eps_tol))
                    asked = torch.where(torch.isfinite(found.eps), asked, torch.zeros_like(asked))
                resolutions.append(found.resolution.cpu().double().numpy())
                tolerances.append(asked.cpu().double().numpy())
                x_adv[idx] = sanitize(found.x_adv, xc)
                non_monotone += int(found.non_monotone.sum())
                resolution = max(resolution, float(found.resolution.max()))
            else:
                init = {"x_init": x_init[i:i + batch_size].to(device).float()[idx]} if pass_init else {}
                found = sanitize(attack(counted, xc, yc, norm=norm, **params, **init), xc)
                if low_precision:  # the attack stopped at the low-precision boundary: cross the fp32 one
                    found, spent = cross_in_fp32(model, xc, yc, found)
                    counted.forward_samples += spent
                    missed = ((predict(model, found) != yc) if targeted else (predict(model, found) == yc)
                              ).nonzero().squeeze(1)
                    if missed.numel():  # what low precision could not break is attacked again in fp32
                        again = CountingModel(model).eval()
                        init = {k: v[missed] for k, v in init.items()}
                        found[missed] = sanitize(attack(again, xc[missed], yc[missed], norm=norm, **params, **init),
                                                 xc[missed])
                        counted.forward_samples += again.forward_samples
                        counted.backward_samples += again.backward_samples
                x_adv[idx] = found
        adv_pred = predict(model, x_adv)
        success = adv_pred == tb if targeted else adv_pred != yb  # the model's own verdict, never the attack's
        sizes = perturbation_norms(x_adv, xb)
        dist = adversarial_distance(sizes[norm], correct, success).double()
        if broken_at is not None:
            # an image broken at budget b passed the within-b check (attack_at: relative tolerance 1e-6); its
            # size rounded to float32 can read just above b (float32 sums, float32(0.3) > 0.3), which the
            # summary's P[distance > b] would count as robust at b: it is recorded at b at most
            dist = torch.where(success & torch.isfinite(broken_at), torch.minimum(dist, broken_at), dist)
        rows["label"].append(yb.cpu().numpy())
        if targeted:
            rows["target"].append(tb.cpu().numpy())
        rows["clean_pred"].append(clean_pred.cpu().numpy())
        rows["adv_pred"].append(adv_pred.cpu().numpy())
        rows["distance"].append(dist.cpu().double().numpy())
        for other in others:
            rows[other].append(sizes[other].cpu().double().numpy())
        x_norms.append(perturbation_norms(xb, torch.zeros_like(xb))[norm].cpu().double().numpy())
        if kept is not None:
            kept[i:i + batch_size] = x_adv.cpu()
        if on_batch is not None:
            on_batch(int(xb.shape[0]))
        release_freed_host_memory()  # the batch's freed activations back to the OS: peak flat in N
    seconds = time.perf_counter() - start
    # the attack contract (CONTRIBUTING.md): an attack that breaks it would corrupt later evaluations
    if model.training:
        raise RuntimeError(f"attack {getattr(attack, '__name__', attack)} changed model.training")
    model.train(was_training)
    if any(p.grad is not None and not h for p, h in zip(model.parameters(), had_grad)):
        raise RuntimeError(f"attack {getattr(attack, '__name__', attack)} left gradients on the parameters")
    n = max(int(x.shape[0]), 1)
    columns = {k: np.concatenate(v) if v else [] for k, v in rows.items()}
    frame = pd.DataFrame({"index": np.arange(index_offset, index_offset + x.shape[0]), **columns})
    return AttackResult(
        frame=frame,
        seconds=seconds,
        forward_per_sample=counted.forward_samples / n,
        backward_per_sample=counted.backward_samples / n,
        non_monotone=non_monotone,
        x_norm=np.concatenate(x_norms) if x_norms else np.zeros(0),
        resolution=resolution,
        x_adv=kept,
        resolutions=np.concatenate(resolutions) if resolutions else np.zeros(0),
        tolerances=np.concatenate(tolerances) if tolerances else np.zeros(0),
        forward_samples=int(counted.forward_samples),
        backward_samples=int(counted.backward_samples),
    )
