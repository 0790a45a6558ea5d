"""``robust train``: compose dataset x model x defense x optimizer x schedule and train into a run directory."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from robust_cli.apps import refuse_overrides, task_overrides, user_errors
from robust_cli.config import register_configs
from robust_cli.device import resolve_device
from robust_cli.errors import UserError
from robust_cli.rundir import RunDir
from robust_cli.training.same_run import stored_differences

register_configs()
log = logging.getLogger("robust_cli.train")


def train(cfg: DictConfig) -> dict:
    """Train one configuration; a finished run is reported, not retrained, unless ``force=true``.

    Any other run resumes from its checkpoint, ``force=true`` or not: ``force`` is not part of the run
    directory's name, so a requeued (or repeated) ``force=true`` command must continue the retrain it started.

    Returns the final metrics (the last history row), also stored in ``run.json``.
    """
    resolve_device(cfg.device)  # a bad device is an error even where the run is already done
    from robust_cli.reporting.tracking import check_logger

    check_logger(str(cfg.logger))  # a missing tensorboard / mlflow is an error before anything runs
    overrides = task_overrides()
    run_dir = RunDir.of_train(cfg, overrides)
    record = run_dir.record() if run_dir.has_record() else None
    done = record is not None and record.status == "done"
    other = stored_differences(run_dir.read_config(), cfg) if record is not None else []
    if other and not cfg.force:  # another configuration's run: neither its result nor its checkpoint is ours
        shown = ", ".join(other[:4]) + (f" and {len(other) - 4} more" if len(other) > 4 else "")
        raise UserError(f"{run_dir} holds a run of another configuration ({shown}); give another run_dir, or "
                        "force=true to train this one there from scratch (replacing it)")
    if done and run_dir.model_path.exists() and not cfg.force:
        log.info("already trained: %s (force=true retrains)", run_dir)
        return dict(record.data.get("final", {}))
    # retrain a finished run, or another configuration's (force=true); running/interrupted/failed ones resume
    fresh = (done or bool(other)) and bool(cfg.force)
    from robust_cli.training import distributed

    if cfg.trainer.devices > 1 or distributed.under_torchrun():
        # spawns trainer.devices workers (or, under torchrun, runs in this worker); rank 0's result returns
        return distributed.launch(_fit_in_dir, cfg, run_dir, overrides, fresh)
    return _fit_in_dir(cfg, run_dir, overrides, fresh)


def _fit_in_dir(cfg: DictConfig, run_dir: RunDir, overrides, fresh: bool = False) -> dict:
    """Train in this process: the whole run, or one rank of a DistributedDataParallel group."""
    from robust_cli.training import distributed
    from robust_cli.training.loop import EPOCH_END_HOOKS, fit

    ctx = distributed.init(cfg.trainer, resolve_device(cfg.device))
    tracking = _Tracking(cfg, run_dir, overrides, fresh) if ctx.is_main and cfg.logger != "csv" else None
    try:
        if tracking is not None:
            EPOCH_END_HOOKS.append(tracking.epoch_end)
        final = fit(cfg, run_dir, overrides, ctx, fresh=fresh)
        if tracking is not None:
            tracking.finish()
    finally:
        if tracking is not None:
            EPOCH_END_HOOKS.remove(tracking.epoch_end)
            tracking.close()
        distributed.cleanup(ctx)
    if ctx.is_main:
        log.info("done: %s  test error %.4f", run_dir, final.get("test_error", float("nan")))
    return final


class _Tracking:
    """``logger=tensorboard|mlflow`` for one training run: each epoch's history row as it is written (an
    ``EPOCH_END_HOOKS`` entry, on the main rank), then history.csv and config.yaml. The tracker opens at the
    first completed epoch, so a run refused on bad input leaves no log behind."""

    def __init__(self, cfg: DictConfig, run_dir: RunDir, overrides: list[str], fresh: bool):
        self.cfg, self.run_dir, self.overrides = cfg, run_dir, overrides
        history = None if fresh else run_dir.read_history()
        self.purge_step = 1 + (0 if history is None else len(history))  # a resumed run logs each epoch once
        self.tracker = None

    def epoch_end(self, epoch: int, row: dict, run: RunDir) -> None:
        from robust_cli.reporting.tracking import Tracker, mlflow_uri

        if self.tracker is None:
            params = dict(o.lstrip("+~").split("=", 1) for o in self.overrides if "=" in o)
            self.tracker = Tracker(self.cfg.logger, self.run_dir.path, experiment="robust-train",
                                   mlflow_uri=mlflow_uri(self.cfg), params=params, purge_step=self.purge_step)
        self.tracker.log_metrics("train", {k: v for k, v in row.items() if k != "epoch"}, step=epoch)

    def finish(self) -> None:
        if self.tracker is not None:
            self.tracker.log_artifacts([self.run_dir.history_path, self.run_dir.config_path], "run")

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()


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
