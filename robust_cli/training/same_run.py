"""Whether a run directory's stored config is the run a ``robust train`` command asks for.

A run directory is named from its overrides, so a command normally finds only its own run there. With
``run_dir=<dir>`` (or code defaults that changed since) it can find another configuration's run: resuming it
would load weights of another architecture (a ``state_dict`` error mid-start), and a finished one would be
reported as this command's result. ``stored_differences`` names what differs, in the keys that decide the
trained weights (``MODEL_KEYS``); how a run executes (device, logger, loaders, ``trainer.devices``, paths) may
change between a run and its resumption.
"""

from __future__ import annotations

from typing import Any

#: the top-level keys of ``TrainConfig`` that decide what is trained (all others may differ on a resume)
MODEL_KEYS = ("dataset", "model", "defense", "optimizer", "schedule", "epochs", "batch_size", "seed", "tikhonov",
              "max_batches_per_epoch", "val_attack", "val_every", "val_eps", "val_norm", "val_n", "val_options")
#: below ``dataset``: where its file lies, not what it holds (a relative ``dataset.path`` from another folder),
#: and what only ``robust eval`` reads (the evaluation subset's size, the robust-accuracy thresholds)
_IGNORED = {"dataset.path", "dataset.eval_size", "dataset.thresholds"}


def _differences(stored: Any, now: Any, where: str) -> list[str]:
    """``key=stored (now value)`` for each value of ``stored`` (a plain container) that ``now`` does not equal.
    Only the keys ``stored`` holds are compared: a key the code added since the run was written is no change."""
    if where in _IGNORED:
        return []
    if isinstance(stored, dict) and isinstance(now, dict):
        if "name" in stored and stored["name"] != now.get("name"):  # another model/defense/...: its name says it
            return [f"{where}={stored['name']} (now {now.get('name')})"]
        return [d for k, v in stored.items() for d in _differences(v, now.get(k), f"{where}.{k}")]
    if stored != now:
        return [f"{where}={stored} (now {now})"]
    return []


def stored_differences(stored_cfg: Any, cfg: Any) -> list[str]:
    """The ``MODEL_KEYS`` values of a run directory's ``config.yaml`` (``stored_cfg``, a DictConfig; empty for
    a directory without one) that the composed ``cfg`` changes, as ``key=stored (now value)``."""
    from omegaconf import OmegaConf

    if len(stored_cfg) == 0:
        return []
    stored = OmegaConf.to_container(stored_cfg, resolve=True)
    now = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in MODEL_KEYS if k in cfg]), resolve=True)
    return [d for k in MODEL_KEYS if k in stored for d in _differences(stored[k], now.get(k), k)]
