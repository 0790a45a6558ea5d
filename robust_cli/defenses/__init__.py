"""Training objectives (Finlay et al. §2-3; Matyasko's thesis Ch.3): one module per ``defense=<name>`` option.

``build_defense(defense_cfg)`` turns a ``defense`` config into the callable the training loop uses:
``defense(model, x, y) -> DefenseOutput(loss, logits, stats)`` (see CONTRIBUTING.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from robust_cli.defenses.base import DefenseOutput

__all__ = ["DefenseOutput", "build_defense"]


def build_defense(defense_cfg: Mapping[str, Any] | DictConfig) -> Callable[..., DefenseOutput]:
    """Instantiate the class named by ``_target_`` with the config's options (``name`` is dropped).

    Args:
        defense_cfg: a composed ``defense`` config (DictConfig or plain mapping) with ``_target_``.
    Returns:
        the defense object, called as ``defense(model, x, y) -> DefenseOutput``.
    """
    if isinstance(defense_cfg, DictConfig):
        options = OmegaConf.to_container(defense_cfg, resolve=True)
    else:
        options = dict(defense_cfg)
    options.pop("name", None)
    target = options.pop("_target_", None)
    if not target:
        raise ValueError("the defense config has no _target_")
    module_name, _, cls_name = str(target).rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**options)
