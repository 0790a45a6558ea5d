"""The data-set registry: one loader module here and one YAML file in ``conf/dataset/`` per data set.

A data set ``<name>`` is two files, and nothing else in the code knows its name:

- ``robust_cli/data/sets/<name>.py`` defines its loader, a function marked ``@register_loader`` (or one
  made by ``torchvision_loader`` in ``_torchvision.py`` and marked the same way)::

      loader(train: bool, *, root: str, download: bool, path: str | None) -> (x, y)

  ``x``: the training or test images as a numpy array or tensor, uint8 in [0,255] or float in [0,1], laid
  out ``[N,H,W]``, ``[N,H,W,C]`` or ``[N,C,H,W]``; ``y``: the ``[N]`` integer labels. ``root`` is
  ``data.root``, ``download`` is ``data.download``, ``path`` is ``dataset.path``; a loader ignores what it
  does not need and raises ``UserError`` for what a user must fix. ``robust_cli.data.sources`` converts,
  checks, caches and splits off the validation images.
- ``conf/dataset/<name>.yaml`` holds ``name``, ``in_shape``, ``num_classes``, ``mean``, ``std``, the
  ``loader`` (the dotted name of that function) and ``thresholds``: the robust-accuracy thresholds per norm
  (``{linf: [...], l2: [...], l1: [...], l0: [...]}``; a norm left out, null or ``[]`` has none).

Only the loaders of this package's modules can be called: a ``loader`` read from a checkpoint is looked up
in :func:`loaders`, never imported. A stored data-set config written before ``loader`` and ``thresholds``
existed (``model.pt``'s ``dataset_cfg``, ``config.yaml``) takes them from the registry entry of the same
name (:func:`with_defaults`).

Public functions:
    register_loader(fn) -> fn                          mark a module-level function as a loader
    loaders() -> {dotted name: function}               every registered loader
    list_datasets() -> [name]                          the entries of conf/dataset
    registry_entry(name) -> DictConfig | None          conf/dataset/<name>.yaml (without its defaults list)
    with_defaults(dataset_cfg) -> DictConfig           ``loader``/``thresholds`` filled in from the entry
    loader_of(dataset_cfg) -> (dotted name, function)  the registered loader a config names
    thresholds_of(dataset_cfg, overrides) -> {norm: [float]}
"""

from __future__ import annotations

import importlib
import importlib.resources
import pkgutil
import re
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from omegaconf import DictConfig, OmegaConf

from robust_cli.errors import UserError
from robust_cli.norms import canonical_norm

__all__ = [
    "list_datasets", "loader_of", "loaders", "register_loader", "registry_entry", "thresholds_of", "with_defaults",
]

#: the keys a stored config written before the registry may lack, taken from the entry of the same name
REGISTRY_KEYS = ("loader", "thresholds")
_NAME = re.compile(r"[a-z0-9_]+")

Loader = Callable[..., tuple[Any, Any]]


def register_loader(fn: Loader) -> Loader:
    """Mark ``fn`` as a data-set loader; :func:`loaders` finds it as ``<module>.<attribute name>``."""
    fn.dataset_loader = True
    return fn


@cache
def loaders() -> dict[str, Loader]:
    """``{"robust_cli.data.sets.<module>.<name>": function}`` for every registered loader of this package."""
    found: dict[str, Loader] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for attr, value in vars(module).items():
            if callable(value) and getattr(value, "dataset_loader", False):
                found[f"{module.__name__}.{attr}"] = value
    return found


def _dataset_dir():
    return importlib.resources.files("robust_cli.conf").joinpath("dataset")


@cache
def list_datasets() -> list[str]:
    """Names accepted as ``dataset=<name>`` (the YAML files of ``conf/dataset``), sorted."""
    return sorted(p.name[: -len(".yaml")] for p in _dataset_dir().iterdir() if p.name.endswith(".yaml"))


def registry_entry(name: str) -> DictConfig | None:
    """``conf/dataset/<name>.yaml`` without its ``defaults`` list, or None for a name not in the registry."""
    if not _NAME.fullmatch(str(name)) or name not in list_datasets():
        return None
    entry = OmegaConf.create(_dataset_dir().joinpath(f"{name}.yaml").read_text())
    entry.pop("defaults", None)
    return entry


def _absent(cfg: Mapping[str, Any] | DictConfig, key: str) -> bool:
    return key not in cfg or (isinstance(cfg, DictConfig) and OmegaConf.is_missing(cfg, key)) or cfg[key] is None


def with_defaults(dataset_cfg: DictConfig | Mapping[str, Any]) -> DictConfig:
    """``dataset_cfg`` with the ``REGISTRY_KEYS`` it lacks (absent or null) taken from the registry entry
    of the same ``name``; ``dataset_cfg`` itself when it lacks none or its name is not registered."""
    missing = [k for k in REGISTRY_KEYS if _absent(dataset_cfg, k)]
    entry = registry_entry(str(dataset_cfg.get("name"))) if missing else None
    if entry is None:
        return dataset_cfg if isinstance(dataset_cfg, DictConfig) else OmegaConf.create(dict(dataset_cfg))
    own = OmegaConf.to_container(dataset_cfg) if isinstance(dataset_cfg, DictConfig) else dict(dataset_cfg)
    return OmegaConf.create({**own, **{k: entry.get(k) for k in missing}})


def loader_of(dataset_cfg: DictConfig | Mapping[str, Any]) -> tuple[str, Loader]:
    """The registered loader named by ``dataset_cfg.loader`` (or by the registry entry of its name)."""
    cfg = with_defaults(dataset_cfg)
    name, ref = cfg.get("name"), cfg.get("loader")
    if ref is None:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())} "
                        "(or give dataset.loader=<a registered loader>)")
    registered = loaders()
    if ref not in registered:
        raise UserError(f"dataset {name}: loader {ref!r} is not a registered loader; choose one of "
                        f"{', '.join(sorted(registered))}")
    return str(ref), registered[ref]


def _norm_table(table: Any, where: str) -> dict[str, list[float]]:
    if isinstance(table, DictConfig):
        table = OmegaConf.to_container(table, resolve=True)
    if not isinstance(table, Mapping):
        raise UserError(f"{where} must map norms to lists of thresholds, e.g. {where}.l2=[0.5,1.0]")
    out = {}
    for key, values in table.items():
        norm = canonical_norm(key, key=f"{where}.{key}")
        if values is not None:  # null: not given
            out[norm] = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    return out


def thresholds_of(dataset_cfg: DictConfig | Mapping[str, Any],
                  overrides: DictConfig | Mapping[str, Any] | None = None) -> dict[str, list[float]]:
    """The robust-accuracy thresholds per norm of an evaluation: ``overrides`` merged over the data set's.

    Args:
        dataset_cfg: the run's ``dataset`` config; its ``thresholds`` (``{norm: [float] | None}``, None or
            ``[]``: none), or the registry entry's of the same name when it has no ``thresholds`` at all (a
            run written before thresholds were configs).
        overrides: ``robust eval``'s ``thresholds`` (``thresholds.l2=[0.5,1.0]``): each norm given replaces
            the data set's list of that norm (``[]`` removes it); norms not given or None keep the data set's.

    Returns:
        ``{norm: [thresholds]}`` with canonical norm names, only norms that have thresholds (possibly ``{}``).
    """
    table = _norm_table(with_defaults(dataset_cfg).get("thresholds") or {}, "dataset.thresholds")
    table.update(_norm_table(overrides or {}, "thresholds"))
    return {norm: values for norm, values in table.items() if values}
