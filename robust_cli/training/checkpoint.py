"""Checkpoints (resumable, atomic) and the finished model file that ``robust eval`` rebuilds.

``checkpoints/last.pt`` = {model, optimizer, epoch (completed), history (list of dict rows), format, and
``defense``: the state of a defense that trains a model of its own (the adversary critic), when it has one}
``model.pt`` = {state_dict, model_cfg, dataset_cfg, data_cfg, format}
``checkpoints/best.pt`` (``val_attack=``) = the same plus {epoch, val_robust_accuracy}
Both hold tensors and plain Python only and are read with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from robust_cli import io
from robust_cli.errors import UserError
from robust_cli.models.wrappers import unwrap
from robust_cli.rundir import RunDir

FORMAT = 1


def save_checkpoint(path: Path, model, optimizer, epoch: int, history: list[dict[str, Any]],
                    defense_state: dict[str, Any] | None = None) -> None:
    blob = {"format": FORMAT, "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "epoch": int(epoch), "history": history}
    if defense_state is not None:
        blob["defense"] = defense_state
    io.torch_save(path, blob)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return io.torch_load(path)
    except Exception as err:
        raise io.unreadable(f"checkpoint {path}", err) from None


def save_model(path: Path, model, cfg: DictConfig, **extra: Any) -> None:
    """Write ``model.pt`` (or ``best.pt``): weights plus the model, dataset and data configs needed to rebuild
    it; ``extra``: plain values stored beside them (``best.pt``: ``epoch``, ``val_robust_accuracy``)."""
    io.torch_save(path, {
        "format": FORMAT, "state_dict": unwrap(model).state_dict(),
        "model_cfg": OmegaConf.to_container(cfg.model, resolve=True),
        "dataset_cfg": OmegaConf.to_container(cfg.dataset, resolve=True),
        "data_cfg": OmegaConf.to_container(cfg.data, resolve=True), **extra,
    })


def load_trained_model(run_dir: str | Path | RunDir, device: str | torch.device = "cpu", checkpoint: str = "model"):
    """Rebuild a trained model from ``<run_dir>/model.pt`` (``checkpoint="best"``: ``checkpoints/best.pt``);
    refused unless ``run.json`` (when present) says done.

    Returns:
        (model in eval mode on ``device``, the run's config as a DictConfig with at least ``model``,
        ``dataset`` and ``data``; the full composed config from ``config.yaml`` when present).
    """
    from robust_cli.data import info_of
    from robust_cli.models import build_model

    run = RunDir(run_dir)
    status = run.status() if run.has_record() else "done"  # no run.json: a foreign run directory
    if status != "done":
        raise UserError(f"{run} is not a finished run ({run.record_path.name} status: {status}); finish it with "
                        "its `robust train` command, or give run=<a finished train run directory>")
    if checkpoint not in ("model", "best"):
        raise UserError(f"checkpoint={checkpoint}: expected model (model.pt) or best (checkpoints/best.pt)")
    path = run.model_path if checkpoint == "model" else run.best_checkpoint_path
    if checkpoint == "best" and not path.is_file():
        raise UserError(f"{run} holds no {path.relative_to(run.path)}: it was trained without val_attack=")
    if not path.is_file():
        hint = " (training not finished?)" if run.checkpoint_path.exists() else ""
        raise UserError(f"{run} holds no {path.name}{hint}; give run=<a finished train run directory>")
    try:
        blob = io.torch_load(path, map_location="cpu")
    except Exception as err:
        raise io.unreadable(str(path), err) from None
    cfg = run.read_config()
    cfg.model = blob["model_cfg"]
    cfg.dataset = blob["dataset_cfg"]
    cfg.data = blob.get("data_cfg", cfg.get("data", {"root": "data", "download": True, "num_workers": 0}))
    model = build_model(cfg.model, info_of(cfg.dataset))
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval(), cfg
