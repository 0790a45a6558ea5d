"""Reuse of stored results: an (attack, norm) result or ``lipschitz.json`` is recomputed only when what
produced it changed (the weights, the number of images, the attack's options, the eps search, the seed).
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

import torch
from omegaconf import DictConfig

from robust_cli.rundir import ResultDir

log = logging.getLogger("robust_cli.eval")

#: what must match for a stored result to be reused ("model": model.pt retrained with force=true)
CACHE_KEYS = ("model", "n", "params", "eps_search", "search_steps", "seed")


def model_identity(model: torch.nn.Module) -> str:
    """A SHA-256 of the model's weights and buffers (16 hex digits): changes whenever ``robust train
    force=true`` retrains the run, so results of the old model are not reused."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def result_config(fn: Any, params: dict, n: int, cfg: DictConfig, model_id: str) -> dict[str, Any]:
    """What produced a result (stored as ``summary.json["config"]``, compared on ``CACHE_KEYS``)."""
    return {"model": model_id, "n": int(n), "params": params,
            "eps_search": cfg.eps_search if fn.budget else None,
            "search_steps": int(cfg.search_steps) if fn.budget else None, "seed": int(cfg.seed)}


def cached_summary(result: ResultDir, expected: dict[str, Any], eps: float,
                   thresholds: list[float] | None = None) -> dict[str, Any] | None:
    """The stored summary of ``result`` if it was computed with ``expected``, else None.

    What is read off the distances without attacking again is refreshed from ``per_sample.csv``: a changed
    ``eps.<norm>`` moves ``error_at_eps``, changed ``thresholds`` (the data set's or ``thresholds.<norm>=``)
    the ``robust_accuracy`` columns.
    """
    if not result.complete():
        return None
    try:
        summary = result.read_summary()
    except (OSError, ValueError):  # an unreadable old file is recomputed
        return None
    stored = summary.get("config", {})
    changed = [k for k in CACHE_KEYS if stored.get(k) != expected.get(k)]
    if changed:
        log.info("%s: %s changed since it was evaluated; recomputing", result.name, ", ".join(changed))
        return None
    new_eps = not math.isclose(float(summary.get("eps", math.nan)), eps) and not math.isnan(eps)
    new_thresholds = thresholds is not None and set(summary.get("robust_accuracy", {})) != {
        f"{t:g}" for t in thresholds}
    if new_eps or new_thresholds:
        from robust_cli.evaluation.summary import read_off

        distances = result.read_per_sample()["distance"].to_numpy()
        summary.update(read_off(distances, eps if new_eps else float(summary["eps"]),
                                thresholds if new_thresholds else None))
        result.write_summary(summary)
    return summary


def lipschitz_stale(stored: dict[str, Any], n: int, model_id: str) -> bool:
    """``lipschitz.json`` (``stored``, ``{}`` when absent) was computed on other images or other weights."""
    return (stored.get("n"), stored.get("model")) != (n, model_id)
