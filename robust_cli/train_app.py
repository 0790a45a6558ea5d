"""``robust train``: compose dataset x model x defense x optimizer x schedule and train into a run directory."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from robust_cli.apps import refuse_overrides, task_overrides, user_errors
from robust_cli.config import register_configs
from robust_cli.device import resolve_device
from robust_cli.rundir import RunDir

register_configs()
log = logging.getLogger("robust_cli.train")


def train(cfg: DictConfig) -> dict:
    """Train one configuration; a finished run is reported, not retrained, unless ``force=true``.

    Any other run resumes from its checkpoint, ``force=true`` or not: ``force`` is not part of the run
    directory's name, so a requeued (or repeated) ``force=true`` command must continue the retrain it started.

    Returns the final metrics (the last history row), also stored in ``run.json``.
    """
    resolve_device(cfg.device)  # a bad device is an error even where the run is already done
    overrides = task_overrides()
    run_dir = RunDir.of_train(cfg, overrides)
    record = run_dir.record() if run_dir.has_record() else None
    done = record is not None and record.status == "done"
    if done and run_dir.model_path.exists() and not cfg.force:
        log.info("already trained: %s (force=true retrains)", run_dir)
        return dict(record.data.get("final", {}))
    fresh = done and bool(cfg.force)  # retrain a finished run; running/interrupted/failed ones resume
    from robust_cli.training import distributed

    if cfg.trainer.devices > 1 or distributed.under_torchrun():
        # spawns trainer.devices workers (or, under torchrun, runs in this worker); rank 0's result returns
        return distributed.launch(_fit_in_dir, cfg, run_dir, overrides, fresh)
    return _fit_in_dir(cfg, run_dir, overrides, fresh)


def _fit_in_dir(cfg: DictConfig, run_dir: RunDir, overrides, fresh: bool = False) -> dict:
    """Train in this process: the whole run, or one rank of a DistributedDataParallel group."""
    from robust_cli.training import distributed
    from robust_cli.training.loop import fit

    ctx = distributed.init(cfg.trainer, resolve_device(cfg.device))
    try:
        final = fit(cfg, run_dir, overrides, ctx, fresh=fresh)
    finally:
        distributed.cleanup(ctx)
    if ctx.is_main:
        log.info("done: %s  test error %.4f", run_dir, final.get("test_error", float("nan")))
    return final


@hydra.main(config_path="pkg://robust_cli.conf", config_name="train", version_base=None)
@user_errors
def _hydra_main(cfg: DictConfig) -> float | None:
    final = train(cfg)
    # the returned value is what sweepers (e.g. Optuna) optimise
    return final.get("test_error")


# the run directory is derived from the overrides (robust_cli.rundir.names); Hydra's own would be ignored
_REFUSED = {"hydra.run.dir": "the run directory is derived from the overrides; give run_dir=<dir> to choose it"}


def main() -> float | None:
    """``robust train`` (``sys.argv`` holds the overrides): ``hydra.run.dir=`` is refused before Hydra
    creates it; a SLURM submission that sbatch refuses is one line (robust_cli.slurm)."""
    from robust_cli.slurm import report_sbatch_refusals

    refuse_overrides(sys.argv[1:], _REFUSED)
    report_sbatch_refusals()
    return _hydra_main()
