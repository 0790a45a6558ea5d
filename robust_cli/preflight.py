"""The inputs a job will read, checked when ``robust`` validates the command line (``robust_cli.cli``), once
per combination of a multirun: a sweep whose data file is missing, holds bad labels or is smaller than its
``dataset.val_size``, or an ``robust eval -m run=a,b`` whose ``b`` is not a finished run, ends in one line
and exit status 2 before any job starts or any directory is written.

The apps run the same checks again where they read the files (a single run reads its data once: the loader's
cache, ``robust_cli.data.sources``, keeps it for the app in the same process).
"""

from __future__ import annotations

from typing import Any


#: the model/defense/dataset configs already built once in this process
_CONSTRUCTED: set[str] = set()


def check_inputs(config_name: str, cfg: Any) -> None:
    """Raise ``UserError`` for the first input of a composed ``train`` / ``eval`` config that cannot be
    used: ``train``: every split of its data set (``robust_cli.data.load_split``'s checks: the file, array
    names, shapes, dtypes, finiteness, [0,1] range, labels, val_size); ``eval``: the run directory
    and its files (``robust_cli.training.checkpoint.load_trained_model``: run.json, config.yaml, model.pt
    and its weights) and its ``eval/`` folder."""
    from robust_cli.device import check_device_name

    if "device" in cfg:
        check_device_name(str(cfg.device))
    for key in _written_folders(config_name, cfg):  # a file there, or a folder it cannot make, fails now
        check_output_folder(str(cfg[key]), key)
    if config_name == "train":
        from robust_cli.data import info_of, load_split
        from robust_cli.defenses import build_defense
        from robust_cli.models import build_model

        from omegaconf import OmegaConf

        for split in ("train", "val", "test"):  # cached: the app of a single run reads them from memory
            load_split(cfg.dataset, cfg.data, split)
        parts = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, ["model", "defense", "dataset"]), resolve=True)
        if parts not in _CONSTRUCTED:  # a sweep's combinations share their models: each built once
            constructed("model", build_model, cfg.model, info_of(cfg.dataset))  # what the constructors refuse
            constructed("defense", build_defense, cfg.defense)
            _CONSTRUCTED.add(parts)
    elif config_name == "eval":
        from robust_cli.rundir import RunDir
        from robust_cli.training.checkpoint import load_trained_model

        from robust_cli.errors import UserError

        external = cfg.get("model") is not None and cfg.model.get("kind") is not None
        if cfg.get("run") is None:
            if external:  # model=<kind>: its file is checked where it is loaded (robust_cli.models.external)
                return
            raise UserError("run is required; give run=<a finished train run directory> (or model=<kind> "
                            "path=... dataset=<name> for a model robust train did not train)")
        if external:
            return  # eval_target refuses run= with model= in one line
        run = RunDir(str(cfg.run))
        # every file it reads; kept for the app in this process (no second load)
        load_trained_model(run, checkpoint=str(cfg.get("checkpoint", "model")), keep=True)
        check_eval_writable(run)


def _written_folders(config_name: str, cfg: Any) -> list[str]:
    """The keys of the folders a job of ``config_name`` writes under: ``out`` (a report's own folder) or
    ``out_dir``, except where the job writes elsewhere (``robust train run_dir=``; ``robust eval run=``, which
    writes into the run, from any folder, a read-only one included)."""
    if cfg.get("out") is not None:
        return ["out"]
    if config_name == "train" and cfg.get("run_dir") is not None:
        return []
    if config_name == "eval" and cfg.get("run") is not None:
        return []
    return ["out_dir"] if cfg.get("out_dir") is not None else []


def check_output_folder(path: str, key: str) -> None:
    """``path`` is a folder a job can write in, or can be made: nothing on the way to it is a file, and the
    nearest folder that exists is writable. Raises ``UserError`` naming ``key`` (``out_dir=...``) otherwise,
    before any work (a run that would fail only when it first writes, after its attacks, wastes them)."""
    import os
    from pathlib import Path

    from robust_cli.errors import UserError

    where = Path(path).expanduser().absolute()
    for folder in (where, *where.parents):
        if folder.exists():
            if not folder.is_dir():
                raise UserError(f"{key}={path}: {folder} is a file, not a folder; give another {key}")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise UserError(f"{key}={path}: cannot write in {folder}; give another {key}")
            return


def check_eval_writable(run) -> None:
    """``<run>/eval`` is (or can be made) a writable folder: not a file, not read-only."""
    import os

    from robust_cli.errors import UserError

    eval_dir = run.eval.path
    if eval_dir.exists() and not eval_dir.is_dir():
        raise UserError(f"{eval_dir} is a file, not the folder robust eval writes its results in; move it away")
    target = eval_dir if eval_dir.is_dir() else run.path
    if not os.access(target, os.W_OK | os.X_OK):
        raise UserError(f"{target} is not writable: robust eval writes its results in {eval_dir}; "
                        "make it writable or evaluate a copy of the run directory")


def constructed(group: str, build, *args):
    """``build(*args)``, a refusal of the constructor (``ValueError``/``TypeError``: a value its own checks
    reject, e.g. ``defense.lam=-1``, a model's channels list of the wrong length) as one line naming the
    group's option (``defense=tulip: lam=-1.0 must be >= 0``)."""
    from robust_cli.errors import UserError

    try:
        return build(*args)
    except (ValueError, TypeError) as err:
        node = args[0]
        name = node.get("name", "?") if hasattr(node, "get") else "?"
        raise UserError(f"{group}={name}: {' '.join(str(err).split())}") from None
