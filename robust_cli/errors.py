"""User-facing errors: bad input ends in one clear line on stderr and a non-zero exit, never a traceback."""

from hydra.errors import CompactHydraException


class UserError(Exception):
    """An error caused by the user's input (a config, a path, missing data), reported as one line.

    The CLI catches it, prints ``robust: error: <message>`` and exits with status 2.
    """


class JobFailed(CompactHydraException):
    """A multirun job's ``UserError``: the launcher records the job as failed, the other jobs go on, and
    Hydra reports a ``CompactHydraException`` as its message alone (no traceback) when the sweep ends."""
