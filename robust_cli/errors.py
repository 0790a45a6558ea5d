"""User-facing errors: bad input ends in one clear line on stderr and a non-zero exit, never a traceback."""


class UserError(Exception):
    """An error caused by the user's input (a config, a path, missing data), reported as one line.

    The CLI catches it, prints ``robust: error: <message>`` and exits with status 2.
    """
