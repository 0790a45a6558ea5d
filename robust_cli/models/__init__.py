"""Model architectures: ``build_model(model_cfg, info)`` turns a ``model`` config into a ``RobustModel``.

Each architecture lives in its own module with a dataclass schema registered as ``SCHEMAS`` (see
``robust_cli.config``); its body class is built as ``Body(in_shape, num_classes, **options)`` and wrapped as
``Normalize(mean, std) -> body -> optional TanhHead``.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from robust_cli.errors import UserError
from robust_cli.models.layers import Normalize, RobustModel, TanhHead, num_parameters

__all__ = ["Normalize", "RobustModel", "TanhHead", "build_model", "list_models", "model_schema", "model_schemas"]

log = logging.getLogger(__name__)

_RESERVED = ("_target_", "name", "tanh_head")
#: options every architecture takes that ``build_model`` handles, not the body class
BUILDER_OPTIONS = {"tanh_head": (bool, False)}  # Finlay et al.'s logit-normalising head (App. A.1)


def model_schema(body: type[nn.Module], name: str) -> type:
    """The schema of ``model=<name>``: the body's constructor options plus ``BUILDER_OPTIONS``."""
    from robust_cli.schema import schema_of

    return schema_of(body, name, extra=BUILDER_OPTIONS)


def model_schemas() -> dict[str, type]:
    """``{yaml name: schema dataclass}`` of every architecture module (the ``SCHEMAS`` dicts)."""
    from robust_cli.config import discover_schemas  # at call time: config imports this package lazily too

    return discover_schemas(__name__)


def list_models() -> list[str]:
    """Names accepted as ``model=<name>``, sorted."""
    return sorted(model_schemas())


def _schema_for(cfg: Mapping[str, Any], schemas: dict[str, type]) -> tuple[str, type]:
    """The schema a config belongs to, found by ``name`` or else by ``_target_``."""
    name = cfg.get("name")
    if name in schemas:
        return name, schemas[name]
    target = cfg.get("_target_")
    for key, schema in schemas.items():
        if target is not None and _default_target(schema) == target:
            return key, schema
    raise UserError(f"unknown model {name or target!r}; choose one of {', '.join(sorted(schemas))}")


def _default_target(schema: type) -> str:
    return {f.name: f.default for f in dataclasses.fields(schema)}["_target_"]


def _import_body(target: str) -> type[nn.Module]:
    module_name, _, cls_name = target.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UserError(f"model _target_ {target!r} is not an nn.Module class")
    return cls


def build_model(model_cfg: DictConfig | Mapping[str, Any], info: Any) -> RobustModel:
    """Build ``Normalize(info.mean, info.std) -> Body(info.in_shape, info.num_classes, **options) -> [TanhHead]``.

    Args:
        model_cfg: a composed ``model`` group node (DictConfig) or the same as a plain dict (as stored in
            ``model.pt``): ``_target_``, ``name``, ``tanh_head`` and the architecture's options. A plain dict
            is validated against the architecture's schema too, so unknown keys and wrong types fail here;
            options it leaves out take the schema's defaults.
        info: a ``robust_cli.data.info.DatasetInfo`` (``in_shape=(C,H,W)``, ``num_classes``, ``mean``, ``std``).

    Returns:
        a ``RobustModel`` in train mode mapping ``[B, C, H, W]`` in [0,1] to logits ``[B, num_classes]``.

    Only the ``_target_`` classes named by the registered schemas are built: a config read from a
    checkpoint file cannot make this import arbitrary code.
    """
    raw = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else dict(model_cfg)
    schemas = model_schemas()
    name, schema = _schema_for(raw, schemas)
    try:
        cfg = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(schema), raw), resolve=True)
    except OmegaConfBaseException as err:
        raise UserError(f"model {name}: {err}".splitlines()[0]) from err
    allowed = {_default_target(s) for s in schemas.values()}
    target = cfg["_target_"]
    if target not in allowed:
        raise UserError(f"model {name}: _target_ {target!r} is not a registered architecture")
    options = {k: v for k, v in cfg.items() if k not in _RESERVED}
    body_cls = _import_body(target)
    try:
        body = body_cls(in_shape=tuple(int(s) for s in info.in_shape), num_classes=int(info.num_classes),
                        **options)
    except (TypeError, ValueError) as err:
        raise UserError(f"model {name}: {err}") from err
    model = RobustModel(body, info.mean, info.std, int(info.num_classes), tanh_head=bool(cfg["tanh_head"]))
    log.debug("built model %s for input %s: %d parameters", name, tuple(info.in_shape), num_parameters(model))
    return model
