"""Reuse of stored results: an (attack, norm) result or ``lipschitz.json`` is computed again only when what
produced it changed, and never silently replaced by a result of other settings.

A stored (attack, norm) result and the settings asked for now:

- the same: reused (a new ``eps.<norm>`` or ``thresholds`` is read off its stored distances);
- other weights (``robust train force=true`` retrained the run): recomputed, the old result describes a
  model that is gone;
- only more images (``n_examples`` grew): recomputed, the new result covers the old one;
- anything else (fewer images, other attack options, eps search or seed): refused, naming the settings,
  unless ``force=true`` (an expensive ``n_examples=1000`` result is not replaced by ``n_examples=20`` by
  accident).
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

import torch
from omegaconf import DictConfig

from robust_cli.errors import UserError
from robust_cli.rundir import ResultDir

log = logging.getLogger("robust_cli.eval")

#: what must match for a stored result to be reused ("model": model.pt retrained with force=true)
CACHE_KEYS = ("model", "n", "params", "eps_search", "search_steps", "eps_rtol", "eps_tol", "seed")


def model_identity(model: torch.nn.Module) -> str:
    """A SHA-256 of the model's weights and buffers (16 hex digits): changes whenever ``robust train
    force=true`` retrains the run, so results of the old model are not reused."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def result_config(fn: Any, params: dict, n: int, cfg: DictConfig, model_id: str) -> dict[str, Any]:
    """What produced a result (stored as ``summary.json["config"]``, compared on ``CACHE_KEYS``; the attacks'
    ``precision`` and ``compile`` are recorded, not compared: they change the numbers within a tolerance)."""
    return {"model": model_id, "n": int(n), "params": params,
            "eps_search": cfg.eps_search if fn.budget else None,
            "search_steps": int(cfg.search_steps) if fn.budget else None,
            "eps_rtol": float(cfg.eps_rtol) if fn.budget and cfg.eps_search == "adaptive" and cfg.eps_tol is None
            else None,
            "eps_tol": float(cfg.eps_tol) if fn.budget and cfg.eps_search == "adaptive" and cfg.eps_tol is not None
            else None, "seed": int(cfg.seed),
            "precision": str(cfg.get("precision", "fp32")), "compile": bool(cfg.get("compile", False))}


def _changes(stored: dict[str, Any], expected: dict[str, Any], attack: str) -> list[str]:
    """The differing settings as the user writes them: ``["n_examples=1000 (now 20)", "attack.pgd.steps=10
    (now 5)"]`` (``n`` is the number of images evaluated, ``min(n_examples, test set size)``)."""
    out = []
    for key in CACHE_KEYS[1:]:
        old, new = stored.get(key), expected.get(key)
        if old == new:
            continue
        if key == "params" and isinstance(old, dict) and isinstance(new, dict):
            for opt in sorted(set(old) | set(new), key=str):
                if old.get(opt) != new.get(opt):
                    out.append(f"attack.{attack}.{opt}={old.get(opt)} (now {new.get(opt)})")
        else:
            out.append(f"{'n_examples' if key == 'n' else key}={old} (now {new})")
    return out


def cached_summary(result: ResultDir, expected: dict[str, Any], eps: float,
                   thresholds: list[float] | None = None, *, attack: str = "", force: bool = False,
                   ) -> dict[str, Any] | None:
    """The stored summary of ``result`` if it was computed with ``expected``, else None (compute it).

    Raises ``UserError`` where the stored result was computed on the same weights with other settings that
    do not merely add images, unless ``force`` (see the module docstring). ``attack``: the attack's name,
    for the message. What is read off the distances without attacking again is refreshed from
    ``per_sample.csv``: a changed ``eps.<norm>`` moves ``error_at_eps``, changed ``thresholds`` (the data
    set's or ``thresholds.<norm>=``) the ``robust_accuracy`` columns.
    """
    if not result.complete():
        return None
    try:
        summary = result.read_summary()
    except (OSError, ValueError):  # an unreadable old file is recomputed
        return None
    if force:
        return None
    stored = summary.get("config", {})
    changed = [k for k in CACHE_KEYS if stored.get(k) != expected.get(k)]
    if "model" in changed:
        log.info("%s: the run was retrained since it was evaluated; recomputing", result.name)
        return None
    if changed == ["n"] and int(stored.get("n") or 0) < int(expected["n"]):
        log.info("%s: %d images instead of %s; recomputing", result.name, expected["n"], stored.get("n"))
        return None
    if changed:
        raise UserError(f"{result.name} was evaluated with {', '.join(_changes(stored, expected, attack))}; "
                        "force=true replaces the stored result (or repeat its settings to reuse it)")
    try:  # a per_sample.csv cut short (a copy, a full disk) is not a result: its n images are recomputed
        rows = len(result.read_per_sample())
    except (OSError, ValueError, KeyError):
        rows = -1
    if rows != int(stored.get("n") or 0):
        log.warning("%s: per_sample.csv holds %s of its %s images; recomputing", result.name,
                    "none" if rows < 0 else rows, stored.get("n"))
        return None
    new_eps = not math.isclose(float(summary.get("eps", math.nan)), eps) and not math.isnan(eps)
    new_thresholds = thresholds is not None and set(summary.get("robust_accuracy", {})) != {
        f"{t:g}" for t in thresholds}
    if new_eps or new_thresholds:
        from robust_cli.evaluation.summary import per_class, read_off

        frame = result.read_per_sample()
        summary.update(read_off(frame["distance"].to_numpy(), eps if new_eps else float(summary["eps"]),
                                thresholds if new_thresholds else None))
        summary["per_class"] = per_class(frame, float(summary["eps"]))
        result.write_summary(summary)
    return summary


def lipschitz_stale(stored: dict[str, Any], n: int, model_id: str) -> bool:
    """``lipschitz.json`` (``stored``, ``{}`` when absent) was computed on other images or other weights, or
    holds the keys of before the margin radii were named estimates (``lipschitz.LEGACY_KEYS``)."""
    from robust_cli.evaluation.lipschitz import LEGACY_KEYS

    legacy = any(old in stored for old in LEGACY_KEYS.values())
    return legacy or (stored.get("n"), stored.get("model")) != (n, model_id)
