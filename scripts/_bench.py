"""What the attack benchmarks under ``scripts/`` share: the model and images, peer loading, re-verification.

Peers (adv-lib, torchattacks, foolbox) are never dependencies of ``robust``: they live in side directories
(``.venv/bin/pip install --no-deps --target .bench-advlib adv-lib tqdm``; ``... --target .bench-peers
torchattacks foolbox eagerpy requests numba llvmlite GitPython gitdb smmap urllib3 idna charset_normalizer
certifi``) that only a benchmark puts on ``sys.path``. Every image a benchmark scores is re-verified here
with the bare model (inside [0,1], misclassified) and its size recomputed as the evaluation measures it.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


class Counter(nn.Module):
    """The model, counting the images it is run on (forward passes, summed over the batch)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.model(x)


def peer_parser(description: str, norms: str, peers_required: bool) -> argparse.ArgumentParser:
    """The options every peer benchmark shares: ``--run``, ``--n``, ``--norms`` (default ``norms``),
    ``--advlib`` and ``--peers`` (side-directory installs; required when ``peers_required``)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--run", required=True, help="a robust train run directory")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--norms", default=norms)
    ap.add_argument("--advlib", required=peers_required, default=None, help="directory holding adv_lib")
    ap.add_argument("--peers", required=peers_required, default=None,
                    help="directory holding foolbox, eagerpy, numba")
    return ap


def add_peers(path: str | Path | None) -> bool:
    """Put a side directory of peer libraries first on ``sys.path`` (stubbing adv-lib's optional ``visdom``
    and, where absent, ``tqdm``); False when ``path`` is unset."""
    if not path:
        return False
    sys.path.insert(0, str(Path(path).resolve()))
    sys.modules.setdefault("visdom", types.ModuleType("visdom"))
    if importlib.util.find_spec("tqdm") is None:  # imported by adv-lib's utilities, unused by the attacks
        stub = types.ModuleType("tqdm")
        stub.__spec__ = importlib.machinery.ModuleSpec("tqdm", None)
        stub.tqdm = lambda it=None, *a, **k: it
        sys.modules["tqdm"] = stub
    return True


def load_advlib(path: str | Path | None):
    """adv-lib's ``adv_lib.attacks`` package from the side directory ``path``; None if unset."""
    if not add_peers(path):
        return None
    import adv_lib.attacks as lib  # noqa: PLC0415

    return lib


def correct_test_images(run: str | Path, n: int, device: str = "cpu", offset: int = 0):
    """``(model, x [M,C,H,W], y [M], n_first)``: the run's model in eval mode and the correctly classified
    images among the first ``n`` of its test split (from image ``offset`` on: ``[offset, offset + n)``)."""
    from robust_cli.data.sources import load_split
    from robust_cli.training.checkpoint import load_trained_model

    model, cfg = load_trained_model(Path(run), device=device)
    model.eval()
    x, y = load_split(cfg.dataset, cfg.data, "test")
    x, y = x[offset:offset + n].float().to(device), y[offset:offset + n].to(device)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    return model, x[correct], y[correct], int(correct.numel())


def verified_sizes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, norm: str) -> torch.Tensor:
    """``[B]`` float64 sizes of ``adv - x`` (l0: changed pixels), ``inf`` where ``adv`` is outside [0,1] or
    the model classifies it as ``y`` (re-run here, never trusted)."""
    from robust_cli.attacks.best import perturbation_size

    adv = adv.detach()
    with torch.no_grad():
        inside = (adv >= 0).flatten(1).all(1) & (adv <= 1).flatten(1).all(1)
        ok = inside & (model(adv).argmax(1) != y)
    size = perturbation_size(adv, x, norm).double()
    return torch.where(ok, size, torch.full_like(size, float("inf")))


def timed(model: nn.Module, fn: Callable[[nn.Module], torch.Tensor]) -> tuple[torch.Tensor, float, int]:
    """``(fn(counted model), seconds, forward rows)``."""
    counted = Counter(model).eval()
    t = time.perf_counter()
    out = fn(counted)
    return out.detach(), time.perf_counter() - t, counted.rows
