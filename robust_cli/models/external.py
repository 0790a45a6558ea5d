"""Models that ``robust train`` did not make, for ``robust eval model=<kind>``: loaded, wrapped, checked.

Kinds (``robust_cli.config.ExternalModelConfig``):

- ``torchscript``: ``path`` a ``torch.jit.save`` archive (the whole model, its code TorchScript, not pickle);
- ``python``: ``factory="pkg.module:function"`` called without arguments returns the ``nn.Module``;
  ``path`` (optional) its weights, a state dict read with ``torch.load(weights_only=True)``;
- ``torchvision``: ``name`` an architecture of ``torchvision.models`` built for the data set's classes,
  ``path`` its weights (a state dict);
- ``robustbench``: ``name`` a RobustBench model name and ``threat_model`` its leaderboard, ``path`` the
  checkpoint already on disk (nothing is downloaded). The architecture comes from the ``robustbench``
  package where installed, else from the entries readable without it (``robustbench_wrn.BUILTIN``); the
  checkpoint's layout is theirs: the state dict itself or under ``"state_dict"``, keys possibly prefixed
  ``module.`` (DataParallel) or ``model.``.

Every kind is wrapped as ``ExternalModel``: ``Normalize(mean, std)`` (where given) -> the model, so attacks
work on [0,1] images; a forward pass on ``[2, *in_shape]`` zeros checks that it runs and returns
``[2, num_classes]`` logits before anything is evaluated. A weights file is only ever read with
``weights_only=True``: a pickle that would run code is refused, never loaded.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_cli import io
from robust_cli.errors import UserError
from robust_cli.models.layers import Normalize

KINDS = ("torchscript", "python", "torchvision", "robustbench")


class ExternalModel(nn.Module):
    """``normalize -> net``: images ``[B,C,H,W]`` in [0,1] -> logits ``[B, num_classes]``."""

    def __init__(self, net: nn.Module, mean: list[float] | None, std: list[float] | None, num_classes: int):
        super().__init__()
        self.normalize = Normalize(mean, std) if mean is not None else nn.Identity()
        self.net = net
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def is_torchscript(path: Path) -> bool:
    """A ``torch.jit.save`` archive: a zip holding ``<name>/code/`` and ``<name>/constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _file(spec: Mapping[str, Any], required: bool = True) -> Path | None:
    kind, given = spec["kind"], spec.get("path")
    if given is None:
        if required:
            raise UserError(f"model={kind} needs path=<file>")
        return None
    path = Path(os.path.expanduser(str(given)))
    if not path.is_file():
        raise UserError(f"path={given}: no such file")
    return path


def read_weights(path: Path, kind: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (itself, or under ``"state_dict"`` / ``"model_state_dict"``, as
    RobustBench's files and ``robust train``'s ``model.pt`` hold it), read with ``weights_only=True``."""
    if is_torchscript(path):
        raise UserError(f"path={path} is a TorchScript archive, not a state dict; give model=torchscript")
    try:
        blob = io.torch_load(path, map_location="cpu")  # weights_only=True
    except Exception as err:
        raise io.unreadable(f"path={path} (model={kind} reads a state dict)", err,
                            "a pickle that would run code is never loaded; save the model's state_dict()") from None
    if isinstance(blob, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(blob.get(key), Mapping):
                blob = blob[key]
                break
    if not isinstance(blob, Mapping) or not blob or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise UserError(f"path={path} holds no state dict (a mapping of names to tensors); model={kind} "
                        "reads one")
    return dict(blob)


def _strip(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Drop a prefix that every key carries (``module.`` of DataParallel, ``model.`` of some wrappers)."""
    for prefix in prefixes:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _load_into(net: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise UserError(f"the weights do not fit {what}: {detail[:300]}") from None


def _import_factory(factory: str):
    """``pkg.module:function`` -> the function; the current directory is searched first, like ``python -m``."""
    module_name, sep, attr = factory.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"factory={factory}: expected pkg.module:function")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or the module's own code failing at import
        raise UserError(f"factory={factory}: cannot import {module_name}: {type(err).__name__}: {err}") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"factory={factory}: {module_name} has no callable {attr}")
    return fn


def _torchscript(spec, info) -> nn.Module:
    path = _file(spec)
    if not is_torchscript(path):
        raise UserError(f"path={path} is not a TorchScript archive (torch.jit.save); a state dict needs "
                        "model=python factory=... or model=torchvision name=...")
    try:
        with warnings.catch_warnings():  # torch's deprecation notice of torch.jit: noise for the user here
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise UserError(f"path={path}: cannot load the TorchScript archive: {' '.join(str(err).split())[:200]}"
                        ) from None


def _python(spec, info) -> nn.Module:
    if not spec.get("factory"):
        raise UserError("model=python needs factory=pkg.module:function")
    fn = _import_factory(str(spec["factory"]))
    try:
        net = fn()
    except Exception as err:
        raise UserError(f"factory={spec['factory']} failed: {type(err).__name__}: {err}") from None
    if not isinstance(net, nn.Module):
        raise UserError(f"factory={spec['factory']} returned {type(net).__name__}, not an nn.Module")
    path = _file(spec, required=False)
    if path is not None:
        _load_into(net, read_weights(path, "python"), f"factory={spec['factory']}")
    return net


def _torchvision(spec, info) -> nn.Module:
    import torchvision

    name = spec.get("name")
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise UserError(f"name={name} is not a torchvision classification model (e.g. {', '.join(available[:6])}, "
                        "...: torchvision.models.list_models())")
    net = torchvision.models.get_model(name, weights=None, num_classes=int(info.num_classes))
    state = read_weights(_file(spec), "torchvision")
    _load_into(net, _strip(state, ("module.",)), f"torchvision {name} with {info.num_classes} classes")
    return net


def _robustbench(spec, info) -> nn.Module:
    from robust_cli.models.robustbench_wrn import BUILTIN

    name, threat = spec.get("name"), str(spec.get("threat_model"))
    if not name:
        raise UserError("model=robustbench needs name=<RobustBench model name> (e.g. Standard)")
    key = (info.name, threat, str(name))
    try:  # the package knows every entry; without it only the built-in ones
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
        from robustbench.model_zoo.models import model_dicts

        entries = model_dicts[BenchmarkDataset(info.name)][ThreatModel(threat)]
        make = entries[name]["model"] if name in entries else None
    except ImportError:
        make = BUILTIN.get(key)
    except (ValueError, KeyError):
        make = None
    if make is None:
        known = ", ".join("/".join(k) for k in BUILTIN)
        raise UserError(f"no RobustBench model {name} for dataset={info.name} threat_model={threat} (without "
                        f"the robustbench package: {known})")
    net = make()
    state = _strip(read_weights(_file(spec), "robustbench"), ("module.", "model."))
    _load_into(net, state, f"RobustBench {name}")
    return net


_LOADERS = {"torchscript": _torchscript, "python": _python, "torchvision": _torchvision,
            "robustbench": _robustbench}


def load_external(spec: Mapping[str, Any], info: Any) -> ExternalModel:
    """The model ``spec`` describes (``ExternalModelConfig`` as a dict), wrapped and checked, in eval mode.

    Args:
        spec: ``kind``, ``path``, ``factory``, ``name``, ``threat_model``, ``mean``, ``std``, ``in_shape``.
        info: the ``DatasetInfo`` of the data set evaluated on (its ``in_shape`` and ``num_classes``).

    Raises ``UserError`` (one line) for a file of another kind, a factory that cannot be imported, a pickle
    ``weights_only`` refuses, weights that do not fit, or outputs that are not ``[B, num_classes]``.
    """
    kind = spec.get("kind")
    if kind not in _LOADERS:
        raise UserError(f"model={kind}: robust eval takes model={' | '.join(KINDS)} (or run=<train run dir>)")
    shape = tuple(int(s) for s in (spec.get("in_shape") or info.in_shape))
    if shape != tuple(info.in_shape):
        raise UserError(f"in_shape={list(shape)} but dataset={info.name} holds images {list(info.in_shape)}")
    mean, std = spec.get("mean"), spec.get("std")
    if (mean is None) != (std is None):
        raise UserError("give both mean= and std= (the model's input normalisation), or neither")
    if mean is not None and not (len(mean) == len(std) == shape[0]) or std is not None and min(std) <= 0:
        raise UserError(f"mean={list(mean)} std={list(std)}: need {shape[0]} values each, std positive")
    model = ExternalModel(_LOADERS[kind](spec, info), mean, std, int(info.num_classes)).eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *shape))
    except Exception as err:
        raise UserError(f"model={kind} does not run on inputs [2, {', '.join(map(str, shape))}]: "
                        f"{type(err).__name__}: {' '.join(str(err).split())[:200]}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, int(info.num_classes)):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"model={kind} returns {got} for inputs [2, {', '.join(map(str, shape))}]; "
                        f"dataset={info.name} needs logits [2, {info.num_classes}]")
    return model
