"""Test-only epoch hooks for ``robust`` subprocesses (Python imports ``sitecustomize`` at start-up).

The ``epoch_hooks`` fixture of tests/conftest.py puts this folder on ``PYTHONPATH`` and sets the variables
below; every Python process of the test (the ``robust`` command, a SLURM job, a DDP worker) then adds the
hooks to ``robust_cli.training.loop.EPOCH_END_HOOKS``, which the loop calls after each completed epoch:

- ``ROBUST_TEST_CRASH_AFTER_EPOCH=N``: end the process abruptly (``os._exit(137)``, as a kill would) right
  after epoch N's checkpoint, history row and run.json are written;
- ``ROBUST_TEST_MIN_EPOCH_SECONDS=S``: pad every epoch to at least S seconds, so that a requeue test needs
  several attempts however fast the machine is.

Without those variables nothing is imported.
"""

import os

CRASH_AFTER_EPOCH = "ROBUST_TEST_CRASH_AFTER_EPOCH"
MIN_EPOCH_SECONDS = "ROBUST_TEST_MIN_EPOCH_SECONDS"


def _install() -> None:
    import time

    from robust_cli.training import loop

    crash_after = os.environ.get(CRASH_AFTER_EPOCH)
    min_seconds = float(os.environ.get(MIN_EPOCH_SECONDS) or 0)

    def pad(epoch, row, run):
        if min_seconds > row["seconds"]:
            time.sleep(min_seconds - row["seconds"])

    def crash(epoch, row, run):
        if int(crash_after) == epoch:
            os._exit(137)

    if min_seconds:
        loop.EPOCH_END_HOOKS.append(pad)
    if crash_after:
        loop.EPOCH_END_HOOKS.append(crash)


if os.environ.get(CRASH_AFTER_EPOCH) or os.environ.get(MIN_EPOCH_SECONDS):
    _install()
