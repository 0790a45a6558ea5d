"""What every Hydra app of ``robust`` shares: logging, one-line user errors, the task's overrides."""

from __future__ import annotations

import functools
import logging
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

from robust_cli.errors import JobFailed, UserError

log = logging.getLogger("robust_cli")


def setup_logging(level: int = logging.INFO) -> None:
    """A rich handler on stderr for the ``robust_cli`` loggers (idempotent)."""
    from rich.console import Console
    from rich.logging import RichHandler

    root = logging.getLogger("robust_cli")
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def add_file_log(path: Path) -> logging.Handler:
    """Also log to ``path`` (e.g. ``<run>/train.log``); returns the handler so the caller can remove it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("robust_cli").addHandler(handler)
    return handler


def task_overrides() -> list[str]:
    """The command-line overrides of the running Hydra job (``defense=tulip``, ``epochs=5``, ...)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler stopping the job), raised in the main thread like Ctrl-C's
    ``KeyboardInterrupt`` so the same cleanup runs: a training run records itself ``interrupted``."""


def _raise_terminated(signum, frame) -> NoReturn:
    raise Terminated()


def _catch_sigterm():
    """Make SIGTERM raise ``Terminated``; returns the handler to restore, or None where it was left alone:
    outside the main thread, or where a handler is already installed (submitit's, which requeues the job)."""
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return None
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # signal handlers can only be set in the main thread
        return None


def exit_user_error(message: str) -> NoReturn:
    """``robust: error: <message>`` on stderr and exit status 2: how every bad input ends."""
    sys.stderr.write(f"robust: error: {message}\n")
    sys.exit(2)


def refuse_overrides(args: Iterable[str], refused: dict[str, str]) -> None:
    """Exit with ``exit_user_error`` when a command-line override sets a key of ``refused``
    (``{key: what to give instead}``), before Hydra creates or writes anything."""
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("+~")
        if "=" in arg and key in refused:
            exit_user_error(f"{key} is not used by this command; {refused[key]}")


def user_errors(fn: Callable) -> Callable:
    """Turn a ``UserError`` into ``robust: error: <one line>`` and exit status 2 (single runs).

    The app's config is canonicalised first (``robust_cli.norms.canonicalize_config``: ``norm=2`` ->
    ``l2``), the one place where spellings are parsed, so the library sees canonical names only; a relative
    ``data.root`` becomes absolute there (``robust_cli.data.absolute_data_root``).
    In a multirun the error is re-raised so that the launcher records the job as failed and the other jobs
    of the sweep go on. SIGTERM is handled like Ctrl-C (``Terminated``): ``robust: terminated``, exit
    status 143 (128 + SIGTERM), no traceback.
    """

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        setup_logging()
        from robust_cli.host_memory import reuse_freed_host_memory

        reuse_freed_host_memory()  # once per job process: a step's freed CPU tensors reused, not re-faulted
        previous = _catch_sigterm()
        try:
            from omegaconf import DictConfig

            from robust_cli.config import check_config
            from robust_cli.data import absolute_data_root
            from robust_cli.norms import canonicalize_config

            for arg in args:
                if isinstance(arg, DictConfig):
                    check_config(canonicalize_config(arg))
                    absolute_data_root(arg)  # stored absolute: eval finds the data from any directory
            return fn(*args, **kwargs)
        except UserError as err:
            if is_multirun():
                raise JobFailed(f"robust: error: {err}") from None
            exit_user_error(str(err))
        except Terminated:
            if is_multirun():
                raise
            sys.stderr.write("robust: terminated\n")
            sys.exit(128 + signal.SIGTERM)
        except KeyboardInterrupt:
            if is_multirun():
                raise
            sys.stderr.write("robust: interrupted\n")
            sys.exit(130)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapped
