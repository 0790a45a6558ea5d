"""The inputs a job will read, checked when ``robust`` validates the command line (``robust_cli.cli``), once
per combination of a multirun: a sweep whose data file is missing, holds bad labels or is smaller than its
``dataset.val_size``, or an ``robust eval -m run=a,b`` whose ``b`` is not a finished run, ends in one line
and exit status 2 before any job starts or any directory is written.

The apps run the same checks again where they read the files (a single run reads its data once: the loader's
cache, ``robust_cli.data.sources``, keeps it for the app in the same process).
"""

from __future__ import annotations

from typing import Any


def check_inputs(config_name: str, cfg: Any) -> None:
    """Raise ``UserError`` for the first input of a composed ``train`` / ``eval`` config that cannot be
    used: ``train``: every split of its data set (``robust_cli.data.load_split``'s checks: the file, array
    names, shapes, dtypes, finiteness, [0,1] range, labels, val_size); ``eval``: the run directory
    (``robust_cli.training.checkpoint.check_trained_run``) and its ``eval/`` folder."""
    if config_name == "train":
        from robust_cli.data import load_split

        for split in ("train", "val", "test"):
            load_split(cfg.dataset, cfg.data, split)
    elif config_name == "eval":
        from robust_cli.rundir import RunDir
        from robust_cli.training.checkpoint import check_trained_run

        run = RunDir(str(cfg.run))
        check_trained_run(run)
        check_eval_writable(run)


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
