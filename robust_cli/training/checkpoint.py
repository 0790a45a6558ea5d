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


def check_trained_run(run_dir: str | Path | RunDir) -> RunDir:
    """The file-level checks of a run directory ``robust eval`` reads, each refused in one line naming the
    path and the problem: a directory; ``run.json`` (when present: a foreign run directory may have none)
    valid JSON saying ``done``; ``config.yaml`` (when present) valid YAML; ``model.pt`` present."""
    run = RunDir(run_dir)
    if not run.is_dir():
        what = "does not exist" if not run.path.exists() else "is not a directory"
        raise UserError(f"run={run} {what}; give run=<a finished train run directory>")
    status = run.status() if run.has_record() else "done"  # no run.json: a foreign run directory
    if status != "done":
        raise UserError(f"{run} is not a finished run ({run.record_path.name} status: {status}); finish it with "
                        "its `robust train` command, or give run=<a finished train run directory>")
    run.read_config()  # a config.yaml that is not YAML is refused here, before anything runs
    path = run.model_path
    if not path.is_file():
        hint = " (training not finished?)" if run.checkpoint_path.exists() else ""
        raise UserError(f"{run} holds no {path.name}{hint}; give run=<a finished train run directory>")
    return run


#: the entries of ``model.pt`` (``save_model``)
_MODEL_KEYS = ("state_dict", "model_cfg", "dataset_cfg")


def _weights_fit(path: Path, model, state_dict: Any) -> None:
    """Load ``state_dict`` into ``model`` or refuse in one line: missing/unexpected keys, other shapes, a
    non-tensor entry, non-finite weights."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise UserError(f"{path}: state_dict is not a mapping of names to tensors; robust reads only the "
                        "model.pt files robust train writes")
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})" for k, v in own.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = ([f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []) + \
                ([f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}"]
                 if unexpected else []) + ([f"shape of {', '.join(shapes[:2])}"] if shapes else [])
        raise UserError(f"{path}: its weights do not fit the architecture its model_cfg names "
                        f"({'; '.join(parts)}); it belongs to another model or was altered")
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"{path}: weights {', '.join(bad[:3])} hold NaN or inf; a model that diverged cannot be "
                        "evaluated (retrain it with force=true)")
    model.load_state_dict(state_dict)


def load_trained_model(run_dir: str | Path | RunDir, device: str | torch.device = "cpu", checkpoint: str = "model",
                       *, keep: bool = False):
    """Rebuild a trained model from ``<run_dir>/model.pt`` (``checkpoint="best"``: ``checkpoints/best.pt``,
    written by robust validation); refused unless ``run.json`` (when present) says done.

    Every problem of the files is one line naming the path (``check_trained_run``; a ``model.pt`` that is not
    a torch file, lacks an entry, or whose weights do not fit its architecture). ``keep``: hold the result for
    the next call on the same unchanged file (``robust``'s validation reads it before the app; the model is
    handed out once, so no caller sees another's changes).

    Returns:
        (model in eval mode on ``device``, the run's config as a DictConfig with at least ``model``,
        ``dataset`` and ``data``; the full composed config from ``config.yaml`` when present).
    """
    run = check_trained_run(run_dir)
    if checkpoint not in ("model", "best"):
        raise UserError(f"checkpoint={checkpoint}: expected model (model.pt) or best (checkpoints/best.pt)")
    path = run.model_path if checkpoint == "model" else run.best_checkpoint_path
    if not path.is_file():
        raise UserError(f"{run} holds no {path.relative_to(run.path)}: it was trained without val_attack=")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, run.config_path.is_file() and
           run.config_path.stat().st_mtime_ns)
    # robust's validation loads it (keep=True) before the app does, in the same process: handed over once
    model, cfg = _KEPT.pop(key) if key in _KEPT else _load_model_file(run, path)
    if keep:
        _KEPT.clear()
        _KEPT[key] = (model, cfg.copy())
    return model.to(device).eval(), cfg


#: ``{(path, mtime, size, config mtime): (model, cfg)}``: the model.pt the validation read, for the app (one)
_KEPT: dict[tuple, tuple[Any, DictConfig]] = {}


def _load_model_file(run: RunDir, path: Path):
    from robust_cli.data import info_of
    from robust_cli.models import build_model

    try:
        blob = io.torch_load(path, map_location="cpu")
    except Exception as err:
        raise io.unreadable(str(path), err) from None
    lacking = [k for k in _MODEL_KEYS if not isinstance(blob, dict) or k not in blob]
    if lacking:
        raise UserError(f"{path} lacks {', '.join(lacking)}; robust reads only the model.pt files robust train "
                        "writes ({state_dict, model_cfg, dataset_cfg, data_cfg, format})")
    cfg = run.read_config()
    try:
        cfg.model = blob["model_cfg"]
        cfg.dataset = blob["dataset_cfg"]
        cfg.data = blob.get("data_cfg", cfg.get("data", {"root": "data", "download": True, "num_workers": 0}))
        model = build_model(cfg.model, info_of(cfg.dataset))
    except UserError as err:
        raise UserError(f"{path}: its model_cfg builds no model ({err})") from None
    except Exception as err:  # a model_cfg / dataset_cfg that builds no model: the file is not robust's
        raise UserError(f"{path}: its model_cfg/dataset_cfg build no model ({type(err).__name__}: "
                        f"{' '.join(str(err).split())[:200]})") from None
    _weights_fit(path, model, blob["state_dict"])
    return model, cfg
