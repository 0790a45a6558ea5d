"""What ``robust eval`` evaluates and where it writes: a train run (``run=<dir>``, results in ``<run>/eval/``)
or an external model (``model=<kind> ... dataset=<name>``, results in
``<out_dir>/eval/external/<kind>/<label>-<digest>/``, never next to the model's file: that may be someone
else's folder, a train run's among them)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from robust_cli.errors import UserError
from robust_cli.rundir import EvalDir, ExternalEvalDir, RunDir, external_eval_dir

#: the spec keys each kind uses (the others must stay unset: a key given for nothing is a mistake)
USED = {"torchscript": {"path"}, "python": {"factory", "path"}, "torchvision": {"name", "path"},
        "robustbench": {"name", "path", "threat_model"}}
COMMON = {"kind", "mean", "std", "in_shape"}


@dataclass
class Target:
    model: torch.nn.Module  # eval mode, on the device: [B,C,H,W] in [0,1] -> logits [B,K]
    dataset: Any  # the dataset config node (DictConfig)
    data: Any  # the data config node (root, download)
    eval_dir: EvalDir  # where results and merged files go
    title: str  # the error-curve plot's title
    record: dict[str, Any] | None = None  # external models: model.json, written once results are


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def external_spec(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.model`` as a plain dict, checked against its kind: ``model=python`` with ``name=`` is refused."""
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    kind = spec["kind"]
    if kind not in USED:
        raise UserError(f"model={kind}: robust eval takes model={' | '.join(USED)} (or run=<train run dir>)")
    defaults = {"threat_model": "Linf"}
    stray = [k for k, v in spec.items() if k not in USED[kind] | COMMON and v is not None and v != defaults.get(k)]
    if stray:
        raise UserError(f"model={kind} takes no {', '.join(f'{k}=' for k in stray)} (it uses "
                        f"{', '.join(sorted(USED[kind]))})")
    return {k: v for k, v in spec.items() if k in USED[kind] | COMMON}


def external_dir(cfg: DictConfig, spec: dict[str, Any]) -> tuple[ExternalEvalDir, dict[str, Any]]:
    """The deterministic result directory of an external model and the ``model.json`` it holds.

    The digest covers the spec (the file by its SHA-256, not its path: the same file moved finds the same
    results, a changed file at the same path gets new ones) and the data set's name."""
    record = {**spec, "dataset": str(cfg.dataset.name)}
    if spec.get("path"):
        path = Path(os.path.expanduser(str(spec["path"])))
        if not path.is_file():
            raise UserError(f"path={spec['path']}: no such file")
        record["path"] = str(path.resolve())
        record["sha256"] = file_sha256(path)
    keyed = {k: v for k, v in record.items() if k != "path"}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]
    label = Path(str(spec["path"])).stem if spec.get("path") else str(spec.get("name") or spec.get("factory"))
    out = ExternalEvalDir(external_eval_dir(cfg.out_dir, spec["kind"], label, digest))
    outer = RunDir(out.path).enclosing_run()
    if outer is not None:
        raise UserError(f"out_dir={cfg.out_dir} puts the results inside the run directory {outer}; give an "
                        "out_dir outside every run directory")
    return out, record


def resolve_target(cfg: DictConfig, device: torch.device) -> Target:
    """The model to attack, its data set and its result directory, from ``run=`` or ``model=``."""
    from robust_cli.data import info_of, with_root

    if cfg.model.kind is None:
        if cfg.run is None:
            raise UserError("nothing to evaluate: give run=<a finished train run directory> or model=<kind> "
                            "(torchscript | python | torchvision | robustbench) with dataset=<name>")
        from robust_cli.training.checkpoint import load_trained_model

        if cfg.dataset is not None:
            raise UserError(f"dataset={cfg.dataset.name} is for model=<kind>; run={cfg.run} is evaluated on its "
                            "own data set")
        run_dir = RunDir(cfg.run)
        if not run_dir.is_dir():
            raise UserError(f"run={cfg.run} is not a directory; give run=<a finished train run directory>")
        best = str(cfg.checkpoint) == "best"
        model, train_cfg = load_trained_model(run_dir, device=device, checkpoint=str(cfg.checkpoint))
        data_cfg = with_root(train_cfg.get("data"), cfg.data.root)  # data.root= / $ROBUST_DATA over the stored
        return Target(model, train_cfg.dataset, data_cfg, run_dir.best_eval if best else run_dir.eval,
                      f"{run_dir} (best.pt)" if best else str(run_dir))
    if str(cfg.checkpoint) != "model":
        raise UserError(f"checkpoint={cfg.checkpoint} is for run=<dir>; model={cfg.model.kind} reads path=")
    if cfg.run is not None:
        raise UserError(f"give run= or model=, not both (run={cfg.run} model={cfg.model.kind})")
    if cfg.dataset is None:
        raise UserError(f"model={cfg.model.kind} needs dataset=<name>: the data set to evaluate on")
    from robust_cli.config import DataConfig
    from robust_cli.models.external import load_external

    spec = external_spec(cfg)
    eval_dir, record = external_dir(cfg, spec)
    model = load_external(spec, info_of(cfg.dataset)).to(device)
    data = OmegaConf.merge(OmegaConf.structured(DataConfig), {"root": cfg.data.root or "data"})
    title = f"{spec['kind']}: {spec.get('path') or spec.get('name') or spec.get('factory')} on {cfg.dataset.name}"
    return Target(model, cfg.dataset, data, eval_dir, title, record)
