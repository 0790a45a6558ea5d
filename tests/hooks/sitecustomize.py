"""Test-only epoch hooks for ``robust`` subprocesses (Python imports ``sitecustomize`` at start-up).

The ``epoch_hooks`` fixture of tests/conftest.py puts this folder on ``PYTHONPATH`` and sets the variables
below; every Python process of the test (the ``robust`` command, a SLURM job, a DDP worker) then adds the
hooks to ``robust_cli.training.loop.EPOCH_END_HOOKS``, which the loop calls after each completed epoch:

- ``ROBUST_TEST_CRASH_AFTER_EPOCH=N``: end the process abruptly (``os._exit(137)``, as a kill would) right
  after epoch N's checkpoint, history row and run.json are written;
- ``ROBUST_TEST_MIN_EPOCH_SECONDS=S``: pad every epoch to at least S seconds, so that a requeue test needs
  several attempts however fast the machine is.
- ``ROBUST_TEST_EPOCH_PAUSE_SECONDS=S``: sleep S seconds after every epoch's writes, however long the epoch
  took, so a test can signal the process between two epochs deterministically (padding to a minimum length
  leaves no pause at all where a loaded machine made the epoch itself longer than the minimum).

- ``ROBUST_TEST_SLOW_WRITES=S``: every atomic write (``robust_cli.io``: checkpoints, model.pt, history.csv,
  run.json, eval results) sleeps S seconds after its temporary file is written and before the rename, so a
  test can kill the process deterministically in the middle of a write (while ``.<name>.<random>.tmp``
  exists).

Without those variables nothing is imported.
"""

import os

CRASH_AFTER_EPOCH = "ROBUST_TEST_CRASH_AFTER_EPOCH"
MIN_EPOCH_SECONDS = "ROBUST_TEST_MIN_EPOCH_SECONDS"
EPOCH_PAUSE_SECONDS = "ROBUST_TEST_EPOCH_PAUSE_SECONDS"
SLOW_WRITES = "ROBUST_TEST_SLOW_WRITES"


def _install() -> None:
    import time

    from robust_cli.training import loop

    crash_after = os.environ.get(CRASH_AFTER_EPOCH)
    min_seconds = float(os.environ.get(MIN_EPOCH_SECONDS) or 0)
    pause_seconds = float(os.environ.get(EPOCH_PAUSE_SECONDS) or 0)

    def pad(epoch, row, run):
        if min_seconds > row["seconds"]:
            time.sleep(min_seconds - row["seconds"])

    def pause(epoch, row, run):
        time.sleep(pause_seconds)

    def crash(epoch, row, run):
        if int(crash_after) == epoch:
            os._exit(137)

    if min_seconds:
        loop.EPOCH_END_HOOKS.append(pad)
    if pause_seconds:
        loop.EPOCH_END_HOOKS.append(pause)
    if crash_after:
        loop.EPOCH_END_HOOKS.append(crash)


def _slow_writes() -> None:
    import time

    from robust_cli import io

    seconds = float(os.environ[SLOW_WRITES])
    atomic = io._atomic

    def slow_atomic(path, write):
        def write_then_wait(tmp):
            write(tmp)
            time.sleep(seconds)  # the temporary file is complete, the rename has not happened

        return atomic(path, write_then_wait)

    io._atomic = slow_atomic


if any(os.environ.get(v) for v in (CRASH_AFTER_EPOCH, MIN_EPOCH_SECONDS, EPOCH_PAUSE_SECONDS)):
    _install()
if os.environ.get(SLOW_WRITES):
    _slow_writes()
