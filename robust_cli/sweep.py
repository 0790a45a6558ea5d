"""Sweep summary: ``<sweep dir>/jobs.csv``, one row per job of a multirun, failed and unfinished ones too.

A Hydra callback (``hydra.callbacks.sweep_summary._target_: robust_cli.sweep.SweepSummary``). Where its
hooks run depends on the launcher:

- ``on_multirun_start`` / ``on_multirun_end``: in the submitting process. Hydra skips ``on_multirun_end``
  when any job failed (the sweeper re-raises the first failure), so the summary cannot wait for it.
- ``on_job_start`` / ``on_job_end``: in the job's own process (a joblib worker, a SLURM job, or the
  submitting process for the basic launcher). A requeued SLURM job runs ``on_job_start`` again.

So every job writes its own record, ``<sweep dir>/<job num>/job.json`` (atomically), at its start and its
end, and then regenerates ``jobs.csv`` from all records under a file lock; the submitting process writes
the list of expected jobs (``sweep.json``) before launching. A job therefore appears as ``pending`` before
it starts, ``running`` while it runs (or if it was killed without a chance to report), then ``completed``
or ``failed`` with its error, never silently missing.

Columns of jobs.csv: job, overrides, status, test_error (the last ``test_error`` of the run's
history.csv: the final clean test error, in [0, 1]), epochs, run_dir (the trained run, or the evaluated one),
evaluated and median_distance (``robust eval`` jobs: the (attack, norm) pairs and each pair's median
adversarial distance, ``fgsm-linf=0.0312``), error, slurm_job_id, attempts, started_at, finished_at.

The sweep directory is named from the sweep's overrides (``robust_cli.rundir.names.sweep_subdir``), so a
later sweep with other overrides never replaces this one's jobs.csv.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from robust_cli.errors import JobFailed
from robust_cli.rundir import RunDir, SweepDir

log = logging.getLogger(__name__)

COLUMNS = ["job", "overrides", "status", "test_error", "epochs", "run_dir", "evaluated", "median_distance",
           "error", "slurm_job_id", "attempts", "started_at", "finished_at"]
#: the columns a job fills from the dict its app returns (``robust eval``: robust_cli.eval_app.job_result)
RESULT_COLUMNS = ("evaluated", "median_distance")
_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """The jobs of a basic-sweeper multirun, in job-number order: ``["a=1,2", "b=x"]`` ->
    ``[["a=1", "b=x"], ["a=2", "b=x"]]`` (Hydra's own expansion, so the order matches ``hydra.job.num``)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def run_dir_of(config: DictConfig) -> str | None:
    """The run directory a job works in: ``run`` for ``robust eval``, the deterministic train run directory
    (robust_cli.rundir.train_run_dir) for ``robust train``; None when the config has neither."""
    cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    try:
        if "run" in cfg and cfg.get("run"):
            return str(cfg.run)
        if "out_dir" in cfg and "dataset" in cfg:
            return str(RunDir.of_train(cfg, list(config.hydra.overrides.task)))
    except Exception as err:  # a summary must never make a job fail
        log.debug("run directory of the job not found: %s", err)
    return None


def final_metrics(run_dir: str | None) -> dict[str, Any]:
    """``{"test_error", "epochs"}`` from the last row of ``<run_dir>/history.csv`` (empty when absent)."""
    hist = RunDir(run_dir).read_history() if run_dir else None
    if hist is None:
        return {}
    out: dict[str, Any] = {"epochs": int(hist["epoch"].iloc[-1]) if "epoch" in hist else len(hist)}
    if "test_error" in hist:
        out["test_error"] = float(hist["test_error"].iloc[-1])
    return out


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, JobFailed):  # already "robust: error: <message>"
        return text[:500]
    return f"{type(err).__name__}: {text}"[:500]


def _records(sweep_dir: SweepDir) -> dict[int, dict[str, Any]]:
    return {int(rec["job"]): rec for _, rec in sweep_dir.records()}


def write_summary(sweep_dir: str | Path) -> pd.DataFrame:
    """Regenerate ``<sweep_dir>/jobs.csv`` from ``sweep.json`` and the jobs' records; returns the table.

    With ``sweep.json`` (basic sweeper) the rows are exactly the expected jobs, in order; a record from an
    earlier sweep with other overrides in the same directory is ignored. Without it, one row per record.
    """
    sweep_dir = SweepDir(sweep_dir)
    with sweep_dir.lock():  # concurrent jobs regenerate jobs.csv one at a time
        records = _records(sweep_dir)
        expected = (sweep_dir.read_expected() or {}).get("jobs")
        rows = []
        if expected is not None:
            for num, overrides in enumerate(expected):
                rec = records.get(num)
                if rec is None or rec.get("overrides") != list(overrides):
                    rec = {"job": num, "overrides": list(overrides), "status": "pending"}
                rows.append(rec)
        else:
            rows = [records[k] for k in sorted(records)]
        table = []
        for rec in rows:
            row = {c: rec.get(c) for c in COLUMNS}
            row["overrides"] = " ".join(rec.get("overrides") or [])
            if rec.get("status") != "failed":  # a failed job's run dir may hold another job's (or run's) numbers
                row.update(final_metrics(rec.get("run_dir")))
            table.append(row)
        frame = pd.DataFrame(table, columns=COLUMNS)
        for col in ("job", "epochs", "attempts"):  # integers with gaps (pending jobs have none)
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
        sweep_dir.write_summary(frame)
    return frame


class SweepSummary(Callback):
    """Hydra callback keeping ``<hydra.sweep.dir>/jobs.csv`` up to date (see the module docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = SweepDir(str(config.hydra.sweep.dir))
        jobs = None
        if OmegaConf.select(config, "hydra.sweeper._target_") == _BASIC_SWEEPER:
            try:
                jobs = expand_sweep(list(config.hydra.overrides.task))
            except Exception as err:
                log.warning("sweep summary: could not expand the sweep overrides: %s", err)
        sweep_dir.write_expected({
            "overrides": list(config.hydra.overrides.task), "jobs": jobs, "started_at": _now(),
            "launcher": OmegaConf.select(config, "hydra.launcher._target_"),
        })
        self._safe_summary(sweep_dir.path)

    @staticmethod
    def _in_sweep(config: DictConfig) -> bool:
        """Jobs of a single run (no ``-m``) belong to no sweep: the callback leaves them alone."""
        return str(OmegaConf.select(config, "hydra.mode")) == str(RunMode.MULTIRUN)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self._in_sweep(config):
            return
        job_dir = self._job_dir(config)
        old = SweepDir.read_record(job_dir)
        same = old.get("overrides") == list(config.hydra.overrides.task)
        SweepDir.write_record(job_dir, {
            "job": int(config.hydra.job.num),
            "overrides": list(config.hydra.overrides.task),
            "status": "running",
            "run_dir": run_dir_of(config),
            "error": None,
            "slurm_job_id": _slurm_job_id(config),
            # a requeued job (same overrides, same record) counts its starts
            "attempts": int(old.get("attempts") or 0) + 1 if same else 1,
            "started_at": old.get("started_at") if same and old.get("started_at") else _now(),
            "finished_at": None,
        })
        self._safe_summary(Path(str(config.hydra.sweep.dir)))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not self._in_sweep(config):
            return
        job_dir = self._job_dir(config)
        rec = SweepDir.read_record(job_dir)
        failed = job_return.status == JobStatus.FAILED
        rec.update(
            job=int(config.hydra.job.num),
            overrides=list(config.hydra.overrides.task),
            status="failed" if failed else "completed",
            run_dir=rec.get("run_dir") or run_dir_of(config),
            error=_one_line(job_return._return_value) if failed else None,
            finished_at=_now(),
        )
        result = None if failed else job_return._return_value
        if isinstance(result, dict):
            rec.update({k: result[k] for k in RESULT_COLUMNS if k in result})
        rec.setdefault("attempts", 1)
        SweepDir.write_record(job_dir, rec)
        self._safe_summary(Path(str(config.hydra.sweep.dir)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        frame = self._safe_summary(Path(str(config.hydra.sweep.dir)))
        if frame is not None:
            counts = frame["status"].value_counts().to_dict()
            log.info("sweep summary %s: %s", SweepDir(str(config.hydra.sweep.dir)).summary_path, counts)

    @staticmethod
    def _job_dir(config: DictConfig) -> Path:
        # hydra.runtime.output_dir = <sweep dir>/<sweep subdir>, set by Hydra before on_job_start
        out = OmegaConf.select(config, "hydra.runtime.output_dir")
        if not out:
            out = SweepDir(str(config.hydra.sweep.dir)).job_dir(int(config.hydra.job.num))
        return Path(str(out))

    @staticmethod
    def _safe_summary(sweep_dir: Path) -> pd.DataFrame | None:
        try:
            return write_summary(sweep_dir)
        except Exception as err:  # the summary must never make a job or the sweep fail
            log.warning("sweep summary not written to %s: %s", sweep_dir, err)
            return None


def _slurm_job_id(config: DictConfig) -> str | None:
    import os

    jid = os.environ.get("SLURM_ARRAY_JOB_ID")
    if jid is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{jid}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")

