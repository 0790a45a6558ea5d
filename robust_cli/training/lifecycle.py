"""The start and the end of a training run as its directory records them: the owner lock (one writer per
run directory), the leftovers of killed writes, the invalidation of a finished run that is retrained from
scratch, and how an interrupted run's reason reads in run.json."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from robust_cli import io
from robust_cli.errors import UserError
from robust_cli.rundir import RunDir, RunRecord

log = logging.getLogger(__name__)


def interruption(err: BaseException) -> str:
    """How a run was stopped, for run.json: ``SIGINT`` (Ctrl-C), ``SIGTERM``, or the exception's name."""
    from robust_cli.apps import Terminated

    if isinstance(err, Terminated):
        return "SIGTERM"
    return "SIGINT" if type(err) is KeyboardInterrupt else type(err).__name__


def acquire_owner_lock(run: RunDir) -> io.OwnerLock:
    """Take ``run``'s owner lock (``RunDir.owner_lock``) or refuse in one line naming its holder."""
    lock = run.owner_lock()
    try:
        lock.acquire()
    except io.LockHeld as held:
        h = held.holder
        who = f"pid {h['pid']} on {h['host']} since {h['started_at']}" if "pid" in h else "another process"
        raise UserError(f"{run} is being trained by {who} ({run.lock_path.name}); one `robust train` per run "
                        "directory: wait for it to end (a lock whose process is gone is taken over)") from None
    return lock


def start_record(run: RunDir, cfg: DictConfig, device: str, overrides: list[str], fresh: bool,
                 history: list[dict[str, Any]]) -> RunRecord:
    """As the run's owner: remove the temporary files of killed writes, write config.yaml and mark run.json
    running. ``fresh`` (a retrain from scratch) invalidates the earlier run first: its checkpoints and
    history.csv go, run.json drops its final metrics, then its model.pt goes (a reader sees either the old
    finished run or a running one, never the old results under a new run)."""
    for tmp in run.remove_temp_files():
        log.info("removed %s (left by a killed write)", tmp)
    if fresh:  # a requeue after a crash in the first epoch must not resume the old run's checkpoint
        run.checkpoint_path.unlink(missing_ok=True)
        run.best_checkpoint_path.unlink(missing_ok=True)
        run.history_path.unlink(missing_ok=True)
    run.write_config(cfg)
    record = run.record()
    record.start(device=device, overrides=overrides, fresh=fresh)
    if fresh:
        run.model_path.unlink(missing_ok=True)
    if history:  # a crash between checkpoint and CSV cannot leave them out of step
        run.write_history(history)
    return record
